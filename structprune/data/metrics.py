"""GLUE metrics computed locally with scikit-learn and scipy (no `evaluate.load`, which needs the Hub)."""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import numpy as np

from .tasks import TaskInfo, get_task

__all__ = ["compute_metrics", "predictions_from_logits"]

logger = logging.getLogger(__name__)


def _to_numpy(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"compute_metrics: {what} must be array-like (list, numpy array or tensor): {e}"
        ) from e
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"compute_metrics: {what} must be numeric, got dtype {arr.dtype}.")
    return arr


def predictions_from_logits(task: str | TaskInfo, predictions: Any) -> np.ndarray:
    """Turn logits `[N, C]` into class ids `[N]` (argmax), or `[N, 1]` regression outputs into `[N]` floats.

    Class ids `[N]` (classification) or scores `[N]` (regression) pass through unchanged.

    Example::

        predictions_from_logits("sst2", [[0.1, 2.0], [3.0, -1.0]])  # array([1, 0])
    """
    task = get_task(task)
    preds = _to_numpy(predictions, "predictions")
    if task.is_regression:
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
        if preds.ndim != 1:
            raise ValueError(
                f"Regression task {task.name!r} expects predictions of shape [N] or [N, 1], got {preds.shape}."
            )
        return preds.astype(np.float64)
    if preds.ndim == 2:
        if preds.shape[1] != task.num_labels:
            raise ValueError(
                f"Task {task.name!r} has {task.num_labels} labels but the logits have {preds.shape[1]} columns; "
                "is the model's classification head built for this task?"
            )
        return preds.argmax(axis=1)
    if preds.ndim != 1:
        raise ValueError(f"Predictions must be class ids [N] or logits [N, C], got shape {preds.shape}.")
    if np.issubdtype(preds.dtype, np.floating) and not np.all(preds == np.round(preds)):
        raise ValueError(
            f"Classification task {task.name!r} got non-integer 1-D predictions; pass class ids or logits [N, C]."
        )
    return preds.astype(np.int64)


def _corr(fn, preds: np.ndarray, refs: np.ndarray, name: str) -> float:
    if np.all(preds == preds[0]) or np.all(refs == refs[0]):
        logger.warning(
            "%s correlation is undefined for constant predictions or references; reporting nan.", name
        )
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(preds, refs)[0])


def compute_metrics(task: str | TaskInfo, predictions: Any, references: Any) -> dict[str, float]:
    """The task's official GLUE metrics from predictions (logits, class ids or scores) and references.

    Accuracy and binary F1 (of class 1) for classification, Matthews correlation for CoLA, Pearson and
    Spearman correlation for STS-B (regression). `combined_score` is the mean of the others when asked for.

    Example::

        compute_metrics("mrpc", [1, 0, 1, 1], [1, 0, 0, 1])  # {'f1': 0.8, 'accuracy': 0.75}
        compute_metrics("stsb", [[1.0], [2.0], [3.5]], [1.2, 2.1, 3.0])  # {'pearson': ..., 'spearmanr': 1.0}
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    task = get_task(task)
    preds = predictions_from_logits(task, predictions)
    refs = _to_numpy(references, "references")
    if refs.ndim == 2 and refs.shape[1] == 1:
        refs = refs[:, 0]
    if refs.ndim != 1 or len(refs) != len(preds):
        raise ValueError(
            f"compute_metrics: {len(preds)} predictions but references have shape {refs.shape}; "
            "they must be one label per example."
        )
    if len(refs) == 0:
        raise ValueError("compute_metrics: no examples (empty predictions and references).")
    if task.is_regression:
        refs = refs.astype(np.float64)
    else:
        if np.issubdtype(refs.dtype, np.floating) and not np.all(refs == np.round(refs)):
            raise ValueError(f"Classification task {task.name!r} got non-integer references.")
        refs = refs.astype(np.int64)
        bad = sorted(set(np.unique(refs).tolist()) - set(range(task.num_labels)))
        if bad:
            raise ValueError(
                f"References of task {task.name!r} hold labels {bad} outside 0..{task.num_labels - 1} "
                "(-1 marks an unlabelled GLUE test split, which cannot be scored)."
            )

    out: dict[str, float] = {}
    for name in task.metrics:
        if name == "accuracy":
            out[name] = float(accuracy_score(refs, preds))
        elif name == "f1":
            out[name] = float(f1_score(refs, preds, pos_label=1, average="binary", zero_division=0.0))
        elif name == "matthews_correlation":
            out[name] = float(matthews_corrcoef(refs, preds))
        elif name == "pearson":
            out[name] = _corr(pearsonr, preds, refs, "Pearson")
        elif name == "spearmanr":
            out[name] = _corr(spearmanr, preds, refs, "Spearman")
    if "combined_score" in task.metrics:
        others = [v for k, v in out.items() if k != "combined_score"]
        out["combined_score"] = float(np.mean(others)) if others else math.nan
    return out
