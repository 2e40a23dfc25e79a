"""Constrained mask search (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers").

:func:`search` finds the head/neuron mask that keeps the most importance under a FLOPs, parameter or
latency budget, pricing a head and a neuron at their real cost (no fixed heads:neurons ratio): for every
total number of heads it could keep, it fills the rest of the budget with the best neurons and keeps the
split with the largest total importance. Under a latency budget (Kwon et al.'s latency-aware search) the
prices are the linear fit of a :class:`~structprune.LatencyModel`, the mask is then trimmed and topped
up against its exact piecewise-linear prediction, and with ``min_heads=0`` every depth is tried (the
best-scored layers kept), since a dropped layer also saves what a kept layer always costs. Scores are compared across layers and across heads/neurons
as they are, so use a scorer whose values share one unit - Fisher (an estimate of the loss increase
of removing a structure) is the default of :func:`structprune.compress`.

:func:`rearrange` then refines the mask inside each layer (same counts) with the interactions between
structures: with per-example gate gradients ``g_e``, removing the set ``P`` costs about
``sum_e (sum_{i in P} g_e,i)^2`` (the Fisher block of the layer), which a diagonal score cannot see.
:func:`gate_gradients` collects those gradients (and the Fisher diagonal) in one backward pass per batch.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from ..arch import view
from ..mask import Mask, Scores
from ..scoring.gradients import GateGradients
from .budget import Prices, check_allocation, fit_exact, one_budget
from .budget import prices as prices_of

logger = logging.getLogger(__name__)


def _smallest(prices: Prices, forced: torch.Tensor, min_heads: int) -> float:
    """The least a mask may cost: every layer's forced heads and no neuron (latency with ``min_heads=0``:
    one layer with one head)."""
    if prices.layer_cost is None:
        return prices.fixed + int(forced.sum()) * prices.head
    if min_heads == 0:
        return prices.outside + prices.layer_cost(1, 0)
    return prices.exact(forced.sum(1).tolist(), [0] * forced.shape[0])


def _depths(scores: Scores, hs: torch.Tensor, fs: torch.Tensor, alive: torch.Tensor) -> list[torch.Tensor]:
    """bool[L] sets of layers to search within: all alive layers, then the best-scored ``k`` of them for
    every smaller ``k`` (``scores.layer``, else each layer's summed head and neuron scores)."""
    if scores.layer is not None:
        s = scores.layer.double().clone()
    else:
        s = hs.clamp_min(0).nan_to_num(neginf=0).sum(1) + fs.clamp_min(0).nan_to_num(neginf=0).sum(1)
    order = s.masked_fill(~alive, -math.inf).argsort(descending=True)[: int(alive.sum())]
    out = []
    for k in range(len(order), 0, -1):
        keep = torch.zeros_like(alive)
        keep[order[:k]] = True
        out.append(keep)
    return out


def _split(hs: torch.Tensor, fs: torch.Tensor, forced: torch.Tensor, prices: Prices):
    """Kwon et al.'s search under linear prices: for every number of heads (best first, after the
    ``forced`` ones) the best neurons that fit; the split of largest total score, as ``(value, head_keep,
    ffn_keep, spend)``, or ``None`` when not even the forced heads fit."""
    L, inter = fs.shape
    n_forced = int(forced.sum())
    rest = hs.masked_fill(forced, -math.inf).flatten()
    n_rest = int(torch.isfinite(rest).sum())
    order = rest.topk(n_rest).indices if n_rest else torch.zeros(0, dtype=torch.long)
    best = None
    for extra in range(n_rest + 1):
        n_heads = n_forced + extra
        spend = prices.fixed + n_heads * prices.head
        if spend > prices.budget:
            break
        head_keep = forced.clone()
        head_keep.view(-1)[order[:extra]] = True
        pool = fs.masked_fill(~head_keep.any(1, keepdim=True), -math.inf).flatten()  # headless layers drop
        n_neurons = min(int((prices.budget - spend) // prices.neuron), int(torch.isfinite(pool).sum()))
        top = pool.topk(n_neurons).indices if n_neurons else torch.zeros(0, dtype=torch.long)
        value = float(hs[head_keep].sum()) + float(pool[top].sum())
        if best is None or value > best[0]:
            ffn_keep = torch.zeros(L * inter, dtype=torch.bool)
            ffn_keep[top] = True
            best = (value, head_keep, ffn_keep.view(L, inter), spend)
    return best


def _forced_heads(hs: torch.Tensor, min_heads: int) -> torch.Tensor:
    """The ``min_heads`` best alive heads of every layer that still has heads."""
    forced = torch.zeros_like(hs, dtype=torch.bool)
    if min_heads:
        for layer in range(hs.shape[0]):
            alive = torch.isfinite(hs[layer])
            n = min(min_heads, int(alive.sum()))
            if n:
                forced[layer, hs[layer].topk(n).indices] = True
    return forced


def _round_neurons(keep, fs, multiple_of, spend, prices, budget):
    """Round every layer's neuron count down to ``multiple_of``, then add whole groups back (best
    group first) while the budget allows."""
    out = torch.zeros_like(keep)
    counts = keep.sum(1).tolist()
    for layer, c in enumerate(counts):
        n = (c // multiple_of) * multiple_of
        if n:
            out[layer, fs[layer].topk(n).indices] = True
    spent = spend + int(out.sum()) * prices.neuron
    while spent + multiple_of * prices.neuron <= budget:
        best, best_val = None, -math.inf
        for layer in range(fs.shape[0]):
            rest = fs[layer].masked_fill(out[layer], -math.inf)
            if int(torch.isfinite(rest).sum()) < multiple_of:
                continue
            val = float(rest.topk(multiple_of).values.sum())
            if val > best_val:
                best, best_val = layer, val
        if best is None:
            break
        rest = fs[best].masked_fill(out[best], -math.inf)
        out[best, rest.topk(multiple_of).indices] = True
        spent += multiple_of * prices.neuron
    return out


def search(
    scores: Scores,
    model: nn.Module,
    *,
    flops: float | None = None,
    params: float | None = None,
    latency: float | None = None,
    latency_model=None,
    seq_len: int = 128,
    min_heads: int = 1,
    multiple_of: int = 1,
) -> Mask:
    """The mask that keeps the most total importance within a FLOPs, parameter or latency budget.

    ``flops`` / ``params`` is the fraction of the *unpruned* encoder's FLOPs (at ``seq_len`` tokens) or
    parameters to keep; the result never exceeds it and leaves less than one neuron's cost unused
    (``multiple_of`` neurons with rounding; less than one head's cost when every neuron is kept). Every layer keeps at least ``min_heads`` heads; with
    ``min_heads=0`` a layer may lose every head, and then its neurons too (the layer is dropped).

    ``latency`` is the fraction of the unpruned model's latency predicted by ``latency_model`` (a
    :class:`~structprune.LatencyModel` of this model or the path of a saved one; ``None``: the cached one
    for batch 32 x ``seq_len`` on the model's device, measured there the first time). The predicted
    latency of the result never exceeds it, and no kept layer could take one more head or ``multiple_of``
    neurons within it.

    Example::

        scores = sp.score(model, batches, method="fisher")
        mask = sp.search(scores, model, flops=0.5)
        sp.cost(model, mask=mask).encoder_flops <= 0.5 * sp.dense_cost(model).encoder_flops   # True
        lm = sp.LatencyModel.cached(model, batch_size=1)
        lm.fraction(sp.search(scores, model, latency=0.5, latency_model=lm)) <= 0.5               # True
    """
    v = view(model)
    st = v.structure
    if st.hidden is not None:
        raise ValueError(
            "search prices heads and neurons at the full hidden size; this model has pruned hidden dimensions. "
            "Search before hidden pruning, or use sp.allocate."
        )
    check_allocation(scores, model, min_heads=min_heads, multiple_of=multiple_of)
    kind, fraction = one_budget(flops, params, latency)
    if seq_len < 1:
        raise ValueError(f"seq_len must be a positive number of tokens, got {seq_len}.")
    lm = None
    if kind == "latency":
        from .latency_model import resolve_latency_model

        lm = resolve_latency_model(model, latency_model, seq_len=seq_len)
    prices = prices_of(model, kind, fraction, seq_len, latency_model=lm)
    alive = Mask.full(model)
    hs = scores.head.double().masked_fill(~alive.head, -math.inf)
    fs = scores.ffn.double().masked_fill(~alive.ffn, -math.inf)

    forced = _forced_heads(hs, min_heads)
    n_forced = int(forced.sum())
    smallest = _smallest(prices, forced, min_heads)
    if smallest > prices.budget:
        raise ValueError(
            f"{prices.kind}={prices.budget / prices.total:.4f} is below what min_heads={min_heads} allows: the "
            f"smallest feasible budget is {prices.kind}={math.ceil(smallest / prices.total * 1e4) / 1e4:.4f} "
            f"({'one layer with one head' if kind == 'latency' and not min_heads else f'{n_forced} heads'} and "
            "no FFN neuron). Raise the budget or lower min_heads"
            + (
                " (min_heads=0 lets the search drop whole layers)."
                if kind == "latency" and min_heads
                else "."
            )
        )
    alive_layers = alive.head.any(1) | alive.ffn.any(1)
    n_alive = int(alive_layers.sum())
    # a latency model charges every kept layer a fixed part: with min_heads=0, try every depth
    depths = _depths(scores, hs, fs, alive_layers) if lm is not None and min_heads == 0 else [alive_layers]
    best = None
    for keep in depths:
        k = int(keep.sum())
        p = prices if k == n_alive else prices_of(model, kind, fraction, seq_len, layers=k, latency_model=lm)
        hs_k = hs.masked_fill(~keep[:, None], -math.inf)
        fs_k = fs.masked_fill(~keep[:, None], -math.inf)
        found = _split(hs_k, fs_k, forced & keep[:, None], p)
        if found is None:
            continue
        _, head_keep, ffn_keep, spend = found
        fs_k = fs_k.masked_fill(~head_keep.any(1, keepdim=True), -math.inf)
        if multiple_of > 1:
            ffn_keep = _round_neurons(ffn_keep, fs_k, multiple_of, spend, p, p.budget)
        if p.layer_cost is not None:
            head_keep, ffn_keep = fit_exact(head_keep, ffn_keep, hs_k, fs_k, p, min_heads=min_heads,
                                            multiple_of=multiple_of)  # fmt: skip
        value = float(hs[head_keep].sum() + fs[ffn_keep].sum())
        if best is None or value > best[0]:
            best = (value, head_keep, ffn_keep)
    if best is None:
        raise ValueError(
            f"{kind}={fraction} leaves no room once every layer's share is paid; raise the budget or lower "
            "min_heads."
        )
    _, head_keep, ffn_keep = best
    mask = Mask(head_keep, ffn_keep)
    logger.info(
        "search: %d heads, %d neurons kept (%s budget %.3f)",
        int(head_keep.sum()),
        int(ffn_keep.sum()),
        prices.kind,
        prices.budget / prices.total,
    )
    return mask


def retained(scores: Scores, mask: Mask) -> float:
    """Total importance a mask keeps: ``sum(scores.head[mask.head]) + sum(scores.ffn[mask.ffn])``."""
    return float(scores.head.double()[mask.head].sum() + scores.ffn.double()[mask.ffn].sum())


def _greedy_rearrange(keep: torch.Tensor, fisher_block: torch.Tensor) -> torch.Tensor:
    """Same number kept, chosen to minimise ``1_P^T F 1_P`` over the pruned set ``P`` (Kwon et al.'s
    greedy: start from the lowest-diagonal set; offer each next candidate and drop from ``P`` the member
    whose removal leaves the smallest interaction sum)."""
    n = keep.numel()
    n_pruned = n - int(keep.sum())
    if n_pruned == 0 or n_pruned == n:
        return keep
    diag = fisher_block.diagonal()
    order = diag.argsort().tolist()
    in_p = torch.zeros(n, dtype=torch.bool)
    in_p[order[:n_pruned]] = True
    u = fisher_block[:, in_p].sum(1)  # u_j = s . g_j with s the summed gradient of P
    for cand in order[n_pruned:]:
        in_p[cand] = True
        u += fisher_block[:, cand]
        total = u[in_p].sum()
        # removing j from P leaves ||s - g_j||^2 = ||s||^2 - 2 s.g_j + F_jj
        left = (total - 2 * u + diag).masked_fill(~in_p, math.inf)
        drop = int(left.argmin())
        in_p[drop] = False
        u -= fisher_block[:, drop]
    return ~in_p


def rearrange(mask: Mask, grads: GateGradients, *, heads: bool = True, neurons: bool = True) -> Mask:
    """Refine ``mask`` within each layer (same counts per layer) using the Fisher block of the layer.

    ``grads`` come from :func:`gate_gradients` on the same model. Structures the model no longer has
    stay pruned; layers the mask drops stay dropped.

    Example::

        grads = sp.gate_gradients(model, batches)
        mask = sp.rearrange(sp.search(grads.fisher(), model, flops=0.5), grads)
    """
    if not isinstance(grads, GateGradients):
        raise TypeError(f"rearrange needs GateGradients (from gate_gradients), got {type(grads).__name__}.")
    if grads.head.shape[1:] != mask.head.shape or grads.ffn.shape[1:] != mask.ffn.shape:
        raise ValueError(
            f"Gradients for head {tuple(grads.head.shape[1:])} / ffn {tuple(grads.ffn.shape[1:])} do not fit "
            f"the mask's head {tuple(mask.head.shape)} / ffn {tuple(mask.ffn.shape)}."
        )
    head, ffn = mask.head.clone(), mask.ffn.clone()
    for layer in range(mask.num_layers):
        for on, keep, g in ((heads, head, grads.head), (neurons, ffn, grads.ffn)):
            if not on or not keep[layer].any():
                continue
            alive = (g[:, layer] != 0).any(0) | keep[layer]  # structures the model still has
            idx = alive.nonzero().flatten()
            gl = g[:, layer, idx].double()  # [N, n]
            block = gl.T @ gl  # [n, n] Fisher block of the layer
            new = _greedy_rearrange(keep[layer, idx], block)
            keep[layer, idx] = new
    return Mask(head, ffn)
