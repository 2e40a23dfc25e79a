"""Hooks on the training loop (:class:`LoopCallback`), in the spirit of transformers' ``TrainerCallback``.

Gradual pruning (:class:`structprune.recovery.distill.gradual.GradualPruning`) is one; users pass their
own to ``distill``/``finetune`` (``callbacks=[...]``), e.g. to stop early.
"""

from __future__ import annotations


class LoopCallback:
    """Hooks on the training loop, in the spirit of transformers' ``TrainerCallback``; every method is
    optional. Set ``loop.stop = True`` to end training after the current optimizer step.

    Example::

        class StopAtLoss(LoopCallback):
            def on_log(self, loop, record):
                if record.get("loss", 1.0) < 0.05:
                    loop.stop = True

        sp.finetune(model, train_dl, eval_dl, cfg, callbacks=[StopAtLoss()])
    """

    def on_train_begin(self, loop) -> None:
        """Before the optimizer is built (set ``loop.lr_offset`` to start a new schedule at that step)."""

    def on_step_begin(self, loop) -> None:
        """Before the first micro-batch of each optimizer step."""

    def on_log(self, loop, record: dict) -> None:
        """After a record (training losses, eval metrics or an event) was logged."""

    def on_evaluate(self, loop, record: dict) -> None:
        """After an evaluation (``record`` holds the ``eval_*`` metrics)."""

    def on_train_end(self, loop) -> None:
        """After the last optimizer step, before the best weights are restored."""

    def allows_best(self, loop) -> bool:
        """Whether an evaluation now may become the kept best (False while the model is still changing)."""
        return True
