"""Input checks of the training loop, and the attention-implementation switch attention KD needs."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from torch import nn
from torch.utils.data import DataLoader

from ...arch import view
from .config import DistillConfig

logger = logging.getLogger(__name__)


def hidden_width(model: nn.Module) -> int:
    return view(model).structure.hidden_width


def _vocab(model: nn.Module) -> int | None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return getattr(emb, "num_embeddings", None) or getattr(model.config, "vocab_size", None)


def check_inputs(student, teacher, train_data, eval_data, cfg: DistillConfig) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for inputs the loop cannot train on."""
    if cfg.save_every is not None and cfg.output_dir is None:
        raise ValueError("save_every needs an output_dir to write checkpoints to.")
    if not isinstance(student, nn.Module) or not hasattr(student, "config"):
        raise TypeError(f"The model to train must be a transformers model, got {type(student).__name__}.")
    for name, dl in (("train_data", train_data), ("eval_data", eval_data)):
        if dl is not None and not isinstance(dl, DataLoader):
            raise TypeError(
                f"{name} must be a torch DataLoader of dicts (see structprune.data.make_dataloader), got "
                f"{type(dl).__name__}."
            )
    if not any(p.requires_grad for p in student.parameters()):
        raise ValueError(
            "The model to train has no parameter with requires_grad=True; unfreeze it "
            "(model.requires_grad_(True)) before training."
        )
    if train_data is None:
        raise ValueError("train_data is required.")
    if len(train_data) == 0:
        raise ValueError("train_data is empty; it needs at least one batch.")
    if teacher is not None:
        if teacher is student:
            raise ValueError(
                "The teacher and the student are the same object; distil into a copy of the model."
            )
        sv, tv = _vocab(student), _vocab(teacher)
        if sv != tv:
            raise ValueError(
                f"The student's vocabulary has {sv} tokens but the teacher's has {tv}: they use different "
                "tokenizers, so their inputs cannot be shared. Distil into a student built from the teacher."
            )
        sl, tl = student.config.num_labels, teacher.config.num_labels
        if sl != tl:
            raise ValueError(
                f"The student predicts {sl} labels but the teacher predicts {tl}; give the student the "
                "teacher's classifier (num_labels) before distilling."
            )
    first = next(iter(train_data))
    if not isinstance(first, Mapping):
        raise TypeError(
            f"Each batch must be a dict of model inputs, got {type(first).__name__}; use a collator that "
            "returns dicts (structprune.data.make_dataloader does)."
        )
    needs_labels = teacher is None or cfg.task_weight > 0
    if needs_labels and first.get("labels") is None:
        what = "fine-tuning" if teacher is None else "the task loss (task_weight > 0)"
        raise ValueError(
            f"The training batches have no 'labels' but {what} needs them. Keep the dataset's label "
            "column (named 'label' or 'labels'), or distil on logits alone with task_weight=0."
        )
    if eval_data is not None:
        if cfg.task is None:
            raise ValueError(
                "Evaluating eval_data needs the task's metrics: set DistillConfig(task='sst2', ...)."
            )
        batch = next(iter(eval_data))
        if not isinstance(batch, Mapping) or batch.get("labels") is None:
            raise ValueError("The eval_data batches have no 'labels'; evaluation needs the label column.")


def task_info(cfg: DistillConfig, eval_data):
    if eval_data is None:
        return None
    from ...data import get_task

    return get_task(cfg.task)
