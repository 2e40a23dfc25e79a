"""Load GLUE splits from a local folder or the Hub, and a user's own CSV/JSON/JSONL/Parquet/TSV files."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .tasks import TaskInfo, get_task

if TYPE_CHECKING:
    import datasets

__all__ = ["DataNotFoundError", "HUB_DATASET", "default_data_dir", "load_files", "load_split"]

logger = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"
ENV_VAR = "STRUCTPRUNE_GLUE_DIR"
GLUE_EXTENSIONS = (".parquet", ".jsonl", ".tsv")  # tried in this order inside <dir>/<TASK>/
FILE_EXTENSIONS = (".parquet", ".jsonl", ".json", ".csv", ".tsv")


class DataNotFoundError(FileNotFoundError):
    """Raised when a split's data files cannot be found locally (and the Hub was not reachable or not asked)."""


def default_data_dir() -> Path | None:
    """Where GLUE data is read from when no folder is given: `$STRUCTPRUNE_GLUE_DIR` when set, else None
    (meaning: the Hub).

    Example::

        os.environ["STRUCTPRUNE_GLUE_DIR"] = "/data/glue"
        default_data_dir()  # PosixPath('/data/glue')
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataNotFoundError(
                f"${ENV_VAR} points to {str(path)!r}, which is not a folder. Set it to a folder laid out as "
                "<dir>/<TASK>/<split>.{parquet,jsonl,tsv}, or unset it to use the Hub."
            )
        return path
    return None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _task_folder(root: Path, task: TaskInfo) -> tuple[Path | None, list[Path]]:
    """Find <root>/<TASK> case- and dash-insensitively ('SST-2', 'sst2', 'Sst_2')."""
    wanted = {_norm(task.name)} | ({_norm(task.dir_name)} if task.dir_name else set())
    exact = [root / n for n in dict.fromkeys(filter(None, (task.dir_name, task.name)))]
    for path in exact:
        if path.is_dir():
            return path, exact
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and _norm(child.name) in wanted:
                return child, exact
    return None, exact


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(
                        f"{path}:{lineno} is not valid JSON ({e}); expected one object per line."
                    ) from e
    return rows


def _read_json(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl(path)  # JSON lines saved as .json
    if isinstance(obj, dict):  # {"data": [...]} or column-oriented {"text": [...], "label": [...]}
        lists = {k: v for k, v in obj.items() if isinstance(v, list)}
        if len(lists) == 1 and all(isinstance(r, dict) for r in next(iter(lists.values()))):
            obj = next(iter(lists.values()))
        elif lists and len(lists) == len(obj) and len({len(v) for v in lists.values()}) == 1:
            obj = [dict(zip(lists, vals, strict=True)) for vals in zip(*lists.values(), strict=True)]
        else:
            obj = [obj]
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise ValueError(
            f"{path} must hold a list of records ([{{...}}, ...]), a dict of equal-length columns, or JSON lines."
        )
    return obj


def _read_file(path: Path) -> datasets.Dataset:
    import datasets

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return datasets.Dataset(pq.read_table(path))
    if suffix in (".jsonl", ".json"):
        rows = _read_jsonl(path) if suffix == ".jsonl" else _read_json(path)
        if not rows:
            raise ValueError(f"{path} holds no rows.")
        return datasets.Dataset.from_list(rows)
    if suffix in (".csv", ".tsv"):
        import pandas as pd

        # GLUE TSVs contain unbalanced quotes: read them verbatim (QUOTE_NONE). Empty cells stay "" (no NaN).
        kw = {"sep": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {"sep": ","}
        df = pd.read_csv(path, keep_default_na=False, na_values=[], encoding="utf-8", **kw)
        return datasets.Dataset.from_pandas(df, preserve_index=False)
    raise ValueError(f"Unsupported data file {str(path)!r}: use one of {', '.join(FILE_EXTENSIONS)}.")


def _check_and_cast(
    ds: datasets.Dataset, task: TaskInfo, source: str, require_labels: bool
) -> datasets.Dataset:
    """Check the task's columns exist, then make labels int64 class ids (classification) or float32."""
    import datasets

    missing = [k for k in task.text_keys if k not in ds.column_names]
    has_labels = task.label_column in ds.column_names
    if require_labels and not has_labels:
        missing.append(task.label_column)
    if missing:
        raise ValueError(
            f"{source} has no column(s) {missing} needed by task {task.name!r}; the columns present are "
            f"{ds.column_names}. Pass the right names, e.g. TaskInfo.custom(text_keys=(...), label_column=...)."
        )
    for key in task.text_keys:
        dtype = ds.features[key]
        if not (isinstance(dtype, datasets.Value) and dtype.dtype in ("string", "large_string")):
            ds = ds.cast_column(key, datasets.Value("string"))
    if not has_labels:
        return ds
    if task.label_column != "label":  # one name downstream: 'label' (renamed to 'labels' when batching)
        if "label" in ds.column_names:
            ds = ds.remove_columns("label")
        ds = ds.rename_column(task.label_column, "label")
    labels = np.asarray(ds["label"])
    if task.is_regression:
        try:
            labels = labels.astype(np.float32)
        except ValueError as e:
            raise ValueError(
                f"{source}: regression labels in column {task.label_column!r} must be numbers: {e}"
            ) from e
        return ds.remove_columns("label").add_column(
            "label", labels.tolist(), feature=datasets.Value("float32")
        )
    if labels.dtype.kind in "US" or labels.dtype == object:  # class names -> ids
        if task.label_names is None:
            raise ValueError(
                f"{source}: labels in column {task.label_column!r} are strings (e.g. {labels[0]!r}); pass "
                "label_names=(...) to the task to map them to class ids (index = id)."
            )
        index = {n: i for i, n in enumerate(task.label_names)}
        unknown = sorted({str(v) for v in labels} - set(index))
        if unknown:
            raise ValueError(
                f"{source}: labels {unknown[:10]} are not in label_names {list(task.label_names)}."
            )
        labels = np.array([index[str(v)] for v in labels], dtype=np.int64)
    elif labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        raise ValueError(
            f"{source}: classification labels in column {task.label_column!r} are not integers "
            f"(e.g. {labels[labels != np.round(labels)][0]}); for a regression task use num_labels=1."
        )
    labels = labels.astype(np.int64)
    bad = sorted(set(np.unique(labels).tolist()) - set(range(task.num_labels)) - {-1})
    if bad:
        raise ValueError(
            f"{source}: labels {bad[:10]} are outside 0..{task.num_labels - 1} for task {task.name!r} "
            f"(num_labels={task.num_labels}); -1 is allowed and means 'unlabelled'."
        )
    return ds.remove_columns("label").add_column("label", labels.tolist(), feature=datasets.Value("int64"))


