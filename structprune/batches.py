"""Batches as every stage reads them: label keys, device moves, and the logits of a model output.

One definition each, used by scoring, reconstruction, evaluation, distillation and ``compress``:

- :data:`LABEL_KEYS`: the keys that hold targets rather than model inputs. ``label`` (the column name of
  ``datasets``) is read as ``labels``, as transformers' data collators do.
- :func:`to_device`: a batch's tensors on a device, labels normalized (``label`` -> ``labels``).
- :func:`model_inputs`: the same without any target (what a label-free forward gets).
- :func:`has_labels`, :func:`labels_of`.
- :func:`logits_of`: the logits of a model output (``ModelOutput``, dict, tuple or tensor);
  :func:`embeddings_of`: the sentence embeddings of an embedding model's output (None for a task model's).
- :func:`check_task`: token ids within the vocabulary, labels that fit the task head.
- :func:`iterate`: at most ``max_batches`` of an iterable, with a progress bar, refusing empty data.
- :func:`eager_attention`: models run with transformers' eager attention for a while (attention maps for
  distillation, the graph ONNX Runtime's fusion matches).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from .progress import bar

logger = logging.getLogger(__name__)

LABEL_KEYS = ("labels", "label", "start_positions", "end_positions")


def check_batch(batch: Any) -> Mapping:
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"Each batch must be a dict of model inputs (input_ids, attention_mask, labels, ...); got "
            f"{type(batch).__name__}. Use structprune.data.make_dataloader or a DataLoader with a collator "
            "such as DataCollatorWithPadding."
        )
    return batch


def to_device(batch: Mapping, device: torch.device | str | None = None) -> dict:
    """A copy of ``batch`` with its tensors on ``device`` (None: where they are) and ``label`` read as
    ``labels``.

    Example::

        batch = to_device({"input_ids": ids, "label": y}, "cpu")   # {'input_ids': ..., 'labels': y}
    """
    batch = dict(check_batch(batch))
    if "label" in batch and "labels" not in batch:
        batch["labels"] = batch.pop("label")
    if device is None:
        return batch
    return {k: (t.to(device) if isinstance(t, torch.Tensor) else t) for k, t in batch.items()}


def model_inputs(batch: Mapping, device: torch.device | str | None = None) -> dict:
    """``batch`` on ``device`` without any target (:data:`LABEL_KEYS`)."""
    return {k: v for k, v in to_device(batch, device).items() if k not in LABEL_KEYS}


def labels_of(batch: Mapping) -> torch.Tensor | None:
    """The batch's labels (``labels``, else ``label``), or None."""
    value = batch.get("labels")
    return value if value is not None else batch.get("label")


def has_labels(batch: Mapping) -> bool:
    """True when the batch carries any target (class labels, regression values or span positions)."""
    return any(batch.get(k) is not None for k in LABEL_KEYS)


def num_examples(batch: Mapping) -> int:
    """The batch size: the first dimension of its first tensor."""
    return next(t for t in batch.values() if isinstance(t, torch.Tensor)).shape[0]


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model output: ``.logits`` of a ``ModelOutput``, ``["logits"]`` of a dict, the first
    element of a tuple, or the tensor itself.

    Example::

        logits = logits_of(model(**inputs))   # [B, num_labels]
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, tuple | list) and output:
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise ValueError(
            f"The model output ({type(output).__name__}) has no logits; use a model with a task head "
            "(AutoModelForSequenceClassification, ...)."
        )
    return logits


EMBEDDING_KEY = "sentence_embedding"
"""Where an embedding model's output holds its sentence embeddings (sentence-transformers' name)."""


def embeddings_of(output: Any) -> torch.Tensor | None:
    """The sentence embeddings ``[B, D]`` of an embedding model's output (``sentence_embedding``, as an attribute
    or a key: :class:`structprune.sentence.SentenceEncoder`'s outputs, sentence-transformers' feature dicts),
    else None (a task model's output, read with :func:`logits_of`).

    Example::

        emb = embeddings_of(encoder(**inputs))   # [B, D], or None for a classifier's output
    """
    value = getattr(output, EMBEDDING_KEY, None)
    if value is None and isinstance(output, Mapping):
        value = output.get(EMBEDDING_KEY)
    return value if isinstance(value, torch.Tensor) else None


