"""Staged distillation (TinyBERT): intermediate layers first, the prediction layer second.

:class:`StagedDistillation` is the loop callback that runs ``DistillConfig.stages`` in order: at each
stage boundary the loss weights switch to the new stage's and a fresh optimizer starts the stage's own
learning-rate schedule. The stage in force depends only on the optimizer step, so a run resumed at (or
across) a boundary does exactly what an uninterrupted one does: a checkpoint written at the last step of a
stage resumes in that stage and switches before the next step, as the first run did.
"""

from __future__ import annotations

from .callbacks import LoopCallback
from .config import DistillStage


class StagedDistillation(LoopCallback):
    """Run ``stages`` one after the other (see :class:`~structprune.recovery.distill.config.DistillStage`)."""

    def __init__(self, stages: list[DistillStage]):
        self.stages = list(stages)
        self.bounds: list[tuple[int, int]] = []
        self.current = -1

    def stage_at(self, step: int) -> int:
        """Index of the stage that runs optimizer step ``step + 1`` (the step after ``step`` done)."""
        return next(
            i for i, (start, end) in enumerate(self.bounds) if step < end or i == len(self.bounds) - 1
        )

    def on_train_begin(self, loop) -> None:
        per_epoch, start = loop.rs.steps_per_epoch, 0
        for stage in self.stages:
            end = start + stage.steps(per_epoch)
            self.bounds.append((start, end))
            start = end
        # the stage in force when this run's state was written (before a switch due at this step)
        index = self.stage_at(max(loop.rs.step - 1, 0))
        self._apply(loop, index)
        loop.lr_offset = max(loop.lr_offset, self.bounds[index][0])

    def on_step_begin(self, loop) -> None:
        index = self.stage_at(loop.rs.step)
        if index != self.current:
            self._apply(loop, index)
            loop.rebuild_optimizer()
            loop.log({"step": loop.rs.step, "stage": self.stages[index].name, "stage_index": index})

    def allows_best(self, loop) -> bool:
        return self.current == len(self.stages) - 1  # earlier stages do not train the prediction layer

    def _apply(self, loop, index: int) -> None:
        stage = self.stages[index]
        self.current = index
        loop.module.terms = _Terms(stage, loop.cfg.temperature)
        loop.span = self.bounds[index]
        loop.learning_rate = stage.learning_rate or loop.cfg.learning_rate


class _Terms:
    """A stage's loss weights, with the temperature of the config."""

    def __init__(self, stage: DistillStage, temperature: float):
        self.task_weight, self.logit_weight = stage.task_weight, stage.logit_weight
        self.hidden_weight, self.attention_weight = stage.hidden_weight, stage.attention_weight
        self.temperature = temperature
