"""Unlabelled sentences for a sentence-embedding model: the text of GLUE train splits and of the user's files."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path


def unlabelled_sentences(sources: Sequence[str | os.PathLike], data_dir=None, *, seed: int = 0,
                         limit: int | None = None) -> list[str]:  # fmt: skip
    """A shuffled, de-duplicated pool of sentences from ``sources``: GLUE task names (every text column of the
    task's train split, in column order; the labels are never read) and paths of ``.txt`` files (UTF-8, one
    sentence a line, blank lines skipped). ``limit``: at most that many rows of each source (its first ones).
    ``seed`` orders the pool, so that its slices (calibration first, then distillation) are disjoint random
    samples. A source that is neither, an unreadable file, or a pool with no sentence is a clear error.

    Example::

        pool = unlabelled_sentences(["stsb", "sst2"], seed=0)          # STS-B + SST-2 train text
        pool = unlabelled_sentences(["my-queries.txt"])                 # your own sentences
    """
    from ..data import GLUE_TASKS, get_task, load_split

    if isinstance(sources, str | os.PathLike):
        sources = [sources]
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive or None, got {limit}.")
    texts: list[str] = []
    for source in sources:
        name = str(source)
        if not isinstance(source, os.PathLike) and name.lower() in GLUE_TASKS:
            task = get_task(name)
            split = load_split(task, "train", data_dir, require_labels=False)
            rows = split.select(range(min(limit, len(split)))) if limit is not None else split
            for key in task.text_keys:
                texts += [t for t in rows[key] if isinstance(t, str) and t.strip()]
            continue
        path = Path(source).expanduser()
        if path.suffix != ".txt":
            raise ValueError(
                f"Sentence source {name!r} is neither a GLUE task ({', '.join(GLUE_TASKS)}) nor a .txt file of "
                "sentences (one a line)."
            )
        if not path.is_file():
            raise FileNotFoundError(f"No file of sentences at {path}.")
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text ({err}).") from None
        texts += lines[:limit] if limit is not None else lines
    pool = list(dict.fromkeys(texts))
    if not pool:
        raise ValueError(f"No sentences in {', '.join(map(str, sources))}.")
    random.Random(seed).shuffle(pool)
    return pool
