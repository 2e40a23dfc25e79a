"""Checkpoint folders on disk: atomic writes and integrity checks (no model code here)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import safe_open

from ..atomic import atomic_write_text, fsync_dir  # noqa: F401  (atomic_write_text: re-exported)

CONFIG_FILE = "config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(root)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path`` in one rename.

    An exception (or a kill) before the end leaves ``path`` as it was: absent, or the previous checkpoint.
    An existing ``path`` must be an empty folder or a model folder (with config.json), never anything else.

    Example::

        with atomic_directory("out/model") as tmp:
            model.save_pretrained(tmp)
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; give a folder to save the checkpoint in.")
    if path.is_dir() and any(path.iterdir()) and not (path / CONFIG_FILE).is_file():
        raise ValueError(
            f"{path} is a non-empty folder that holds no model (no {CONFIG_FILE}); saving would replace its "
            "contents. Choose a new or empty folder."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = path.with_name(f".{path.name}.{tag}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.{tag}.old")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_config(folder: str | os.PathLike) -> dict:
    """Parse ``folder/config.json`` as plain JSON (no code runs); clear errors naming the file."""
    file = Path(folder) / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist; {folder} is not a saved model folder.")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{file} is corrupt or truncated (not valid JSON: {err}). Save the model again."
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} does not hold a JSON object; it is not a transformers config.")
    return config


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a checkpoint (one file, or the shards its index lists)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{index} is corrupt or truncated ({err!r}). Save the model again.") from None
        return [folder / name for name in names]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    hint = f" It holds {', '.join(pickles)}: pickle files are never loaded." if pickles else ""
    raise FileNotFoundError(f"{folder} has no model.safetensors (or sharded index).{hint}")


def check_weights(folder: str | os.PathLike) -> None:
    """Open every safetensors header and check each file's size covers its tensors."""
    for file in weight_files(folder):
        if not file.is_file():
            raise FileNotFoundError(f"{file} is listed in the checkpoint index but missing.")
        try:
            with safe_open(str(file), framework="pt") as fh:
                fh.keys()
        except Exception as err:  # safetensors raises its own error type (SafetensorError) for any damage
            raise ValueError(
                f"{file} is corrupt or truncated and cannot be loaded ({err}). Save or download the checkpoint "
                "again."
            ) from None
