"""Data augmentation for distillation (TinyBERT): more inputs for the teacher to label.

Small tasks give a student few teacher outputs to learn from. :func:`augment_dataset` makes
``multiplier`` variants of every training example by word-level replacement and labels each variant
with the *teacher's* prediction (never by hand); the originals keep their gold labels. Replacements:

- ``"embedding"``: a whole-word token is replaced by one of its ``neighbours`` nearest whole-word tokens
  in the teacher's own input-embedding space (cosine) - no external word vectors needed;
- ``"mlm"``: the chosen words are masked and a masked-LM (``mlm_model``, e.g. the base model's
  ``AutoModelForMaskedLM``) samples replacements among its ``neighbours`` best whole-word predictions;
- ``"auto"``: ``mlm`` when an ``mlm_model`` is given, else ``embedding``.

Generated once and cached as JSON lines beside the run (keyed by the data, the options and the
teacher's weights), deterministic per ``seed`` whatever the number of processes: example ``i`` draws
from its own generator ``(seed, i)``. Under ``accelerate launch`` each process augments and labels its
share (``i % P == rank``) and the main process merges the parts in order. Unlabelled text a user
supplies (:func:`load_unlabelled`) goes through the same path.

Example::

    cfg = AugmentConfig(multiplier=20)
    train = augment_dataset(load_split("mrpc", "train"), "mrpc", tokenizer, teacher, cfg, cache_dir="runs/mrpc")
    loader = make_dataloader(train, tokenizer, "mrpc", batch_size=32, shuffle=True)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ...atomic import atomic_write_text
from ...batches import logits_of
from ...data import get_task
from ...options import FromDict

logger = logging.getLogger(__name__)

METHODS = ("auto", "embedding", "mlm")


@dataclass
class AugmentConfig(FromDict):
    """Options of :func:`augment_dataset`."""

    options_name: ClassVar[str] = "augment"

    multiplier: int = field(default=20, metadata={"help": "Variants generated per training example."})
    max_examples: int | None = field(
        default=200_000, metadata={"help": "Cap on the variants generated in all."}
    )
    replace_prob: float = field(default=0.4, metadata={"help": "Probability that a whole word is replaced."})
    neighbours: int = field(
        default=15, metadata={"help": "Candidates per word (nearest embeddings or MLM top-k)."}
    )
    method: str = field(
        default="auto", metadata={"help": "'embedding', 'mlm' or 'auto' (mlm when a MLM model is given)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the replacements (per example)."})
    max_length: int = field(default=128, metadata={"help": "Tokens per example when the teacher labels it."})
    batch_size: int = field(default=64, metadata={"help": "Batch size of the teacher's labelling passes."})
    unlabelled: str | None = field(
        default=None,
        metadata={
            "help": "A file of your own unlabelled text (see load_unlabelled), labelled by the teacher and augmented too."
        },
    )

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(msg)

        need(
            isinstance(self.multiplier, int) and self.multiplier >= 1,
            f"augment.multiplier must be >= 1, got {self.multiplier!r}.",
        )
        need(self.max_examples is None or (isinstance(self.max_examples, int) and self.max_examples >= 1),
             f"augment.max_examples must be a positive integer or None, got {self.max_examples!r}.")  # fmt: skip
        need(
            0 < self.replace_prob <= 1, f"augment.replace_prob must be in (0, 1], got {self.replace_prob!r}."
        )
        need(
            isinstance(self.neighbours, int) and self.neighbours >= 1,
            f"augment.neighbours must be >= 1, got {self.neighbours!r}.",
        )
        need(self.method in METHODS, f"augment.method must be one of {METHODS}, got {self.method!r}.")
        need(
            self.max_length >= 8 and self.batch_size >= 1,
            "augment.max_length must be >= 8 and batch_size >= 1.",
        )


# --- word-level replacement ---------------------------------------------------------------------------
def whole_word_tokens(tokenizer) -> dict[str, int]:
    """Vocabulary entries that are a whole word by themselves: ``word -> token id`` (alphabetic, not a
    continuation piece, not special, and the tokenizer turns the word back into exactly that token)."""
    special = set(tokenizer.all_special_ids)
    words: dict[str, int] = {}
    vocab = tokenizer.get_vocab()
    for token, i in vocab.items():
        if i in special:
            continue
        word = tokenizer.convert_tokens_to_string([token]).strip()
        if len(word) < 2 or not word.isalpha():
            continue
        words.setdefault(word.lower(), i)
    # keep only words the tokenizer really maps to one token (BPE/SentencePiece prefixes included)
    checked = {}
    for word, i in words.items():
        if tokenizer(" " + word, add_special_tokens=False)["input_ids"] == [i] or tokenizer(
            word, add_special_tokens=False
        )["input_ids"] == [i]:
            checked[word] = i
    return checked


def embedding_neighbours(model: nn.Module, tokenizer, needed: set[str], k: int) -> dict[str, list[str]]:
    """For each word of ``needed`` that is a whole-word token: its ``k`` nearest whole-word tokens by
    cosine similarity of ``model``'s input embeddings (itself excluded)."""
    words = whole_word_tokens(tokenizer)
    names = sorted(words)
    if not names:
        return {}
    table = model.get_input_embeddings().weight.detach().float().cpu()
    cand = torch.nn.functional.normalize(table[[words[w] for w in names]], dim=-1)  # [C, d]
    query = [w for w in sorted(needed) if w in words]
    out: dict[str, list[str]] = {}
    for start in range(0, len(query), 1024):
        chunk = query[start : start + 1024]
        q = torch.nn.functional.normalize(table[[words[w] for w in chunk]], dim=-1)  # [W, d]
        sims = q @ cand.T  # [W, C]
        top = sims.topk(min(k + 1, len(names)), dim=-1).indices
        for w, row in zip(chunk, top.tolist(), strict=True):
            out[w] = [names[j] for j in row if names[j] != w][:k]
    return out


