"""Gradual pruning while distilling: a schedule of pruning events and the event itself.

At each event the student is re-scored on a few training batches (``structprune.score``), a budget is
allocated (``structprune.allocate``) and the structure is physically removed (``structprune.prune_``).
The schedule is cubic (Zhu & Gupta, 2017): most structure goes early, when the model can still recover.

:class:`GradualPruning` is the loop callback that runs the events (the loop adds it when
``DistillConfig.prune`` is set). How this meets Accelerate (see ``loop.py``): surgery replaces parameters, so after an event the loop
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

from ...allocation.allocate import allocate
from ...allocation.cost import cost, dense_cost
from ...arch import view
from ...mask import Mask, Scores
from ...scoring import score, score_shape, scorer_options
from ...surgery.prune import prune_
from .callbacks import LoopCallback
from .config import PruneSchedule
from .maps import build_map
from .runstate import seed_step

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


def _reduce_scores(scores: Scores, accelerator) -> Scores:
    if accelerator is None or accelerator.num_processes == 1:
        return scores

    def total(t):
        return None if t is None else accelerator.reduce(t.to(accelerator.device), reduction="sum").cpu()

    return Scores(total(scores.head), total(scores.ffn), method=scores.method, meta=scores.meta,
                  hidden=total(scores.hidden), layer=total(scores.layer))  # fmt: skip


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
    layers: int | None = None,
    hidden: int | None = None,
) -> Mask:
    """Score ``model`` on ``batches``, allocate ``fraction`` of the dense FLOPs and prune it in place;
    with ``layers``/``hidden`` also cut the depth / residual width to those sizes first.

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
    st = view(model).structure
    shape = {}
    if layers is not None and layers < len(st.layers):
        shape["layers"] = layers
    if hidden is not None and hidden < st.hidden_width:
        shape["hidden"] = hidden
    if shape:
        scores = score_shape(model, data, method=method, max_batches=max_batches, progress=False)
    else:
        options = scorer_options(method, data)
        if options["batches"] is not None:
            options.update(max_batches=max_batches, progress=False)
        scores = score(model, method=method, **options)
    scores = _reduce_scores(scores, accelerator)
    mask = allocate(
        scores, model, flops=fraction, seq_len=seq_len, multiple_of=multiple_of, min_heads=min_heads, **shape
    )
    mask = mask & Mask.full(model)
    prune_(model, mask)
    logger.info(
        "gradual pruning: %.1f%% of dense encoder FLOPs (target %.1f%%)",
        100 * flops_fraction(model, seq_len),
        100 * fraction,
    )
    return mask


def follow_width(
    projection: nn.Linear | None, dims_before: list[int], student: nn.Module, teacher: nn.Module
):
    """The hidden-state projection (student width -> teacher width) after the student's residual stream
    lost dimensions: its input columns follow the kept dimensions; where there was none (same width
    before), a new one starts as the selection that puts each kept dimension back at its teacher position."""
    dims = view(student).structure.hidden_dims
    if dims == dims_before:
        return projection
    t_dims = view(teacher).structure.hidden_dims
    if projection is None:
        where = {d: i for i, d in enumerate(t_dims)}
        if any(d not in where for d in dims):
            raise ValueError(
                "The student keeps hidden dimensions the teacher does not have; set hidden_weight=0."
            )
        projection = nn.Linear(len(dims), len(t_dims)).to(next(student.parameters()).device)
        with torch.no_grad():
            projection.weight.zero_()
            projection.bias.zero_()
            for j, d in enumerate(dims):
                projection.weight[where[d], j] = 1.0
        return projection
    position = {d: j for j, d in enumerate(dims_before)}
    keep = torch.tensor([position[d] for d in dims], device=projection.weight.device)
    new = nn.Linear(len(dims), projection.out_features).to(projection.weight.device)
    with torch.no_grad():
        new.weight.copy_(projection.weight[:, keep])
        new.bias.copy_(projection.bias)
    return new


class GradualPruning(LoopCallback):
    """Prune the student on ``schedule`` while it trains (see :class:`PruneSchedule`).

    The events depend only on the optimizer step and the size the run started from (kept across
    resumes). An event due at step ``s`` runs before that step's first micro-batch; one scheduled at the
    very end still runs after the last step, so the result meets the budget. While events remain, no
    evaluation may become the kept best (the model is still changing shape).
    """

    def __init__(self, schedule: PruneSchedule):
        self.schedule = schedule
        self.events: list[tuple[int, float]] = []

    def on_train_begin(self, loop) -> None:
        p = self.schedule
        self.events = prune_schedule(loop.total, p.start, p.end, p.steps, loop.rs.schedule_start, p.to)
        logger.info("gradual pruning schedule (step, FLOPs fraction): %s", self.events)
        # a resumed run continues the learning-rate schedule of the optimizer built at the last event
        loop.lr_offset = max([s for s, _ in self.events if s < loop.rs.step], default=0)

    def on_step_begin(self, loop) -> None:
        due = [f for s, f in self.events if s == loop.rs.step]
        if due and loop.rs.pruned_at != loop.rs.step:
            self._prune(loop, due[-1])

    def on_train_end(self, loop) -> None:
        leftover = [f for s, f in self.events if s >= loop.rs.step and loop.rs.pruned_at != s]
        if leftover:
            self._prune(loop, leftover[-1])
            loop.evaluate(may_keep=True)

    def shape_at(self, loop, fraction: float) -> dict:
        """Depth and width due at the event that reaches ``fraction``: the same cubic progress as the FLOPs,
        from the run's starting shape to the targets (exactly the targets at the last event)."""
        p, start = self.schedule, loop.rs.schedule_start
        progress = 1.0 if fraction <= p.to or start <= p.to else (start - fraction) / (start - p.to)
        shape = {}
        for name, target, begin in (("layers", p.layers, loop.rs.schedule_shape[0]),
                                    ("hidden", p.hidden, loop.rs.schedule_shape[1])):  # fmt: skip
            if target is not None:
                shape[name] = max(target, round(begin - (begin - target) * progress))
        return shape

    def allows_best(self, loop) -> bool:
        return not [s for s, _ in self.events if s >= loop.rs.step]

    def _prune(self, loop, fraction: float) -> None:
        """One event: score and prune the student, rebuild the optimizer, follow the layer map."""
        p, rs = self.schedule, loop.rs
        seed_step(loop.cfg, None, rs.step, salt=17)  # every process scores the same batches
        loop.accelerator.wait_for_everyone()
        student = loop.module.student
        student.eval()
        dims_before = view(student).structure.hidden_dims
        prune_event(student, loop.train_data, fraction, method=p.method, max_batches=p.batches, seq_len=p.seq_len,
                    multiple_of=p.multiple_of, min_heads=p.min_heads, accelerator=loop.accelerator,
                    **self.shape_at(loop, fraction))  # fmt: skip
        student.train()
        if loop.module.dmap is not None and loop.cfg.uses_hidden:
            loop.module.projection = follow_width(loop.module.projection, dims_before, student, loop.teacher)
        rs.pruned_at = rs.step
        if loop.module.dmap is not None:
            loop.module.dmap = build_map(student, loop.teacher, loop.cfg.layer_map)
        loop.rebuild_optimizer()
        record = {"step": rs.step, "pruned_flops": flops_fraction(student, p.seq_len), "target": fraction}
        record["params"] = sum(x.numel() for x in student.parameters())
        loop.log(record)
