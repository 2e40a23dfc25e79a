"""Per-example gate gradients: what the constrained search's Fisher rearrangement needs.

:func:`gate_gradients` runs the same pass as ``score(method="fisher")`` but keeps every example's
gradient w.r.t. every head and neuron gate; :class:`GateGradients` gives the Fisher diagonal and is the
input of :func:`structprune.allocation.rearrange`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import view
from ..mask import Mask, Scores
from .passes import gate_grads, scoring_state


@dataclass
class GateGradients:
    """Per-example gradients of the loss w.r.t. every head gate (``head: [N, L, H]``) and neuron gate
    (``ffn: [N, L, I]``), in original coordinates. ``fisher()`` is their empirical Fisher diagonal."""

    head: torch.Tensor
    ffn: torch.Tensor
    label_free: bool = False

    @property
    def num_examples(self) -> int:
        return self.head.shape[0]

    def fisher(self) -> Scores:
        """The Fisher diagonal ``sum_e g_e^2`` as :class:`Scores` (what ``sp.score(method="fisher")`` gives)."""
        return Scores(
            self.head.pow(2).sum(0),
            self.ffn.pow(2).sum(0),
            method="fisher",
            meta={"label_free": self.label_free, "examples": self.num_examples},
        )


def gate_gradients(
    model: nn.Module,
    batches: Iterable[Mapping],
    *,
    label_free: bool = False,
    max_batches: int | None = None,
    progress: bool = True,
) -> GateGradients:
    """Per-example gate gradients of ``model``'s loss on ``batches`` (labels, or its own predictions).

    Same pass as ``sp.score(model, batches, method="fisher")`` (it reuses that code path), but keeps the
    per-example gradients that :func:`structprune.allocation.rearrange` needs. Memory: ``N x L x (H + I)`` floats.

    Example::

        grads = sp.gate_gradients(model, batches, label_free=True)
        scores = grads.fisher()
    """
    v = view(model)
    collected: list[torch.Tensor] = []  # gate_grads reduces the head gradients, then the FFN ones

    def keep(grad: torch.Tensor) -> torch.Tensor:
        # grad: [B, L, H] or [B, L, I]; store it and return the batch's Fisher contribution
        collected.append(grad.cpu())
        return grad.pow(2).sum(0)

    with scoring_state(model):  # eval mode, frozen parameters, restored afterwards
        gate_grads(
            model, v, batches, label_free=label_free, max_batches=max_batches, progress=progress, reduce=keep
        )
    alive = Mask.full(model)
    head = torch.cat(collected[0::2]) * alive.head
    ffn = torch.cat(collected[1::2]) * alive.ffn
    return GateGradients(head, ffn, label_free=label_free)
