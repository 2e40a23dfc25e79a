"""Allocation: importance scores + a budget -> a :class:`Mask`.

Budgets are fractions of the *unpruned* model's encoder FLOPs (at ``seq_len``) or encoder parameters,
or explicit numbers of heads / FFN neurons to keep. ``strategy="global"`` ranks heads (and neurons)
across all layers after normalizing scores per layer; ``"uniform"`` keeps the same number in every
layer. Pure and CPU-only: it only reads shapes from the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .arch import view
from .cost import dense_cost, head_flops, head_params, neuron_flops, neuron_params
from .mask import Mask, Scores


@dataclass(frozen=True)
class _Units:
    """Cost of keeping structure: ``fixed + heads * head + neurons * neuron``."""

    fixed: float
    head: float
    neuron: float

    def of(self, heads: int, neurons: int) -> float:
        return self.fixed + heads * self.head + neurons * self.neuron


def _normalize(s: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Divide each layer's scores by their L2 norm over alive structures; dead ones become -inf."""
    s = s.double().clone()
    s[~alive] = 0
    norm = s.norm(dim=1, keepdim=True)
    s = torch.where(norm > 0, s / norm.clamp_min(1e-300), s)
    s[~alive] = -math.inf
    return s


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value <= 1):
        raise ValueError(f"{name}={value!r}: a budget is the fraction kept, a number in (0, 1].")
    return float(value)


