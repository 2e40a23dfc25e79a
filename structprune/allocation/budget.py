"""What a budget is, in one place: the fraction of the unpruned model's encoder FLOPs or parameters, or of
its latency, kept, and what keeping a head or a neuron costs under it (:class:`Prices`).

FLOPs and parameters are linear in the heads and neurons kept. Latency is not (a latency model is
piecewise linear per layer and a dropped layer costs nothing): its :class:`Prices` are a linear fit that
the allocation spends, plus the exact per-layer cost that :func:`fit_exact` then trims (and tops up) the
mask against, so that the predicted latency is within the budget and close to it.

Used by :func:`~structprune.allocation.allocate`, the constrained search and ``CompressConfig``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..arch import view
from .cost import (
    dense_cost,
    first_layer_gap_per_dim,
    head_flops,
    head_params,
    layer_hidden_params_per_dim,
    neuron_flops,
    neuron_params,
    units,
)

if TYPE_CHECKING:
    from .latency_model import LatencyModel

KINDS = ("flops", "params", "latency")


def check_fraction(name: str, value) -> float:
    """``value`` as a float in (0, 1]; anything else (bool, NaN, 0, > 1, a string) is a ValueError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= 1
    ):
        raise ValueError(
            f"{name}={value!r}: a budget is the fraction of the unpruned encoder kept, a number in (0, 1]."
        )
    return float(value)


def one_budget(flops, params, latency=None) -> tuple[str, float]:
    """The one fraction budget given, as ``("flops" | "params" | "latency", fraction)``."""
    given = [(k, v) for k, v in zip(KINDS, (flops, params, latency), strict=True) if v is not None]
    if len(given) != 1:
        raise ValueError(
            "Give exactly one budget (one of them, not both): flops=<fraction kept>, params=<fraction kept> or "
            "latency=<fraction of the unpruned model's latency kept>."
        )
    kind, value = given[0]
    return kind, check_fraction(kind, value)


@dataclass(frozen=True)
class Prices:
    """What keeping structure costs under a budget: ``fixed + heads * head + neurons * neuron`` (FLOPs,
    parameters, or a linear fit of latency), against ``budget`` (the fraction of the unpruned ``total``).

    ``layer_cost(heads, neurons)`` (latency): the exact cost of one kept layer, where the linear prices
    only approximate it; ``outside`` is then the exact cost outside the layers (see :meth:`exact`).
    """

    kind: str
    fixed: float
    head: float
    neuron: float
    budget: float
    total: float
    layer_cost: Callable[[int, int], float] | None = field(default=None, repr=False, compare=False)
    outside: float = 0.0

    def of(self, heads: int, neurons: int) -> float:
        return self.fixed + heads * self.head + neurons * self.neuron

    def exact(self, heads: Sequence[int], neurons: Sequence[int]) -> float:
        """The cost of keeping ``heads[l]`` heads and ``neurons[l]`` neurons in layer ``l``: with a
        ``layer_cost``, ``outside`` plus each kept layer's exact cost (a dropped layer costs nothing);
        else the linear prices."""
        if self.layer_cost is None:
            return self.of(sum(heads), sum(neurons))
        return self.outside + sum(
            self.layer_cost(h, n) for h, n in zip(heads, neurons, strict=True) if h or n
        )


