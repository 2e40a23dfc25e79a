"""Atomic file writes: a kill at any point leaves the previous file or the new one, never half of one.

One definition for every JSON/text file structprune writes (run records, trainer state, masks, teacher
records); whole checkpoint folders use :func:`structprune.checkpoint.files.atomic_directory`.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: a temporary file beside it, fsynced, then one rename.

    A kill at any point leaves either the previous file or the new one, never a truncated file.

    Example::

        atomic_write_text("out/run.json", json.dumps(state))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | os.PathLike, data, *, indent: int | None = 2) -> Path:
    """``atomic_write_text`` of ``data`` as JSON (``default=str`` for paths and the like)."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=str) + "\n")
