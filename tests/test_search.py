"""Constrained mask search and Fisher rearrangement (structprune.search) on tiny models."""

from __future__ import annotations

import math
import re

import pytest
import tiny
import torch

import structprune as sp
from structprune.allocation.cost import head_flops, neuron_flops
from structprune.allocation.search import rearrange, retained, search
from structprune.scoring.gradients import gate_gradients


def _random_scores(model, seed):
    g = torch.Generator().manual_seed(seed)
    full = sp.Mask.full(model)
    # heavy-tailed, like real Fisher scores
    head = torch.rand(full.head.shape, generator=g).pow(4) * full.head
    ffn = torch.rand(full.ffn.shape, generator=g).pow(4) * full.ffn
    return sp.Scores(head, ffn, method="fisher")


def _prices(model, seq_len=128):
    st = sp.arch.view(model).structure
    return head_flops(st.hidden_size, st.head_size, seq_len), neuron_flops(st.hidden_size, seq_len)


@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet"])
@pytest.mark.parametrize("budget", [0.3, 0.5, 0.62, 0.9])
def test_search_respects_flops_budget_exactly(family, budget):
    model = tiny.model(family)
    scores = _random_scores(model, seed=int(budget * 100))
    mask = search(scores, model, flops=budget)
    dense = sp.dense_cost(model).encoder_flops
    spent = sp.cost(model, mask=mask).encoder_flops
    hf, nf = _prices(model)
    assert spent <= budget * dense
    all_neurons = int(mask.ffn.sum()) == mask.ffn.numel()
    # the leftover cannot buy one more neuron (or, with every neuron kept, one more head)
    assert budget * dense - spent < (hf if all_neurons else nf)
    assert min(mask.heads_per_layer()) >= 1


def test_search_params_budget_and_multiple_of():
    model = tiny.model("bert")
    scores = _random_scores(model, 3)
    mask = search(scores, model, params=0.6)
    assert sp.cost(model, mask=mask).encoder_params <= 0.6 * sp.dense_cost(model).encoder_params
    mask8 = search(scores, model, flops=0.5, multiple_of=8)
    assert all(n % 8 == 0 for n in mask8.ffn_per_layer())
    assert sp.cost(model, mask=mask8).encoder_flops <= 0.5 * sp.dense_cost(model).encoder_flops


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget", [0.4, 0.6])
def test_search_beats_uniform_ratio_allocation(seed, budget):
    model = tiny.model("bert", num_hidden_layers=4)
    scores = _random_scores(model, seed)
    ours = retained(scores, search(scores, model, flops=budget))
    uniform = retained(scores, sp.allocate(scores, model, flops=budget, strategy="uniform"))
    fixed_ratio = retained(scores, sp.allocate(scores, model, flops=budget, normalize=False))
    assert ours > uniform
    assert ours >= fixed_ratio - 1e-12


def test_search_is_optimal_over_head_counts():
    """Brute force on a tiny model: no (heads, neurons) split within budget keeps more importance."""
    model = tiny.model("bert", num_hidden_layers=2)
    scores = _random_scores(model, 7)
    budget = 0.55
    mask = search(scores, model, flops=budget)
    hf, nf = _prices(model)
    dense = sp.dense_cost(model).encoder_flops
    hs, fs = (
        scores.head.flatten().sort(descending=True).values,
        scores.ffn.flatten().sort(descending=True).values,
    )
    best = 0.0
    for h in range(2, hs.numel() + 1):  # >= 1 head per layer; top-h is feasible here only if it covers both
        n = min(int((budget * dense - h * hf) // nf), fs.numel())
        if n < 0:
            break
        best = max(best, float(hs[:h].sum() + fs[:n].sum()))
    assert retained(scores, mask) >= best - 1e-9 or retained(scores, mask) == pytest.approx(best)


def test_budget_below_min_heads_names_smallest_feasible_budget():
    model = tiny.model("bert")
    scores = _random_scores(model, 0)
    with pytest.raises(ValueError, match="smallest feasible budget is flops=") as err:
        search(scores, model, flops=0.05, min_heads=2)
    smallest = float(re.search(r"flops=([0-9.]+) \(", str(err.value)).group(1))
    mask = search(scores, model, flops=smallest, min_heads=2)  # the suggested budget works
    assert mask.heads_per_layer() == [2, 2, 2]


def test_min_heads_zero_drops_whole_layers():
    model = tiny.model("bert")
    scores = _random_scores(model, 1)
    scores.head[1] = 0  # layer 1's heads are worthless
    mask = search(scores, model, flops=0.3, min_heads=0)
    for layer in range(3):
        if not mask.head[layer].any():
            assert not mask.ffn[layer].any()  # a headless layer is dropped whole (surgery needs that)
    sp.prune_(model, mask)


def test_search_bad_input():
    model = tiny.model("bert")
    scores = _random_scores(model, 0)
    with pytest.raises(ValueError, match="exactly one budget"):
        search(scores, model)
    with pytest.raises(ValueError, match="exactly one budget"):
        search(scores, model, flops=0.5, params=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        search(scores, model, flops=1.5)
    with pytest.raises(ValueError, match="do not fit this model"):
        search(sp.Scores(torch.ones(2, 4), torch.ones(2, 48)), model, flops=0.5)
    bad = _random_scores(model, 0)
    bad.ffn[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        search(bad, model, flops=0.5)


def test_search_on_pruned_model_never_revives_structures():
    model = tiny.model("bert")
    first = search(_random_scores(model, 0), model, flops=0.7)
    sp.prune_(model, first)
    second = search(_random_scores(model, 1), model, flops=0.4)  # budget: fraction of the *unpruned* model
    assert not (second.head & ~first.head).any() and not (second.ffn & ~first.ffn).any()
    second.check_compatible(model)


def test_gate_gradients_match_fisher_scores():
    model = tiny.model("bert")
    batches = tiny.batches(3, batch_size=4)
    grads = gate_gradients(model, batches, progress=False)
    assert grads.head.shape == (12, 3, 4) and grads.ffn.shape == (12, 3, 48)
    ref = sp.score(model, batches, method="fisher", progress=False)
    torch.testing.assert_close(grads.fisher().head, ref.head, rtol=1e-4, atol=1e-10)
    torch.testing.assert_close(grads.fisher().ffn, ref.ffn, rtol=1e-4, atol=1e-10)
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def _block_objective(g: torch.Tensor, keep: torch.Tensor) -> float:
    # sum_e (sum_{i pruned} g_ei)^2
    return float(g.double()[:, ~keep].sum(1).pow(2).sum())


@pytest.mark.parametrize("seed", range(3))
def test_rearrange_keeps_counts_and_lowers_interaction_loss(seed):
    model = tiny.model("bert", seed=seed)
    batches = tiny.batches(4, batch_size=6, seq_len=10)
    grads = gate_gradients(model, batches, progress=False)
    mask = search(grads.fisher(), model, flops=0.45)
    new = rearrange(mask, grads)
    assert new.heads_per_layer() == mask.heads_per_layer()
    assert new.ffn_per_layer() == mask.ffn_per_layer()
    changed = False
    for layer in range(3):
        for g, old_k, new_k in ((grads.head, mask.head, new.head), (grads.ffn, mask.ffn, new.ffn)):
            before = _block_objective(g[:, layer], old_k[layer])
            after = _block_objective(g[:, layer], new_k[layer])
            assert after <= before * (1 + 1e-9)
            changed |= after < before * (1 - 1e-6)
    assert changed  # it does something on real gradients
