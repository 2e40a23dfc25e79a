"""Gradual pruning while distilling: a schedule of pruning events and the event itself.

At each event the student is re-scored on a few training batches (``structprune.score``), a budget is
allocated (``structprune.allocate``) and the structure is physically removed (``structprune.prune_``).
The schedule is cubic (Zhu & Gupta, 2017): most structure goes early, when the model can still recover.

How this meets Accelerate (see ``loop.py``): surgery replaces parameters, so after an event the loop
frees the prepared objects (``accelerator.free_memory``), builds a new optimizer (fresh AdamW moments for
the new, smaller tensors) and scheduler (continuing at the current step), and calls ``prepare`` again
(DDP re-wraps the smaller model). Every process computes the same mask: scores are averaged across
processes before allocating. A checkpoint records the student's structure (``structure.json``); resuming
prunes the fresh student to that structure *before* ``prepare``/``load_state``, so shapes match, and the
schedule, which depends only on the step, carries on.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..allocate import allocate
from ..arch import view
from ..cost import cost, dense_cost, head_flops, neuron_flops
from ..importance import score
from ..mask import Mask, Scores
from ..surgery import prune_

logger = logging.getLogger(__name__)


def flops_fraction(model: nn.Module, seq_len: int = 128) -> float:
    """Encoder FLOPs of ``model`` as a fraction of the unpruned model it came from."""
    return cost(model, seq_len).encoder_flops / dense_cost(model, seq_len).encoder_flops


def cubic_fractions(start: float, target: float, n: int) -> list[float]:
    """FLOPs fractions after each of ``n`` events, cubic from ``start`` down to ``target`` (the last one).

    Example::

        cubic_fractions(1.0, 0.25, 4)   # [0.566..., 0.334..., 0.261..., 0.25]
    """
    if n < 1:
        raise ValueError(f"Need at least one pruning event, got {n}.")
    return [target + (start - target) * (1 - k / n) ** 3 for k in range(1, n + 1)]


def prune_schedule(
    total_steps: int, start: float, end: float, n: int, current: float, target: float
) -> list[tuple[int, float]]:
    """``(optimizer step, FLOPs fraction)`` of each pruning event, evenly spaced from ``start`` to ``end``
    (fractions of ``total_steps``); an event at step ``s`` runs after ``s`` optimizer steps.

    Example::

        prune_schedule(100, 0.0, 0.5, 4, current=1.0, target=0.5)   # [(0, ...), (17, ...), (33, ...), (50, 0.5)]
    """
    if target >= current:
        return []
    first, last = round(start * total_steps), round(end * total_steps)
    last = min(max(last, first), max(total_steps - 1, 0))
    first = min(first, last)
    steps = [first + round((last - first) * k / (n - 1)) if n > 1 else last for k in range(n)]
    return list(zip(steps, cubic_fractions(current, target, n), strict=True))


def budget_counts(model: nn.Module, fraction: float, seq_len: int, min_heads: int = 1) -> tuple[int, int]:
    """Heads and FFN neurons to keep so the model costs ``fraction`` of the *dense* encoder FLOPs.

    Heads keep ``fraction`` of the dense head count (never more than the model still has) and neurons
    take the rest of the budget; what neurons cannot use (all already kept) goes back to heads. This is
    computed here rather than by ``allocate(flops=...)``, which, on an already-pruned model, keeps
    ``fraction`` of the heads *still alive* and so undershoots the budget at every later event.

    Example::

        budget_counts(model, 0.5, seq_len=128)   # (36, 4608) for MiniLM-L6 (12 heads, 1536 neurons x 6)
    """
    st = view(model).structure
    alive = Mask.full(model)
    alive_h, alive_f = int(alive.head.sum()), int(alive.ffn.sum())
    d = getattr(st, "hidden_width", st.hidden_size)
    hf, nf = head_flops(d, st.head_size, seq_len), neuron_flops(d, seq_len)
    budget = fraction * dense_cost(model, seq_len).encoder_flops
    min_keep = min_heads * len(st.layers)
    n_heads = max(min(round(fraction * st.num_layers * st.num_heads), alive_h), min_keep)
    n_ffn = max(0, min(int((budget - n_heads * hf) // nf), alive_f))
    if n_ffn == alive_f:
        n_heads = max(min(alive_h, int((budget - n_ffn * nf) // hf)), min_keep)
    return n_heads, n_ffn


def _reduce_scores(scores: Scores, accelerator) -> Scores:
    if accelerator is None or accelerator.num_processes == 1:
        return scores
    head = accelerator.reduce(scores.head.to(accelerator.device), reduction="sum").cpu()
    ffn = accelerator.reduce(scores.ffn.to(accelerator.device), reduction="sum").cpu()
    return Scores(head, ffn, method=scores.method, meta=scores.meta)


def prune_event(
    model: nn.Module,
    batches: Iterable[Mapping],
    fraction: float,
    *,
    method: str = "taylor",
    max_batches: int = 8,
    seq_len: int = 128,
    multiple_of: int = 1,
    min_heads: int = 1,
    accelerator=None,
) -> Mask:
    """Score ``model`` on ``batches``, allocate ``fraction`` of the dense FLOPs and prune it in place.

    With an ``accelerator``, each process scores its own share of the batches and the scores are summed
    over processes, so every process removes the same structure (``fisher`` sums per-example terms, so
    its scores do not depend on how examples are split into batches or processes). Returns the mask applied (original coordinates).

    Example::

        mask = prune_event(student, train_dataloader, 0.5, method="taylor", max_batches=4)
    """
    device = next(model.parameters()).device
    procs = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    # Process r scores batches r, r + P, ... of the first P * max_batches: P processes with per-process
    # batch b see the examples one process with batch P * b would (same data order on every process).
    data = [
        {k: (t.to(device) if isinstance(t, torch.Tensor) else t) for k, t in b.items()}
        for i, b in enumerate(itertools.islice(iter(batches), max_batches * procs))
        if i % procs == rank
    ]
    options = {"max_batches": max_batches, "progress": False} if method != "magnitude" else {}
    scores = _reduce_scores(
        score(model, data if method != "magnitude" else None, method=method, **options), accelerator
    )
    n_heads, n_ffn = budget_counts(model, fraction, seq_len, min_heads)
    mask = allocate(scores, model, heads=n_heads, ffn=n_ffn, multiple_of=multiple_of, min_heads=min_heads)
    mask = mask & Mask.full(model)
    prune_(model, mask)
    logger.info(
        "gradual pruning: %.1f%% of dense encoder FLOPs (target %.1f%%)",
        100 * flops_fraction(model, seq_len),
        100 * fraction,
    )
    return mask
