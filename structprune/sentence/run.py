"""``compress`` and ``distill`` for sentence-transformers models: the library's own, on a :class:`SentenceEncoder`.

``sp.compress(st, sentences, flops=0.5)`` and ``sp.distill(student, teacher, sentences, config=...)`` come
here when given a ``SentenceTransformer``. Nothing is re-implemented: the sentences are tokenized by the
model's own tokenizer, the model is wrapped in a :class:`SentenceEncoder` (whose output is the sentence
embedding), and :func:`structprune.run.compress.compress` / the distillation loop run on it. Without labels,
scoring, candidate selection and layer scoring compare sentence embeddings with the unpruned model's
(:mod:`structprune.scoring.embedding`); distillation matches the teacher's embeddings
(``DistillConfig.embedding_loss``: MSE, the sentence-transformers recipe, or cosine).
"""

from __future__ import annotations

import dataclasses
import logging

from torch.utils.data import DataLoader, Dataset

from ..checkpoint.card import _NOTES, note_card
from ..recovery.distill.config import DistillConfig
from .encoder import (
    SentenceEncoder,
    check_batch_size,
    check_sentence_transformer,
    check_sentences,
    sentence_batches,
    tokenize,
)

logger = logging.getLogger(__name__)

DEFAULT_DISTILL = {"task_weight": 0.0, "logit_weight": 1.0, "num_epochs": 1.0, "learning_rate": 1e-4}
"""What ``distill`` of a SentenceTransformer uses without a config: sentence-transformers' distillation
recipe (MSE of the sentence embeddings, 1 epoch, learning rate 1e-4, 10% warmup), no labels."""


def compress(st, sentences, flops: float | None = None, *, config=None, batch_size: int = 32, **options):
    """Prune the transformer of ``st`` in place to a budget, retraining-free, on unlabelled ``sentences``;
    return ``(st, report)``. The options are :class:`structprune.CompressConfig`'s (``method``, ``params``,
    ``reconstruct``, ...). See :func:`structprune.compress`."""
    from ..run.compress import CompressConfig
    from ..run.compress import compress as compress_model

    encoder = SentenceEncoder(st)  # checks st before anything changes
    texts = check_sentences(sentences)
    check_batch_size(batch_size)
    if config is not None and (options or flops is not None):
        raise TypeError("Pass either config=CompressConfig(...) or flops=/keyword options, not both.")
    cfg = config if config is not None else CompressConfig(flops=flops, **options)
    if cfg.label_free is False:
        raise ValueError(
            "Sentences carry no labels: a SentenceTransformer is pruned against its own embeddings (label_free)."
        )
    if cfg.hidden is not None:
        raise ValueError(
            "hidden= would change the sentence embeddings' dimension (the pooling reads the residual stream); "
            "prune heads, neurons and layers (flops=, params=, layers=) instead."
        )
    batches = sentence_batches(st, texts, batch_size)
    _, report = compress_model(encoder, batches, config=cfg)
    notes = encoder.__dict__.pop(_NOTES, {})
    note_card(
        encoder.encoder,
        method=f"{report.method} scores of the change of the normalised sentence embedding (no labels) on "
        f"{report.examples:,} sentences, {report.choice}",
        budget=notes.get("budget"),
        latency=notes.get("latency"),
    )
    return st, report


class _Sentences(Dataset):
    def __init__(self, texts: list[str]):
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> str:
        return self.texts[i]


def sentence_loader(st, sentences, batch_size: int = 32, shuffle: bool = True) -> DataLoader:
    """A DataLoader of ``sentences`` tokenized by ``st`` (no labels): distillation's training data."""
    texts = check_sentences(sentences)
    check_batch_size(batch_size)
    return DataLoader(
        _Sentences(texts), batch_size=batch_size, shuffle=shuffle, collate_fn=lambda b: tokenize(st, b)
    )


def distill(student, teacher, sentences, eval_data=None, config: DistillConfig | None = None, callbacks=None,
            *, batch_size: int = 32):  # fmt: skip
    """Train ``student`` (a pruned SentenceTransformer) so that its sentence embeddings match ``teacher``'s on
    ``sentences``; return ``(student, history)``. Without ``config``, sentence-transformers' distillation
    recipe (:data:`DEFAULT_DISTILL`); a config's output term (``logit_weight``) compares the embeddings by
    ``embedding_loss`` and may add hidden-state / attention terms; ``task_weight`` must be 0 (no labels).
    See :func:`structprune.distill`."""
    from ..recovery.distill.loop import distill as distill_model

    if isinstance(eval_data, DistillConfig) and config is None:
        config, eval_data = eval_data, None  # sp.distill(student, teacher, sentences, cfg)
    s_enc = SentenceEncoder(student)
    check_sentence_transformer(teacher, "teacher")
    t_enc = SentenceEncoder(teacher)
    texts = check_sentences(sentences)
    check_batch_size(batch_size)
    cfg = config if config is not None else DistillConfig(**DEFAULT_DISTILL)
    if not isinstance(cfg, DistillConfig):
        raise TypeError(f"config must be a DistillConfig, got {type(cfg).__name__}.")
    if eval_data is not None:
        raise ValueError(
            "Evaluation during the distillation of a SentenceTransformer is not supported; evaluate the result "
            "afterwards (structprune.sentence.evaluate_stsb)."
        )
    if any(t.task_weight > 0 for t in cfg.term_sets):
        raise ValueError(
            "Sentences carry no labels: set task_weight=0 (the output term, logit_weight, matches the teacher's "
            "sentence embeddings by embedding_loss)."
        )
    if cfg.prune is not None:
        raise ValueError(
            "Gradual pruning of a SentenceTransformer is not supported: prune first (sp.compress(st, sentences, "
            "flops=...)), then distil without prune."
        )
    loader = sentence_loader(student, texts, batch_size)
    _, history = distill_model(s_enc, t_enc, loader, None, cfg, callbacks)
    s_enc.__dict__.pop(_NOTES, None)
    steps = max((r.get("step", 0) for r in history), default=0)
    note_card(
        s_enc.encoder,
        teacher=getattr(t_enc.config, "_name_or_path", None) or None,
        method=f"{distill_terms(cfg)} on {len(texts):,} sentences, {steps} steps",
    )
    return student, history


def distill_terms(cfg: DistillConfig) -> str:
    """What a model card says the embedding distillation matched, e.g. ``"embedding distillation (mse of the
    sentence embeddings + hidden states)"``."""
    terms = [f"{cfg.embedding_loss} of the sentence embeddings"]
    terms += [name for attr, name in (("hidden_weight", "hidden states"), ("attention_weight", "attention"))
              if any(getattr(t, attr) > 0 for t in cfg.term_sets)]  # fmt: skip
    return f"embedding distillation ({' + '.join(terms)})"


def default_distill_config(**overrides) -> DistillConfig:
    """:data:`DEFAULT_DISTILL` with ``overrides`` (any :class:`DistillConfig` field).

    Example::

        cfg = default_distill_config(num_epochs=2, embedding_loss="cosine", output_dir="runs/st")
    """
    return dataclasses.replace(DistillConfig(**DEFAULT_DISTILL), **overrides)