def _replace_embedding(
    text: str, neighbours: dict[str, list[str]], p: float, rng: np.random.Generator
) -> str:
    words = text.split()
    for j, w in enumerate(words):
        options = neighbours.get(w.lower())
        if options and rng.random() < p:
            words[j] = options[int(rng.integers(len(options)))]
    return " ".join(words)


@torch.no_grad()
def _replace_mlm(text: str, mlm_model, tokenizer, words_ok: dict[str, int], k: int, p: float,
                 rng: np.random.Generator) -> str:  # fmt: skip
    words = text.split()
    chosen = [j for j, w in enumerate(words) if w.lower() in words_ok and rng.random() < p]
    if not chosen:
        return text
    masked = [tokenizer.mask_token if j in chosen else w for j, w in enumerate(words)]
    enc = tokenizer(" ".join(masked), return_tensors="pt", truncation=True, max_length=256)
    enc = {key: v.to(next(mlm_model.parameters()).device) for key, v in enc.items()}
    logits = logits_of(mlm_model(**enc))[0]  # [T, V]
    positions = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
    allowed = torch.tensor(sorted(words_ok.values()), device=logits.device)
    inv = {i: w for w, i in words_ok.items()}
    for j, pos in zip(chosen, positions, strict=False):
        scores = logits[pos, allowed]
        top = allowed[scores.topk(min(k, len(allowed))).indices].tolist()
        top = [t for t in top if inv[t] != words[j].lower()] or top
        words[j] = inv[top[int(rng.integers(len(top)))]]
    return " ".join(words)


def shard(n: int, num_processes: int, rank: int) -> list[int]:
    """The example indices process ``rank`` of ``num_processes`` handles: ``i % num_processes == rank``."""
    if not 0 <= rank < num_processes:
        raise ValueError(f"rank must be in [0, {num_processes}), got {rank}.")
    return list(range(rank, n, num_processes))


