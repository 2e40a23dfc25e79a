"""Constrained mask search (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers").

:func:`search` finds the head/neuron mask that keeps the most importance under a FLOPs or parameter
budget, pricing a head and a neuron at their real cost (no fixed heads:neurons ratio): for every total
number of heads it could keep, it fills the rest of the budget with the best neurons and keeps the
split with the largest total importance. Scores are compared across layers and across heads/neurons
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
from .budget import Prices, check_allocation, one_budget, prices

logger = logging.getLogger(__name__)


def _prices(model: nn.Module, flops, params, seq_len: int) -> Prices:
    kind, fraction = one_budget(flops, params)
    if seq_len < 1:
        raise ValueError(f"seq_len must be a positive number of tokens, got {seq_len}.")
    return prices(model, kind, fraction, seq_len)


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
    seq_len: int = 128,
    min_heads: int = 1,
    multiple_of: int = 1,
) -> Mask:
    """The mask that keeps the most total importance within a FLOPs or parameter budget.

    ``flops`` / ``params`` is the fraction of the *unpruned* encoder's FLOPs (at ``seq_len`` tokens) or
    parameters to keep; the result never exceeds it and leaves less than one neuron's cost unused
    (``multiple_of`` neurons with rounding; less than one head's cost when every neuron is kept). Every layer keeps at least ``min_heads`` heads; with
    ``min_heads=0`` a layer may lose every head, and then its neurons too (the layer is dropped).

    Example::

        scores = sp.score(model, batches, method="fisher")
        mask = sp.search(scores, model, flops=0.5)
        sp.cost(model, mask=mask).encoder_flops <= 0.5 * sp.dense_cost(model).encoder_flops   # True
    """
    v = view(model)
    st = v.structure
    if st.hidden is not None:
        raise ValueError(
            "search prices heads and neurons at the full hidden size; this model has pruned hidden dimensions. "
            "Search before hidden pruning, or use sp.allocate."
        )
    L, inter = st.num_layers, st.intermediate_size
    check_allocation(scores, model, min_heads=min_heads, multiple_of=multiple_of)
    prices = _prices(model, flops, params, seq_len)
    alive = Mask.full(model)
    hs = scores.head.double().masked_fill(~alive.head, -math.inf)
    fs = scores.ffn.double().masked_fill(~alive.ffn, -math.inf)

    forced = _forced_heads(hs, min_heads)
    n_forced = int(forced.sum())
    smallest = prices.fixed + n_forced * prices.head
    if smallest > prices.budget:
        raise ValueError(
            f"{prices.kind}={prices.budget / prices.total:.4f} is below what min_heads={min_heads} allows: the "
            f"smallest feasible budget is {prices.kind}={math.ceil(smallest / prices.total * 1e4) / 1e4:.4f} "
            f"({n_forced} heads and no FFN neuron). Raise the budget or lower min_heads."
        )
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
    _, head_keep, ffn_keep, spend = best
    if multiple_of > 1:
        ffn_keep = _round_neurons(
            ffn_keep, fs.masked_fill(~head_keep.any(1, keepdim=True), -math.inf), multiple_of, spend, prices,
            prices.budget,
        )  # fmt: skip
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
