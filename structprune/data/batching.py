"""Tokenization, length-bucketed batching and dynamic padding."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..progress import bar
from .tasks import TaskInfo, get_task

__all__ = ["BucketBatchSampler", "TokenizedDataset", "make_dataloader", "subset", "tokenize"]

logger = logging.getLogger(__name__)

_CHUNK = 2048  # texts tokenized per call


class TokenizedDataset(Dataset):
    """Token ids of a whole split kept compactly (flat int32 arrays + offsets); items are unpadded dicts.

    Example::

        tok = tokenize(load_split("sst2", "validation"), tokenizer, "sst2", max_length=64)
        tok[0]  # {'input_ids': [...], 'token_type_ids': [...], 'attention_mask': [...], 'labels': 1}
        tok.lengths[:3]  # array([12,  9, 30], dtype=int32)
    """

    def __init__(self, columns: dict[str, tuple[np.ndarray, np.ndarray]], labels: np.ndarray | None):
        self._columns = columns  # name -> (flat values, offsets [N+1])
        self.labels = labels
        offsets = next(iter(columns.values()))[1]
        self.lengths = np.diff(offsets).astype(np.int32)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {}
        for name, (flat, offsets) in self._columns.items():
            item[name] = flat[offsets[i] : offsets[i + 1]].tolist()
        item["attention_mask"] = [1] * int(self.lengths[i])
        if self.labels is not None:
            item["labels"] = self.labels[i].item()
        return item


def subset(dataset: Any, limit: int | None, mode: str = "first", seed: int = 0) -> Any:
    """The first `limit` examples (`mode="first"`) or a seeded random `limit` of them (`mode="random"`).

    Example::

        small = subset(load_split("sst2", "train"), 1000, mode="random", seed=0)
    """
    if mode not in ("first", "random"):
        raise ValueError(f"limit mode must be 'first' or 'random', got {mode!r}.")
    if limit is None:
        return dataset
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive int (number of examples) or None, got {limit!r}.")
    n = len(dataset)
    if limit >= n:
        return dataset
    if mode == "first":
        idx = list(range(limit))
    else:
        idx = sorted(np.random.default_rng(seed).choice(n, size=limit, replace=False).tolist())
    if hasattr(dataset, "select"):
        return dataset.select(idx)
    return [dataset[i] for i in idx]


def _column(dataset: Any, key: str) -> list:
    if hasattr(dataset, "column_names"):
        return dataset[key]
    return [row[key] for row in dataset]


def tokenize(
    dataset: Any, tokenizer: Any, task: str | TaskInfo, max_length: int = 128, progress: bool = False
) -> TokenizedDataset:
    """Tokenize a split (a `datasets.Dataset` or a list of dicts) without padding, truncating to `max_length`.

    Labels come from the `label` column (or `labels`), as floats for regression tasks.

    Example::

        tok = tokenize(load_split("mrpc", "validation"), tokenizer, "mrpc", max_length=128)
    """
    task = get_task(task)
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2 (tokens per example), got {max_length!r}.")
    columns = (
        dataset.column_names if hasattr(dataset, "column_names") else list(dataset[0]) if len(dataset) else []
    )
    missing = [k for k in task.text_keys if k not in columns]
    if missing:
        raise ValueError(
            f"Dataset has no text column(s) {missing} for task {task.name!r}; columns present: {columns}."
        )
    texts = [_column(dataset, k) for k in task.text_keys]
    n = len(texts[0])
    if n == 0:
        raise ValueError(f"Dataset for task {task.name!r} is empty.")
    label_key = next((k for k in ("labels", "label") if k in columns), None)
    labels = None
    if label_key is not None:
        labels = np.asarray(_column(dataset, label_key), dtype=np.float32 if task.is_regression else np.int64)

    parts: dict[str, list[np.ndarray]] = {}
    lengths: list[np.ndarray] = []
    for start in bar(range(0, n, _CHUNK), enabled=progress and n > _CHUNK, desc=f"tokenize {task.name}"):
        chunk = [[("" if t is None else str(t)) for t in col[start : start + _CHUNK]] for col in texts]
        enc = tokenizer(*chunk, truncation=True, max_length=max_length, return_attention_mask=False)
        for name, seqs in enc.items():
            parts.setdefault(name, []).append(np.fromiter((x for s in seqs for x in s), dtype=np.int32))
            if name == "input_ids":
                lengths.append(np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs)))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths), out=offsets[1:])
    cols = {name: (np.concatenate(chunks), offsets) for name, chunks in parts.items()}
    return TokenizedDataset(cols, labels)


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length examples: less padding, same examples.

    `shuffle=False`: examples sorted by length (longest first), cut into batches; deterministic.
    `shuffle=True`: each epoch a seeded permutation is cut into buckets of `bucket_size` batches, each bucket
    sorted by length and cut into batches, and the full batches shuffled. A short last batch (when `drop_last`
    is False) always comes last, as `accelerate`'s `gather_for_metrics` expects. Successive epochs differ;
    `set_epoch(e)` makes epoch `e` reproducible (seed + e).

    Example::

        sampler = BucketBatchSampler(lengths, batch_size=32, shuffle=True, seed=0)
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collator)
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        bucket_size: int = 50,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        if not isinstance(bucket_size, int) or bucket_size < 1:
            raise ValueError(f"bucket_size must be a positive int (batches per bucket), got {bucket_size!r}.")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.bucket_size = bucket_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch whose order the next iteration yields (seed + epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _batches(self, order: np.ndarray) -> list[list[int]]:
        return [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            self.epoch += 1
            perm = rng.permutation(n)
            chunk = self.batch_size * self.bucket_size
            order = np.concatenate(
                [
                    perm[i : i + chunk][np.argsort(-self.lengths[perm[i : i + chunk]], kind="stable")]
                    for i in range(0, n, chunk)
                ]
            )
        batches = self._batches(order)
        short = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if short is not None and not self.drop_last:
            batches.append(short)
        yield from batches


def make_dataloader(
    dataset: Any,
    tokenizer: Any,
    task: str | TaskInfo,
    batch_size: int = 32,
    max_length: int = 128,
    shuffle: bool = False,
    seed: int = 0,
    limit: int | None = None,
    limit_mode: str = "first",
    bucket: bool = True,
    drop_last: bool = False,
    pad_to_multiple_of: int | None = None,
    progress: bool = False,
) -> DataLoader:
    """A DataLoader of dynamically padded batches (`input_ids`, `attention_mask`, [`token_type_ids`], `labels`).

    `limit` keeps the first n examples (`limit_mode="first"`) or a random n chosen with `seed`
    (`limit_mode="random"`). With `bucket=True` batches group similar lengths (see `BucketBatchSampler`);
    `shuffle=True` for training. Labels are int64 class ids, or float32 for regression tasks.

    Example::

        ds = load_split("sst2", "validation")
        loader = make_dataloader(ds, tokenizer, "sst2", batch_size=32, max_length=64, limit=64)
        batch = next(iter(loader))  # batch["input_ids"].shape == (32, <longest in batch>)
    """
    from transformers import DataCollatorWithPadding

    task = get_task(task)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if not isinstance(dataset, TokenizedDataset):
        dataset = subset(dataset, limit, limit_mode, seed)
        dataset = tokenize(dataset, tokenizer, task, max_length=max_length, progress=progress)
    elif limit is not None:
        raise ValueError("limit applies to raw datasets; subset before tokenize() or pass the raw dataset.")
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")
    generator = torch.Generator().manual_seed(seed)
    if bucket:
        sampler = BucketBatchSampler(
            dataset.lengths, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, generator=generator)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        collate_fn=collator,
        generator=generator,
    )
