"""Checkpoint folders on disk: atomic writes and integrity checks (no model code here)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import safe_open

from ..atomic import atomic_write_text, fsync_dir  # noqa: F401  (atomic_write_text: re-exported)

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(root)


# What a model save writes: files of these names in an existing folder are replaced by the new save;
# anything else there (the user's notes, eval outputs, ...) is kept.
MODEL_FILES = (
    CONFIG_FILE, "model.safetensors", "model.safetensors.index.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
    "merges.txt", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json", "README.md",
    "structure.png", "modeling_structprune.py", "chat_template.jinja",
)  # fmt: skip
_MARKER = ".structprune-partial"  # inside our temporary folders: "<pid>@<host>"


def _is_model_file(name: str) -> bool:
    return name in MODEL_FILES or (name.startswith("model-") and name.endswith(".safetensors"))


def _ours_and_stale(folder: Path) -> bool:
    """A temporary folder of a structprune save whose process is gone (safe to remove)."""
    marker = folder / _MARKER
    if not marker.is_file():
        return False
    pid_text, _, host = marker.read_text(encoding="utf-8").partition("@")
    if host != os.uname().nodename or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover(path: str | os.PathLike) -> None:
    """Finish what a killed save of ``path`` left: put the previous checkpoint back when the save died
    between its two renames, and remove this save's stale temporary folders (only ours, only when their
    process is gone).

    Called by :func:`atomic_directory` and by ``from_pretrained`` before they read ``path``.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    leftovers = sorted(path.parent.glob(f".{path.name}.*.old"), key=lambda p: p.stat().st_mtime)
    if not path.exists() and leftovers and _ours_and_stale(leftovers[-1]):
        (leftovers[-1] / _MARKER).unlink()
        os.replace(leftovers[-1], path)
        logger.warning("%s: a save was killed between its renames; restored the previous checkpoint.", path)
        leftovers = leftovers[:-1]
    for stale in [*leftovers, *path.parent.glob(f".{path.name}.*.tmp")]:
        if _ours_and_stale(stale):
            shutil.rmtree(stale, ignore_errors=True)
            logger.info("removed %s, left by a save that was killed", stale)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    ok = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    return ok


def _keep_foreign_files(old: Path, new: Path) -> list[str]:
    """Link (or copy) into ``new`` every entry of ``old`` that a model save does not write."""
    kept = []
    for entry in old.iterdir():
        if _is_model_file(entry.name) or (new / entry.name).exists() or entry.name == _MARKER:
            continue
        if entry.is_dir():
            shutil.copytree(entry, new / entry.name, symlinks=True)
        else:
            try:
                os.link(entry, new / entry.name, follow_symlinks=False)
            except OSError:
                shutil.copy2(entry, new / entry.name, follow_symlinks=False)
        kept.append(entry.name)
    return kept


@contextmanager
def atomic_directory(path: str | os.PathLike, *, source: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path`` in one step.

    An exception (or a kill) before the end leaves ``path`` as it was: absent, or the previous checkpoint
    (a kill between the two renames where the atomic exchange is unavailable is undone by :func:`recover`
    on the next save or load). An existing ``path`` must be an empty folder or a model folder (with
    config.json); files in it that a model save does not write are kept. ``source``: the folder the model
    was read from; saving over it is refused.

    Example::

        with atomic_directory("out/model") as tmp:
            model.save_pretrained(tmp)
    """
    path = Path(path)
    if (
        source is not None
        and os.path.isdir(source)
        and path.exists()
        and path.resolve() == Path(source).resolve()
    ):
        raise ValueError(
            f"{path} is the folder the model was loaded from; saving would replace the model being read. "
            "Choose another output folder."
        )
    recover(path)
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
    (tmp / _MARKER).write_text(f"{os.getpid()}@{os.uname().nodename}", encoding="utf-8")
    try:
        yield tmp
        if path.exists():
            kept = _keep_foreign_files(path, tmp)
            if kept:
                logger.info("kept %s in %s (not written by a model save)", kept, path)
        (tmp / _MARKER).unlink()
        _fsync_tree(tmp)
        if path.exists():
            # the previous checkpoint is ours to remove from here on: mark it, so that a kill below
            # leaves a folder recover() knows
            (path / _MARKER).write_text(f"{os.getpid()}@{os.uname().nodename}", encoding="utf-8")
            if _exchange(tmp, path):  # tmp now holds the previous checkpoint
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                old = path.with_name(f".{path.name}.{tag}.old")
                os.replace(path, old)
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old, path)
                    (path / _MARKER).unlink(missing_ok=True)
                    raise
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def saved_by_structprune(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a model that structprune saved: a config.json that records a pruned structure
    (``structprune``), or a model card tagged ``structprune``. What the command line's ``--overwrite`` may
    replace (and :func:`atomic_directory` still keeps any other file there)."""
    folder = Path(folder)
    try:
        if "structprune" in read_config(folder):
            return True
    except (FileNotFoundError, ValueError):
        return False
    card = folder / "README.md"
    if not card.is_file():
        return False
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return False
    metadata = text.split("---", 2)[1] if text.count("---") >= 2 else ""
    return any(line.strip() == "- structprune" for line in metadata.splitlines())


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
