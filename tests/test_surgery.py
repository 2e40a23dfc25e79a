"""Conformance suite: one body over every family x scorer on tiny random models."""

import copy

import pytest
import tiny
import torch

import structprune as sp

SCORERS = ["magnitude", "taylor", "fisher", "activation", "random"]


def _scores(m, method):
    return sp.score(m, tiny.batches(), method=method, progress=False)


def _irregular_mask(m, seed=0):
    """A non-uniform mask: different heads/neurons per layer, one layer dropped whole."""
    g = torch.Generator().manual_seed(seed)
    mask = sp.Mask.full(m)
    mask.head &= torch.rand(mask.head.shape, generator=g) > 0.4
    mask.head[:, 0] = True
    mask.ffn &= torch.rand(mask.ffn.shape, generator=g) > 0.5
    mask.ffn[0, :] = False  # layer 0 keeps no neuron
    mask.head[1, :] = False
    mask.ffn[1, :] = False  # layer 1 is dropped
    return mask


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_all_kept_mask_is_bit_identical(family):
    m = tiny.model(family)
    ref = tiny.outputs(m, tiny.batch())
    n_params = sum(p.numel() for p in m.parameters())
    sp.prune_(m, sp.Mask.full(m))
    assert torch.equal(tiny.outputs(m, tiny.batch()), ref)
    assert sum(p.numel() for p in m.parameters()) == n_params


@pytest.mark.parametrize("family", tiny.FAMILIES)
@pytest.mark.parametrize("method", SCORERS)
def test_pruned_equals_masked_and_cost_is_exact(family, method):
    m = tiny.model(family)
    mask = sp.allocate(_scores(m, method), m, flops=0.5)
    b = tiny.batch(seed=7)
    with sp.gates.Gates.from_mask(mask).attach(m):
        gated = tiny.outputs(m, b)
    predicted = sp.cost(m, seq_len=16, mask=mask)
    before = sum(p.numel() for p in m.parameters())
    sp.prune_(m, mask)
    torch.testing.assert_close(tiny.outputs(m, b), gated, rtol=1e-5, atol=1e-6)
    actual = sum(p.numel() for p in m.parameters())
    assert actual < before
    c = sp.cost(m, seq_len=16)
    assert c.total_params == actual == predicted.total_params
    assert c.encoder_flops == predicted.encoder_flops
    assert [lc.heads for lc in c.layers] == mask.heads_per_layer()
    assert [lc.ffn for lc in c.layers] == mask.ffn_per_layer()
    assert sp.Mask.full(m) == mask


@pytest.mark.parametrize("family", tiny.FAMILIES)
@pytest.mark.parametrize("task", list(tiny.TASKS))
def test_irregular_mask_with_dropped_layer_every_task_head(family, task):
    m = tiny.model(family, task)
    mask = _irregular_mask(m)
    b = tiny.batch(seed=3)
    with sp.gates.Gates.from_mask(mask).attach(m):
        gated = tiny.outputs(m, b)
    sp.prune_(m, mask)
    assert len(sp.arch.view(m).layers) == 2
    assert m.config.structprune["layers"] == [0, 2]
    torch.testing.assert_close(tiny.outputs(m, b), gated, rtol=1e-5, atol=1e-6)
    assert sp.cost(m).total_params == sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_pruning_twice_composes(family):
    m1 = tiny.model(family)
    first = _irregular_mask(m1, seed=1)
    second = first & _irregular_mask(m1, seed=2)
    second.head[:, 0] |= first.head[:, 0]  # keep a head wherever the layer keeps neurons
    second.head &= first.head
    m2 = copy.deepcopy(m1)
    sp.prune_(m1, first)
    sp.prune_(m1, second)
    sp.prune_(m2, second)
    b = tiny.batch(seed=5)
    torch.testing.assert_close(tiny.outputs(m1, b), tiny.outputs(m2, b), rtol=0, atol=0)
    assert m1.config.structprune == m2.config.structprune
    assert sum(p.numel() for p in m1.parameters()) == sum(p.numel() for p in m2.parameters())


def test_config_records_sizes_and_stock_keys():
    m = tiny.model("bert")
    mask = _irregular_mask(m)
    sp.prune_(m, mask)
    rec = m.config.structprune
    assert rec["num_heads"] == 4 and rec["intermediate_size"] == 48 and rec["num_layers"] == 3
    assert [len(h) for h in rec["heads"]] == [mask.heads_per_layer()[i] for i in (0, 2)]
    assert m.config.num_hidden_layers == 2
    assert m.config.intermediate_size == max(len(f) for f in rec["ffn"])
    assert m.config.to_dict()["structprune"] == rec  # serializes with the config


def test_mpnet_shared_bias_is_sliced_per_layer():
    m = tiny.model("mpnet")
    mask = sp.Mask.full(m)
    mask.head[0] = torch.tensor([True, False, True, False])
    mask.head[1] = torch.tensor([False, False, True, True])
    mask.head[2] = torch.tensor([False, False, True, False])
    b = tiny.batch()
    with sp.gates.Gates.from_mask(mask).attach(m):
        gated = tiny.outputs(m, b)
    sp.prune_(m, mask)
    bias = m.base_model.encoder.relative_attention_bias
    assert bias.weight.shape[1] == 3  # union of kept heads {0, 2, 3}
    torch.testing.assert_close(tiny.outputs(m, b), gated, rtol=1e-5, atol=1e-6)


def test_prune_rejects_bad_masks_and_changes_nothing():
    m = tiny.model("bert")
    ref = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match="does not match"):
        sp.prune_(m, sp.Mask(torch.ones(3, 5, dtype=torch.bool), torch.ones(3, 48, dtype=torch.bool)))
    bad = sp.Mask.full(m)
    bad.head[2] = False  # no heads but neurons kept
    with pytest.raises(ValueError, match="every head of layer 2"):
        sp.prune_(m, bad)
    empty = sp.Mask(torch.zeros(3, 4, dtype=torch.bool), torch.zeros(3, 48, dtype=torch.bool))
    with pytest.raises(ValueError, match="every layer"):
        sp.prune_(m, empty)
    with pytest.raises(TypeError):
        sp.prune_(m, {"head": None})
    assert all(torch.equal(ref[k], t) for k, t in m.state_dict().items())
    assert not hasattr(m.config, "structprune")


def test_prune_cannot_restore_removed_structure():
    m = tiny.model("bert")
    mask = sp.Mask.full(m)
    mask.head[0, 1] = False
    sp.prune_(m, mask)
    with pytest.raises(ValueError, match="no longer has"):
        sp.prune_(m, sp.Mask(torch.ones(3, 4, dtype=torch.bool), torch.ones(3, 48, dtype=torch.bool)))


def test_pruned_model_is_trainable():
    m = tiny.model("bert")
    sp.prune_(m, _irregular_mask(m))
    m.train()
    out = m(**tiny.batch())
    out.loss.backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if "layer" in n)