def iterate(batches: Iterable | None, max_batches: int | None = None, *, progress: bool = False,
            desc: str = "batches", what: str = "This step") -> Iterator:  # fmt: skip
    """The first ``max_batches`` batches of ``batches`` (all when None), with a progress bar; a missing or
    empty iterable is a ValueError saying what needed data."""
    if batches is None:
        raise ValueError(f"{what} needs data: pass an iterable of batches (dicts of model inputs).")
    it = iter(batches)
    if max_batches is not None:
        it = itertools.islice(it, max_batches)
    count = 0
    for batch in bar(it, enabled=progress, desc=desc, leave=False):
        count += 1
        yield batch
    if count == 0:
        raise ValueError(f"The batch iterable is empty; {what.lower()} needs at least one batch of examples.")


def check_task(model, batches: Iterable[Mapping], *, labels: bool = True) -> None:
    """Raise ``ValueError`` when the calibration data cannot belong to ``model``'s task head.

    Checks token ids against the vocabulary and (with ``labels``) labels against the head: class ids in
    ``[0, num_labels)`` (``-100`` is ignored), integer labels for a classifier, float targets for a
    regression head (``num_labels=1``). Used by ``compress`` and ``score``.
    """
    config = model.config
    vocab = getattr(config, "vocab_size", None)
    num_labels = getattr(config, "num_labels", None)
    regression = num_labels == 1 or getattr(config, "problem_type", None) == "regression"
    for batch in batches:
        ids = batch.get("input_ids")
        if vocab is not None and isinstance(ids, torch.Tensor) and ids.numel() and int(ids.max()) >= vocab:
            raise ValueError(
                f"A calibration batch has token id {int(ids.max())} but the model's vocabulary has {vocab} "
                "entries: the data was tokenized with another tokenizer. Tokenize it with this model's."
            )
        target = labels_of(batch) if labels else None
        if not isinstance(target, torch.Tensor) or num_labels is None or target.dim() > 1:
            continue  # no labels, or token-level / span labels: checked by the model's own loss
        if regression:
            if not target.is_floating_point():
                raise ValueError(
                    "The model has a regression head (num_labels=1) but the calibration labels are integer "
                    f"class ids (e.g. {target[:4].tolist()}): the data is from a classification task. Use data "
                    "of the model's task, or label_free=True."
                )
            continue
        if target.is_floating_point() and not torch.equal(target, target.round()):
            raise ValueError(
                f"The model classifies into {num_labels} classes but the calibration labels are real numbers "
                f"(e.g. {target[:4].tolist()}): the data is from a regression task. Use data of the model's task."
            )
        real = target[target != -100].long()
        if real.numel() and (int(real.min()) < 0 or int(real.max()) >= num_labels):
            raise ValueError(
                f"Calibration label {int(real.max()) if int(real.max()) >= num_labels else int(real.min())} is "
                f"outside the model's {num_labels} classes [0, {num_labels - 1}]: the data is from a different "
                "task than the classifier head. Use data of the model's task, or label_free=True."
            )


@contextlib.contextmanager
def eager_attention(*models, why: str | None = None) -> Iterator[None]:
    """Run ``models`` (None entries skipped) with transformers' eager attention for the duration - the only
    kind that returns attention probabilities - and give each its own implementation back after; ``why``
    logs each switch."""
    changed = []
    try:
        for m in models:
            before = getattr(getattr(m, "config", None), "_attn_implementation", None)
            if m is None or before == "eager" or not hasattr(m, "set_attn_implementation"):
                continue
            m.set_attn_implementation("eager")
            changed.append((m, before))
            if why:
                logger.info("%s: %s switched from %s to eager attention", why, type(m).__name__, before)
        yield
    finally:
        for m, before in reversed(changed):
            if before is not None:
                m.set_attn_implementation(before)