def load_files(
    task: str | TaskInfo, path: str | os.PathLike, *, require_labels: bool = True
) -> datasets.Dataset:
    """Load one data file (.csv, .tsv, .json, .jsonl or .parquet) for a task and check its columns.

    Labels end up in a column named `label` (int64 ids, or float32 for regression); class-name labels are
    mapped to ids with `task.label_names`.

    Example::

        task = TaskInfo.custom("reviews", text_keys="review", num_labels=2, label_column="sentiment")
        ds = load_files(task, "reviews.csv")  # columns: review, label
    """
    task = get_task(task)
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"Data file {str(path)!r} does not exist.")
    return _check_and_cast(_read_file(path), task, str(path), require_labels)


def _looks_like_file(split: str) -> bool:
    return Path(split).suffix.lower() in FILE_EXTENSIONS or os.sep in split or "/" in split


def load_split(
    task: str | TaskInfo,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    require_labels: bool = True,
) -> datasets.Dataset:
    """Load one split of a task as a `datasets.Dataset` with the task's text columns and a `label` column.

    Where it reads from:
      - `split` is a file path (e.g. "my_train.csv"): that file.
      - `data_dir` given: `<data_dir>/<TASK>/<split>.{parquet,jsonl,tsv}` (folder name matched case- and
        dash-insensitively: SST-2, sst2); for custom tasks also `<data_dir>/<split>.{parquet,jsonl,json,csv,tsv}`.
      - `data_dir=None`: `default_data_dir()` ($STRUCTPRUNE_GLUE_DIR) when it is set and holds
        the split, else the Hub (`nyu-mll/glue`).
      - `data_dir="hub"`: the Hub only.

    Example::

        ds = load_split("sst2", "validation", "data/glue")   # <dir>/SST-2/validation.parquet
        ds = load_split("mnli", "validation_matched")  # from the Hub
    """
    task = get_task(task)
    if not isinstance(split, str) or not split:
        raise TypeError(f"split must be a split name like 'validation' or a file path, got {split!r}.")
    if _looks_like_file(split):
        return load_files(task, split, require_labels=require_labels)

    tried: list[str] = []
    hub_only = isinstance(data_dir, str) and data_dir.lower() == "hub"
    explicit = data_dir is not None and not hub_only
    root = Path(data_dir).expanduser() if explicit else (None if hub_only else default_data_dir())
    if root is not None:
        if explicit and not root.is_dir():
            raise DataNotFoundError(
                f"Data folder {str(root)!r} does not exist. Pass a folder laid out as "
                "<dir>/<TASK>/<split>.{parquet,jsonl,tsv}, or data_dir=None to use the Hub."
            )
        folder, exact = _task_folder(root, task)
        folders = [folder] if folder is not None else exact
        exts = GLUE_EXTENSIONS if task.hub_config else FILE_EXTENSIONS
        if task.hub_config is None:
            folders.append(root)
        for base in folders:
            for ext in exts:
                path = base / f"{split}{ext}"
                tried.append(str(path))
                if path.is_file():
                    logger.info("Loading %s %s from %s", task.name, split, path)
                    return _check_and_cast(_read_file(path), task, str(path), require_labels)
        if explicit or task.hub_config is None:
            raise DataNotFoundError(
                f"No {split!r} data for task {task.name!r}: tried {', '.join(tried)}. Put the split there as "
                f"parquet/jsonl/tsv, pass another data_dir, or data_dir=None to use the Hub."
            )
        logger.info("%s %s not in %s; trying the Hub (%s).", task.name, split, root, HUB_DATASET)
    if task.hub_config is None:
        raise DataNotFoundError(
            f"Custom task {task.name!r} is not on the Hub: pass data_dir=<folder> or a file path as split."
        )
    import datasets

    try:
        ds = datasets.load_dataset(HUB_DATASET, task.hub_config, split=split)
    except ValueError as e:  # unknown split name
        raise ValueError(f"Task {task.name!r} has no split {split!r} on the Hub: {e}") from e
    except (ConnectionError, OSError) as e:
        where = f" Local files tried: {', '.join(tried)}." if tried else " No local GLUE folder was found."
        raise DataNotFoundError(
            f"Could not load {task.name!r} split {split!r} from the Hub ({HUB_DATASET}, config "
            f"{task.hub_config!r}): {type(e).__name__}: {e}.{where} Offline? Download GLUE into "
            f"<dir>/<TASK>/<split>.parquet and pass data_dir=<dir> or set ${ENV_VAR}."
        ) from e
    return _check_and_cast(ds, task, f"{HUB_DATASET}/{task.hub_config}[{split}]", require_labels)