def _count(name: str, value, total: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: give a count (int) or a fraction kept (float in (0, 1]).")
    if isinstance(value, float):
        return round(_check_fraction(name, value) * total)
    if isinstance(value, int) and 0 <= value <= total:
        return value
    raise ValueError(f"{name}={value!r}: give a count between 0 and {total} or a fraction kept in (0, 1].")


def _top_per_layer(s: torch.Tensor, n: int) -> torch.Tensor:
    keep = torch.zeros_like(s, dtype=torch.bool)
    if n > 0:
        idx = s.topk(min(n, s.shape[1]), dim=1).indices
        keep.scatter_(1, idx, True)
    return keep & torch.isfinite(s)


def _top_global(s: torch.Tensor, n: int, base: torch.Tensor) -> torch.Tensor:
    """``base`` plus the ``n - base.sum()`` best remaining entries of ``s`` (all layers together)."""
    keep = base.clone()
    extra = n - int(keep.sum())
    if extra > 0:
        rest = s.masked_fill(keep, -math.inf).flatten()
        extra = min(extra, int(torch.isfinite(rest).sum()))
        keep.view(-1)[rest.topk(extra).indices] = True
    return keep


def _round_widths(keep: torch.Tensor, s: torch.Tensor, multiple_of: int) -> torch.Tensor:
    """Round each layer's kept-neuron count to the nearest multiple of ``multiple_of`` (best first)."""
    if multiple_of <= 1:
        return keep
    counts = keep.sum(1).tolist()
    alive = torch.isfinite(s).sum(1).tolist()
    out = torch.zeros_like(keep)
    for layer, (c, a) in enumerate(zip(counts, alive, strict=True)):
        n = min(int(multiple_of * round(c / multiple_of)), a)
        if n:
            out[layer, s[layer].topk(n).indices] = True
    return out


def _shrink_to_budget(
    keep: torch.Tensor, s: torch.Tensor, units: _Units, heads: int, budget: float, step: int
):
    """Remove groups of ``step`` neurons (lowest boundary score first) until the budget holds."""
    while units.of(heads, int(keep.sum())) > budget * (1 + 1e-9) and keep.any():
        counts = keep.sum(1)
        masked = s.masked_fill(~keep, math.inf)
        worst = masked.min(1).values.masked_fill(counts == 0, math.inf)
        layer = int(worst.argmin())
        n = max(int(counts[layer]) - step, 0)
        row = torch.zeros_like(keep[layer])
        if n:
            row[s[layer].masked_fill(~keep[layer], -math.inf).topk(n).indices] = True
        keep[layer] = row
    return keep


def allocate(
    scores: Scores,
    model: nn.Module,
    *,
    flops: float | None = None,
    params: float | None = None,
    heads: int | float | None = None,
    ffn: int | float | None = None,
    seq_len: int = 128,
    strategy: str = "global",
    normalize: bool = True,
    multiple_of: int = 1,
    min_heads: int = 1,
) -> Mask:
    """Choose what to keep under a budget.

    Give exactly one of ``flops`` / ``params`` (fraction of the unpruned model's encoder FLOPs at
    ``seq_len`` / encoder parameters), or ``heads`` and/or ``ffn`` (a total count, or a float fraction).
    Heads and neurons share a FLOPs/params budget in proportion to their cost in the dense model. Every
    kept layer keeps at least ``min_heads`` heads; with ``min_heads=0`` a layer left with no head is
    dropped whole and its neurons go to the other layers. FFN widths are rounded to ``multiple_of``.

    Example::

        mask = sp.allocate(scores, model, flops=0.5, multiple_of=8)
        mask.summary()["heads_per_layer"]
    """
    v = view(model)
    st = v.structure
    L, H, intermediate = st.num_layers, st.num_heads, st.intermediate_size
    if tuple(scores.head.shape) != (L, H) or tuple(scores.ffn.shape) != (L, intermediate):
        raise ValueError(
            f"Scores of shape head {tuple(scores.head.shape)} / ffn {tuple(scores.ffn.shape)} do not fit this "
            f"model (head ({L}, {H}) / ffn ({L}, {intermediate})): score this model first."
        )
    if strategy not in ("global", "uniform"):
        raise ValueError(f"strategy must be 'global' or 'uniform', got {strategy!r}.")
    if not isinstance(multiple_of, int) or multiple_of < 1:
        raise ValueError(f"multiple_of must be a positive integer, got {multiple_of!r}.")
    if not isinstance(min_heads, int) or not 0 <= min_heads <= H:
        raise ValueError(f"min_heads must be an integer between 0 and {H}, got {min_heads!r}.")
    fraction_budgets = [b for b in (flops, params) if b is not None]
    if len(fraction_budgets) + (heads is not None or ffn is not None) != 1:
        raise ValueError("Give exactly one budget: flops=..., params=..., or heads=... and/or ffn=....")

    alive = Mask.full(model)
    hs = (
        _normalize(scores.head, alive.head)
        if normalize
        else scores.head.double().masked_fill(~alive.head, -math.inf)
    )
    fs = (
        _normalize(scores.ffn, alive.ffn)
        if normalize
        else scores.ffn.double().masked_fill(~alive.ffn, -math.inf)
    )
    n_alive_h, n_alive_f = int(alive.head.sum()), int(alive.ffn.sum())
    min_keep = min_heads * len(st.layers)

    if heads is not None or ffn is not None:
        n_heads = n_alive_h if heads is None else _count("heads", heads, L * H)
        n_ffn = n_alive_f if ffn is None else _count("ffn", ffn, L * intermediate)
        budget, units = math.inf, _Units(0, 0, 0)
    else:
        d, dh = st.hidden_size, st.head_size
        dense = dense_cost(model, seq_len)
        if flops is not None:
            fraction = _check_fraction("flops", flops)
            units = _Units(0, head_flops(d, dh, seq_len), neuron_flops(d, seq_len))
            budget = fraction * dense.encoder_flops
        else:
            fraction = _check_fraction("params", params)
            fixed = dense.encoder_params - L * (H * head_params(d, dh) + intermediate * neuron_params(d))
            units = _Units(fixed * len(st.layers) / L, head_params(d, dh), neuron_params(d))
            budget = fraction * dense.encoder_params
        smallest = units.of(min_keep, 0)
        if smallest > budget:
            kind = "flops" if flops is not None else "params"
            dense_total = dense.encoder_flops if flops is not None else dense.encoder_params
            raise ValueError(
                f"{kind}={fraction} is below what min_heads={min_heads} allows: the smallest feasible budget "
                f"is {kind}={smallest / dense_total:.4f}. Raise the budget or lower min_heads."
            )
        # Heads and neurons keep the same share of their dense cost; neurons then fill what is left.
        n_heads = max(min(round(fraction * n_alive_h), n_alive_h), min_keep)
        if strategy == "uniform":  # the same number of heads in every layer
            per = len(st.layers)
            n_heads = max(round(n_heads / per), min_heads) * per
        step = len(st.layers) if strategy == "uniform" else 1
        while n_heads - step >= min_keep and units.of(n_heads, 0) > budget:
            n_heads -= step
        n_ffn = min(int((budget - units.of(n_heads, 0)) // units.neuron), n_alive_f)

    if n_heads < min_keep:
        raise ValueError(
            f"heads={n_heads} is fewer than min_heads={min_heads} x {len(st.layers)} layers = {min_keep}."
        )
    if strategy == "uniform":
        per = len(st.layers)
        head_keep = _top_per_layer(hs, max(n_heads // per, min_heads))
        ffn_keep = _top_per_layer(fs, n_ffn // per)
    else:
        head_keep = _top_global(hs, n_heads, _top_per_layer(hs, min_heads))
        ffn_keep = _top_global(fs, n_ffn, torch.zeros_like(alive.ffn))

    empty = ~head_keep.any(1)
    if empty.any():  # only reachable with min_heads=0: drop those layers whole
        fs_rest = fs.masked_fill(empty[:, None], -math.inf)
        ffn_keep = _top_global(
            fs_rest, min(n_ffn, int(torch.isfinite(fs_rest).sum())), torch.zeros_like(ffn_keep)
        )
        fs = fs_rest
    ffn_keep = _round_widths(ffn_keep, fs, multiple_of)
    if math.isfinite(budget):
        ffn_keep = _shrink_to_budget(ffn_keep, fs, units, int(head_keep.sum()), budget, multiple_of)
    return Mask(head_keep, ffn_keep)