def prices(model, kind: str, fraction: float, seq_len: int, *, width: int | None = None,
           layers: int | None = None, latency_model: LatencyModel | None = None) -> Prices:  # fmt: skip
    """The :class:`Prices` of ``model`` for a ``kind`` ("flops" | "params" | "latency") budget of ``fraction``.

    ``width``: the residual width the kept layers will have (default: the model's current width);
    ``layers``: how many layers are kept (default: the model's current layers). FLOPs have no fixed part
    (every encoder FLOP belongs to a head or a neuron); parameters do (biases and LayerNorms per layer);
    latency (``latency_model``, a :class:`~structprune.LatencyModel` of this model) has the time outside
    the layers plus what every kept layer costs, and an exact ``layer_cost``.
    """
    v = view(model)
    st = v.structure
    D, dh = st.hidden_size, st.head_size
    d = st.hidden_width if width is None else width
    n_layers = len(st.layers) if layers is None else layers
    if kind == "latency":
        if latency_model is None:
            raise ValueError(
                "A latency budget needs a latency model: latency_model=structprune.LatencyModel..."
            )
        latency_model.check_model(model)
        if d != D:
            raise ValueError(
                f"A latency model is measured at the full hidden size ({D}); a latency budget cannot price a "
                f"hidden size of {d}. Use a flops= or params= budget with hidden=."
            )
        lin, total = latency_model.linear(), latency_model.dense_ms
        # a neuron never costs nothing in the linear prices (the search divides by it)
        neuron = max(lin.neuron, 1e-12 * total)
        return Prices("latency", lin.outside + lin.per_layer * n_layers, lin.head, neuron, fraction * total,
                      total, layer_cost=latency_model.layer_ms, outside=lin.outside)  # fmt: skip
    dense = dense_cost(model, seq_len)
    u = units(v)
    if kind == "flops":
        return Prices(kind, 0, head_flops(d, dh, seq_len, u), neuron_flops(d, seq_len, u),
                      fraction * dense.encoder_flops, dense.encoder_flops)  # fmt: skip
    L, H, inter = st.num_layers, st.num_heads, st.intermediate_size
    fixed = dense.encoder_params - L * (H * head_params(D, dh, u) + inter * neuron_params(D, u))
    # Per dimension of the residual stream, a layer's fixed part (LayerNorms, biases); the original first
    # layer may lack a module (ModernBERT's attn_norm): exact with every layer kept, an upper bound else.
    lv = v.layers[0]
    gap = first_layer_gap_per_dim(v)
    per_dim = layer_hidden_params_per_dim(lv) + (gap if lv.orig == 0 else 0)
    if n_layers == L:
        fixed_total = fixed - (D - d) * (L * per_dim - gap)
    else:
        fixed_total = n_layers * ((fixed + gap * D) / L - (D - d) * per_dim)
    return Prices(kind, fixed_total, head_params(d, dh, u), neuron_params(d, u),
                  fraction * dense.encoder_params, dense.encoder_params)  # fmt: skip


def check_allocation(scores, model, *, min_heads, multiple_of) -> None:
    """What ``allocate`` and the search both check: scores that fit the model and hold only finite
    numbers, ``min_heads`` within a layer's heads, ``multiple_of`` within a layer's FFN width."""
    st = view(model).structure
    L, H, inter = st.num_layers, st.num_heads, st.intermediate_size
    if tuple(scores.head.shape) != (L, H) or tuple(scores.ffn.shape) != (L, inter):
        raise ValueError(
            f"Scores of shape head {tuple(scores.head.shape)} / ffn {tuple(scores.ffn.shape)} do not fit this "
            f"model (head ({L}, {H}) / ffn ({L}, {inter})): score this model first."
        )
    parts = [scores.head, scores.ffn, *(t for t in (scores.layer, scores.hidden) if t is not None)]
    if not all(bool(torch.isfinite(t).all()) for t in parts):
        raise ValueError("Scores contain NaN or inf; re-score the model (check the data and the loss).")
    if isinstance(min_heads, bool) or not isinstance(min_heads, int) or not 0 <= min_heads <= H:
        raise ValueError(f"min_heads must be an integer between 0 and {H}, got {min_heads!r}.")
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise ValueError(f"multiple_of must be a positive integer, got {multiple_of!r}.")
    if multiple_of > inter:
        raise ValueError(
            f"multiple_of={multiple_of} is larger than a layer's FFN ({inter} neurons): every layer would keep 0 "
            f"or {multiple_of} neurons. Use a multiple_of of at most {inter} (e.g. 8, 16 or 64)."
        )


def _saving(cost_without, now: float, first: int, step: int, most: int) -> int:
    """How many to remove before the cost drops below ``now``: ``first``, then ``first + m * step`` for
    m = 1, 2, 4, ... (at most ``most``); a piecewise-linear latency table can be flat over a few neurons."""
    k, m = first, 0
    while k < most and cost_without(k) >= now:
        m = 2 * m or 1
        k = min(first + m * step, most)
    return k