def generate(texts: list[tuple[str, ...]], cfg: AugmentConfig, *, neighbours: dict[str, list[str]] | None = None,
             mlm=None, indices: list[int] | None = None) -> list[tuple[int, tuple[str, ...]]]:  # fmt: skip
    """``(source index, variant)`` pairs for the examples ``indices`` (default all): ``per`` variants
    each (``multiplier``, capped so that all examples together stay within ``max_examples``). Example ``i``
    draws from its own generator ``(seed, i)``, so the result does not depend on how the work is split."""
    per = cfg.multiplier
    if cfg.max_examples is not None and texts:
        per = max(1, min(per, cfg.max_examples // len(texts)))
    out = []
    for i in indices if indices is not None else range(len(texts)):
        rng = np.random.default_rng([cfg.seed, i])
        for _ in range(per):
            if mlm is not None:
                model, tokenizer, words_ok = mlm
                variant = tuple(_replace_mlm(t, model, tokenizer, words_ok, cfg.neighbours, cfg.replace_prob, rng)
                                for t in texts[i])  # fmt: skip
            else:
                variant = tuple(
                    _replace_embedding(t, neighbours or {}, cfg.replace_prob, rng) for t in texts[i]
                )
            if variant != texts[i]:
                out.append((i, variant))
    return out


# --- labelling by the teacher -----------------------------------------------------------------------
@torch.no_grad()
def teacher_labels(
    teacher: nn.Module, tokenizer, texts: list[tuple[str, ...]], task, cfg: AugmentConfig
) -> list:
    """The teacher's label of each text (argmax class, or the regression value), in the order of ``texts``.
    The texts are labelled longest first, so that each batch pads to about its own length."""
    task = get_task(task)
    was_training = teacher.training
    teacher.eval()
    device = next(teacher.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: -sum(len(t) for t in texts[i]))
    labels: list = [None] * len(texts)
    try:
        for start in range(0, len(order), cfg.batch_size):
            chunk = order[start : start + cfg.batch_size]
            columns = list(zip(*(texts[i] for i in chunk), strict=True))
            enc = tokenizer(
                *columns, truncation=True, max_length=cfg.max_length, padding=True, return_tensors="pt"
            )
            logits = logits_of(teacher(**{k: v.to(device) for k, v in enc.items()})).float()
            values = logits.reshape(-1).tolist() if task.is_regression else logits.argmax(-1).tolist()
            for i, value in zip(chunk, values, strict=True):
                labels[i] = value
    finally:
        teacher.train(was_training)
    return labels


# --- the dataset ----------------------------------------------------------------------------------------
def _fingerprint(texts, cfg: AugmentConfig, teacher: nn.Module, tokenizer, mlm_model) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([texts, asdict(cfg), tokenizer.__class__.__name__, len(tokenizer)]).encode())
    for model in (teacher, mlm_model):
        if model is None:
            continue
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def augment_dataset(dataset, task, tokenizer, teacher: nn.Module, config: AugmentConfig | None = None, *,
                    cache_dir: str | os.PathLike | None = None, mlm_model: nn.Module | None = None,
                    labelled: bool = True, accelerator=None):  # fmt: skip
    """``dataset`` (a ``datasets.Dataset`` with the task's text columns) plus ``multiplier`` variants of
    each example labelled by ``teacher``; a ``datasets.Dataset`` with the text columns, ``label`` and
    ``augmented`` (False for the originals). ``labelled=False``: the originals have no labels either (a
    user's unlabelled text) and are labelled by the teacher too.

    With ``cache_dir`` the result is written there once (``augment-<key>.jsonl``) and read back on the
    next call with the same data, options and teacher. With an ``accelerator`` (or under ``accelerate
    launch``) every process augments and labels its share; the main process merges the parts.
    """
    import datasets

    cfg = config or AugmentConfig()
    task = get_task(task)
    keys = task.text_keys
    texts = [tuple(str(row[k]) for k in keys) for row in dataset]
    if not texts:
        raise ValueError("augment_dataset got no examples.")
    method = cfg.method if cfg.method != "auto" else ("mlm" if mlm_model is not None else "embedding")
    if method == "mlm" and (mlm_model is None or tokenizer.mask_token is None):
        raise ValueError("augment.method='mlm' needs mlm_model (a masked-LM of the same vocabulary) and a tokenizer "
                         "with a mask token; use method='embedding' otherwise.")  # fmt: skip
    key = _fingerprint(texts, cfg, teacher, tokenizer, mlm_model if method == "mlm" else None)
    cache = Path(cache_dir) / f"augment-{key}.jsonl" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        logger.info("augmented data from the cache %s", cache)
        return datasets.Dataset.from_list([json.loads(line) for line in cache.read_text().splitlines()])

    procs = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    mine = shard(len(texts), procs, rank)
    if method == "mlm":
        variants = generate(
            texts, cfg, mlm=(mlm_model, tokenizer, whole_word_tokens(tokenizer)), indices=mine
        )
    else:
        needed = {w.lower() for i in mine for t in texts[i] for w in t.split()}
        variants = generate(texts, cfg, neighbours=embedding_neighbours(teacher, tokenizer, needed, cfg.neighbours),
                            indices=mine)  # fmt: skip
    originals = [(i, texts[i]) for i in mine]
    to_label = [v for _, v in variants] + ([] if labelled else [t for _, t in originals])
    predicted = teacher_labels(teacher, tokenizer, to_label, task, cfg)
    gold = {i: row[task.label_column] for i, row in enumerate(dataset)} if labelled else None
    rows = []
    for i, t in originals:
        label = gold[i] if gold is not None else predicted[len(variants) + mine.index(i)]
        rows.append((i, 0, {**dict(zip(keys, t, strict=True)), "label": label, "augmented": False}))
    for n, (i, v) in enumerate(variants):
        rows.append((i, 1 + n, {**dict(zip(keys, v, strict=True)), "label": predicted[n], "augmented": True}))
    rows = _merge(rows, accelerator, cache)
    logger.info("augmentation: %d examples -> %d (%s replacements)", len(texts), len(rows), method)
    return datasets.Dataset.from_list(rows)


def _merge(rows: list[tuple[int, int, dict]], accelerator, cache: Path | None) -> list[dict]:
    """All processes' rows in example order (each example's original first); written to ``cache`` once."""
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
    rows = [r for _, _, r in sorted(rows, key=lambda x: (x[0], x[1]))]
    if cache is not None and (accelerator is None or accelerator.is_main_process):
        atomic_write_text(cache, "".join(json.dumps(r) + "\n" for r in rows))
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return rows


def load_unlabelled(path: str | os.PathLike, task):
    """A user's unlabelled text as a ``datasets.Dataset`` with the task's text columns: ``.txt`` (one
    example a line; a pair separated by a tab), or ``.jsonl``/``.csv``/``.tsv``/``.parquet`` with those
    columns. Label it (and augment it) with :func:`augment_dataset` (``labelled=False``)."""
    import datasets

    task = get_task(task)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No file of unlabelled text at {path}.")
    keys = task.text_keys
    if path.suffix == ".txt":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != len(keys):
                raise ValueError(
                    f"{path}:{n} has {len(parts)} tab-separated fields; {task.name} needs {len(keys)}."
                )
            rows.append(dict(zip(keys, parts, strict=True)))
        return datasets.Dataset.from_list(rows)
    from ...data import load_files

    return load_files(task, path, require_labels=False).select_columns(list(keys))
