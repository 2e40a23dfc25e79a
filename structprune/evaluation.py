"""The one evaluation loop: a model, a dataloader, a task -> the task's metrics (+ mean loss)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .batches import labels_of, logits_of, model_inputs, to_device
from .data.metrics import compute_metrics
from .data.tasks import TaskInfo, get_task
from .progress import bar

__all__ = ["evaluate"]

logger = logging.getLogger(__name__)


def _per_example_loss(logits: torch.Tensor, labels: torch.Tensor, task: TaskInfo) -> torch.Tensor:
    if task.is_regression:
        return F.mse_loss(logits.reshape(-1).float(), labels.reshape(-1).float(), reduction="none")
    return F.cross_entropy(logits.float(), labels.long(), reduction="none")


@torch.no_grad()
def _evaluate_one(
    model, dataloader, task: TaskInfo, accelerator, progress: bool, desc: str
) -> dict[str, float]:
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    show = progress and (accelerator is None or accelerator.is_local_main_process)
    preds: list[torch.Tensor] = []
    refs: list[torch.Tensor] = []
    losses: list[torch.Tensor] = []
    for batch in bar(dataloader, enabled=show, desc=desc, leave=False):
        batch = to_device(batch, device)
        labels = labels_of(batch)
        logits = logits_of(model(**model_inputs(batch)))
        if logits.ndim != 2 or logits.shape[-1] != task.num_labels:
            raise ValueError(
                f"evaluate: logits of shape {tuple(logits.shape)} do not match task {task.name!r} "
                f"(num_labels={task.num_labels}); give the model a head with {task.num_labels} output(s)."
            )
        logits = logits.float()
        has_labels = labels is not None and (task.is_regression or bool((labels >= 0).all()))
        loss = _per_example_loss(logits, labels, task) if has_labels else None
        if accelerator is not None:
            logits = accelerator.gather_for_metrics(logits)
            if labels is not None:
                labels = accelerator.gather_for_metrics(labels)
            if loss is not None:
                loss = accelerator.gather_for_metrics(loss)
        preds.append(logits.cpu())
        if labels is not None:
            refs.append(labels.cpu())
        if loss is not None:
            losses.append(loss.cpu())
    if not preds:
        raise ValueError("evaluate: the dataloader yielded no batches.")
    logits_all = torch.cat(preds)
    if len(refs) != len(preds):
        logger.warning("evaluate: some or all batches have no labels; no metrics can be computed.")
        return {}
    labels_all = torch.cat(refs)
    if not task.is_regression and bool((labels_all < 0).any()):
        logger.warning("evaluate: labels contain -1 (an unlabelled test split); no metrics can be computed.")
        return {}
    metrics = compute_metrics(task, logits_all.numpy(), labels_all.numpy())
    metrics["loss"] = float(torch.cat(losses).mean())
    return metrics


def evaluate(
    model: torch.nn.Module,
    dataloader: Any,
    task: str | TaskInfo,
    accelerator: Any = None,
    progress: bool = True,
) -> dict[str, float]:
    """Run the model over a dataloader (eval mode, no grad) and return the task's metrics plus mean `loss`.

    With an `accelerate.Accelerator`, pass the prepared model and dataloader: predictions are collected
    with `gather_for_metrics`, so duplicated samples padding the last batch are dropped. Pass a dict of
    dataloaders (e.g. MNLI's `{"validation_matched": dl_m, "validation_mismatched": dl_mm}`) to get
    `"<name>/<metric>"` keys. The model's train/eval mode is restored afterwards.

    Example::

        loader = make_dataloader(load_split("sst2", "validation"), tokenizer, "sst2", max_length=64)
        evaluate(model, loader, "sst2")  # {'accuracy': 0.8635, 'loss': 0.33}
    """
    task = get_task(task)
    was_training = model.training
    model.eval()
    try:
        if isinstance(dataloader, Mapping):
            out: dict[str, float] = {}
            for name, dl in dataloader.items():
                res = _evaluate_one(model, dl, task, accelerator, progress, f"eval {task.name} {name}")
                out.update({f"{name}/{k}": v for k, v in res.items()})
            return out
        return _evaluate_one(model, dataloader, task, accelerator, progress, f"eval {task.name}")
    finally:
        model.train(was_training)