def fit_exact(
    head: torch.Tensor,
    ffn: torch.Tensor,
    hs: torch.Tensor,
    fs: torch.Tensor,
    units: Prices,
    *,
    min_heads: int,
    multiple_of: int,
    fill: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trim the mask ``head``/``ffn`` (bool[L, H] / bool[L, I]) until its exact cost (:meth:`Prices.exact`)
    is within the budget, then (``fill``) top it up while it stays within; unchanged when the linear
    prices are exact (no ``layer_cost``).

    Each step takes the move that loses the least (gains the most) score per unit of exact cost: a kept
    layer's lowest (best unkept) ``multiple_of`` neurons, its lowest (best unkept) head above
    ``max(min_heads, 1)`` (more of them where the cost is flat) and, with ``min_heads=0``, the whole layer
    (never the last one). ``hs``/``fs``: the scores the mask was chosen by (``-inf``: not available).
    Dropped layers stay dropped.
    """
    if units.layer_cost is None:
        return head, ffn
    head, ffn = head.clone(), ffn.clone()
    hs, fs = hs.double(), fs.double()
    step = max(multiple_of, 1)
    layer_cost = units.layer_cost

    def cost(h: int, n: int) -> float:
        return layer_cost(h, n) if h or n else 0.0

    def total() -> float:
        return units.exact(head.sum(1).tolist(), ffn.sum(1).tolist())

    limit = units.budget * (1 + 1e-9)
    spent = total()
    while spent > limit:
        kept = int((head.any(1) | ffn.any(1)).sum())
        best = None  # (loss per unit saved, move)
        for i in range(head.shape[0]):
            h, n = int(head[i].sum()), int(ffn[i].sum())
            c = cost(h, n)
            moves = []
            if n:
                k = _saving(lambda k, h=h, n=n: cost(h, n - k), c, n % step or step, step, n)
                vals, idx = fs[i].masked_fill(~ffn[i], math.inf).topk(k, largest=False)
                moves.append((float(vals.sum()), c - cost(h, n - k), ("ffn", i, idx)))
            if h > max(min_heads, 1):
                j = _saving(lambda j, h=h, n=n: cost(h - j, n), c, 1, 1, h - max(min_heads, 1))
                vals, idx = hs[i].masked_fill(~head[i], math.inf).topk(j, largest=False)
                moves.append((float(vals.sum()), c - cost(h - j, n), ("head", i, idx)))
            if min_heads == 0 and kept > 1 and (h or n):
                moves.append((float(hs[i][head[i]].sum() + fs[i][ffn[i]].sum()), c, ("layer", i, None)))
            for loss, saved, move in moves:
                if saved > 0 and (best is None or loss / saved < best[0]):
                    best = (loss / saved, move)
        if best is None:
            raise ValueError(
                f"{units.kind}={units.budget / units.total:.4f} cannot be met: the smallest mask min_heads="
                f"{min_heads} allows costs {units.kind}={spent / units.total:.4f}. Raise the budget or lower "
                "min_heads (0 lets whole layers go)."
            )
        what, i, idx = best[1]
        if what == "layer":
            head[i] = False
            ffn[i] = False
        else:
            (ffn if what == "ffn" else head)[i, idx] = False
        spent = total()
    while fill:
        best = None  # (gain per unit added, gain, move)
        for i in range(head.shape[0]):
            h, n = int(head[i].sum()), int(ffn[i].sum())
            if not h:
                continue
            c = cost(h, n)
            moves = []
            free = fs[i].masked_fill(ffn[i], -math.inf)
            if int(torch.isfinite(free).sum()) >= step:
                vals, idx = free.topk(step)
                moves.append((float(vals.sum()), cost(h, n + step) - c, ("ffn", i, idx)))
            free = hs[i].masked_fill(head[i], -math.inf)
            if bool(torch.isfinite(free).any()):
                val, j = free.max(0)
                moves.append((float(val), cost(h + 1, n) - c, ("head", i, j)))
            for gain, added, move in moves:
                if gain < 0 or spent + added > limit:
                    continue
                ratio = math.inf if added <= 0 else gain / added
                if best is None or (ratio, gain) > best[:2]:
                    best = (ratio, gain, move)
        if best is None:
            break
        what, i, idx = best[2]
        (ffn if what == "ffn" else head)[i, idx] = True
        spent = total()
    return head, ffn
