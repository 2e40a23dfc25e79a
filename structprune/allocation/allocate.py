"""Allocation: importance scores + a budget -> a :class:`Mask`.

Budgets are fractions of the *unpruned* model's encoder FLOPs (at ``seq_len``), encoder parameters or
predicted latency (a :class:`~structprune.LatencyModel` measured on the target device), or explicit
numbers of heads / FFN neurons to keep. A target shape may fix the depth (``layers=4``: the
best-scored layers survive) and the residual width (``hidden=312``: the best-scored dimensions survive);
the budget is then spent on heads and neurons inside that shape. ``strategy="global"`` ranks heads (and neurons)
across all layers after normalizing scores per layer; ``"uniform"`` keeps the same number in every
layer. Pure and CPU-only: it only reads shapes from the model.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ..arch import view
from ..mask import Mask, Scores
from .budget import Prices, check_allocation, check_fraction, fit_exact, prices

logger = logging.getLogger(__name__)


def _normalize(s: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Divide each layer's scores by their L2 norm over alive structures; dead ones become -inf."""
    s = s.double().clone()
    s[~alive] = 0
    norm = s.norm(dim=1, keepdim=True)
    s = torch.where(norm > 0, s / norm.clamp_min(1e-300), s)
    s[~alive] = -math.inf
    return s


def _count(name: str, value, total: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: give a count (int) or a fraction kept (float in (0, 1]).")
    if isinstance(value, float):
        return round(check_fraction(name, value) * total)
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
    keep: torch.Tensor, s: torch.Tensor, units: Prices, heads: int, budget: float, step: int
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


def _layer_scores(scores: Scores, alive_layers: torch.Tensor) -> torch.Tensor:
    """``scores.layer``, or (without it) each layer's summed head and neuron scores."""
    if scores.layer is not None:
        return scores.layer.double()
    logger.info("no layer scores (structprune.score_layers): ranking layers by summed head and neuron scores")
    return scores.head.double().sum(1) + scores.ffn.double().sum(1)


def _choose_layers(scores: Scores, alive: Mask, layers) -> torch.Tensor:
    """bool[L]: the ``layers`` best-scored layers among those the model still has."""
    alive_layers = alive.head.any(1) | alive.ffn.any(1)
    n_alive = int(alive_layers.sum())
    if isinstance(layers, bool) or not isinstance(layers, int | float):
        raise ValueError(
            f"layers={layers!r}: give a number of layers to keep (int) or a fraction kept (float)."
        )
    n = round(check_fraction("layers", layers) * alive.num_layers) if isinstance(layers, float) else layers
    if not 1 <= n <= n_alive:
        raise ValueError(
            f"layers={layers!r}: the model has {n_alive} layers; keep between 1 and {n_alive} of them."
        )
    s = _layer_scores(scores, alive_layers).masked_fill(~alive_layers, -math.inf)
    keep = torch.zeros_like(alive_layers)
    keep[s.topk(n).indices] = True
    return keep


def _choose_hidden(scores: Scores, alive: Mask, hidden, size: int, now: list[int]) -> torch.Tensor:
    """bool[D]: the ``hidden`` best-scored residual-stream dimensions among those the model still has."""
    if scores.hidden is None:
        raise ValueError(
            "allocate(hidden=...) needs hidden-dimension scores: set scores.hidden = "
            "structprune.score_hidden(model, batches) (or use structprune.score_shape)."
        )
    if scores.hidden.numel() != size:
        raise ValueError(
            f"scores.hidden has {scores.hidden.numel()} entries; the model's hidden size is {size}."
        )
    if isinstance(hidden, bool) or not isinstance(hidden, int | float):
        raise ValueError(f"hidden={hidden!r}: give a hidden size (int) or a fraction of it kept (float).")
    n = round(check_fraction("hidden", hidden) * size) if isinstance(hidden, float) else hidden
    if not 1 <= n <= len(now):
        raise ValueError(
            f"hidden={hidden!r}: the model's residual stream has {len(now)} dimensions; keep between 1 and "
            f"{len(now)}. (The head size is kept, so any hidden size works with any number of heads.)"
        )
    alive_d = alive.hidden_or_full(size)
    s = scores.hidden.double().masked_fill(~alive_d, -math.inf)
    keep = torch.zeros(size, dtype=torch.bool)
    keep[s.topk(n).indices] = True
    return keep


def allocate(
    scores: Scores,
    model: nn.Module,
    *,
    flops: float | None = None,
    params: float | None = None,
    latency: float | None = None,
    latency_model=None,
    heads: int | float | None = None,
    ffn: int | float | None = None,
    layers: int | float | None = None,
    hidden: int | float | None = None,
    seq_len: int = 128,
    strategy: str = "global",
    normalize: bool = True,
    multiple_of: int = 1,
    min_heads: int = 1,
) -> Mask:
    """Choose what to keep under a budget.

    Give at most one of ``flops`` / ``params`` / ``latency`` (fraction of the unpruned model's encoder FLOPs
    at ``seq_len`` / encoder parameters / predicted latency), or ``heads`` and/or ``ffn`` (a total count, or
    a float fraction). Heads and neurons share the budget in proportion to their cost in the dense model.
    ``latency_model``: a :class:`~structprune.LatencyModel` of this model (or the path of a saved one);
    ``None`` uses the cached one for batch 32 x ``seq_len`` on the model's device, measuring it there
    the first time. The mask is then trimmed (and topped up) until its predicted latency is within the
    budget and close to it. Every
    kept layer keeps at least ``min_heads`` heads; with ``min_heads=0`` a layer left with no head is
    dropped whole and its neurons go to the other layers. FFN widths are rounded to ``multiple_of``.

    The shape: ``layers`` keeps that many layers (int, or a float fraction of the original depth), the
    best by ``scores.layer`` (:func:`structprune.score_layers`; without it, by summed head and neuron
    scores); ``hidden`` keeps that many residual-stream dimensions (int, or a fraction of the original
    hidden size) by ``scores.hidden`` (:func:`structprune.score_hidden`). The head size is kept, so any
    hidden size is valid. The budget (if any) is then spent on heads and neurons of the kept layers at
    the kept width; with only a shape, every head and neuron of the kept layers stays.

    Example::

        mask = sp.allocate(scores, model, flops=0.5, multiple_of=8)
        mask = sp.allocate(scores, model, layers=4, hidden=192, flops=0.1)   # a TinyBERT-sized student
        mask = sp.allocate(scores, model, latency=0.5, latency_model=sp.LatencyModel.cached(model))
        mask.summary()["heads_per_layer"]
    """
    v = view(model)
    st = v.structure
    L, H, intermediate = st.num_layers, st.num_heads, st.intermediate_size
    if strategy not in ("global", "uniform"):
        raise ValueError(f"strategy must be 'global' or 'uniform', got {strategy!r}.")
    check_allocation(scores, model, min_heads=min_heads, multiple_of=multiple_of)
    fraction_budgets = [b for b in (flops, params, latency) if b is not None]
    n_budgets = len(fraction_budgets) + (heads is not None or ffn is not None)
    shaped = layers is not None or hidden is not None
    if n_budgets > 1 or (n_budgets == 0 and not shaped):
        raise ValueError(
            "Give one budget: flops=..., params=..., latency=..., or heads=... and/or ffn=... (optionally with a shape: "
            "layers=..., hidden=...)."
        )

    alive = Mask.full(model)
    hidden_keep = None
    d_kept = st.hidden_width
    if hidden is not None:
        hidden_keep = _choose_hidden(scores, alive, hidden, st.hidden_size, st.hidden_dims)
        d_kept = int(hidden_keep.sum())
    n_layers = len(st.layers)
    if layers is not None:
        layer_keep = _choose_layers(scores, alive, layers)
        alive = Mask(alive.head & layer_keep[:, None], alive.ffn & layer_keep[:, None], alive.hidden)
        n_layers = int(layer_keep.sum())
    if n_budgets == 0:  # only a shape: keep every head and neuron of the kept layers
        return Mask(alive.head, alive.ffn, hidden_keep)
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
    min_keep = min_heads * n_layers

    if heads is not None or ffn is not None:
        n_heads = n_alive_h if heads is None else _count("heads", heads, L * H)
        n_ffn = n_alive_f if ffn is None else _count("ffn", ffn, L * intermediate)
        budget, units = math.inf, Prices("count", 0, 0, 0, math.inf, 1)
    else:
        d = d_kept
        kind, value = next(
            (k, b) for k, b in (("flops", flops), ("params", params), ("latency", latency)) if b is not None
        )
        fraction = check_fraction(kind, value)
        lm = None
        if kind == "latency":
            from .latency_model import resolve_latency_model

            lm = resolve_latency_model(model, latency_model, seq_len=seq_len)
        units = prices(model, kind, fraction, seq_len, width=d, layers=n_layers, latency_model=lm)
        budget = units.budget
        smallest = units.of(min_keep, 0)
        if smallest > budget:
            dense_total = units.total
            raise ValueError(
                f"{kind}={fraction} is below what min_heads={min_heads} allows in {n_layers} layers at hidden "
                f"size {d}: the smallest feasible budget is {kind}={smallest / dense_total:.4f}. Raise the "
                "budget, or lower min_heads, layers or hidden."
                + (
                    " (structprune.search(..., min_heads=0) drops whole layers to meet a latency budget.)"
                    if kind == "latency"
                    else ""
                )  # fmt: skip
            )
        # Heads and neurons keep the same share of their cost in the model's current shape (the whole dense
        # cost for an unpruned model); neurons then fill what is left.
        shape_share = units.of(n_alive_h, n_alive_f) / units.total
        head_fraction = min(fraction / shape_share, 1.0) if shape_share > 0 else 1.0
        n_heads = max(min(round(head_fraction * n_alive_h), n_alive_h), min_keep)
        if strategy == "uniform":  # the same number of heads in every layer
            per = n_layers
            n_heads = max(round(n_heads / per), min_heads) * per
        step = n_layers if strategy == "uniform" else 1
        while n_heads - step >= min_keep and units.of(n_heads, 0) > budget:
            n_heads -= step
        n_ffn = min(int((budget - units.of(n_heads, 0)) // units.neuron), n_alive_f)

    if n_heads < min_keep:
        raise ValueError(
            f"heads={n_heads} is fewer than min_heads={min_heads} x {len(st.layers)} layers = {min_keep}."
        )
    if strategy == "uniform":
        per = n_layers
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
    if units.layer_cost is not None:  # latency: trim / top up against the exact prediction
        head_keep, ffn_keep = fit_exact(head_keep, ffn_keep, hs, fs, units, min_heads=min_heads,
                                        multiple_of=multiple_of, fill=strategy == "global")  # fmt: skip
    elif math.isfinite(budget):
        ffn_keep = _shrink_to_budget(ffn_keep, fs, units, int(head_keep.sum()), budget, multiple_of)
    return Mask(head_keep, ffn_keep, hidden_keep)
