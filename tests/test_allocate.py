import copy
import re

import pytest
import tiny
import torch

import structprune as sp


@pytest.fixture
def model_and_scores():
    m = tiny.model("bert", intermediate_size=64, num_attention_heads=8, num_hidden_layers=4)
    return m, sp.score(m, tiny.batches(), method="taylor", progress=False)


@pytest.mark.parametrize("fraction", [0.9, 0.7, 0.5, 0.3, 0.15])
@pytest.mark.parametrize("strategy", ["global", "uniform"])
def test_flops_budget_is_met_closely(model_and_scores, fraction, strategy):
    m, s = model_and_scores
    mask = sp.allocate(s, m, flops=fraction, strategy=strategy)
    dense = sp.dense_cost(m, 128).encoder_flops
    kept = sp.cost(m, 128, mask=mask).encoder_flops / dense
    assert kept <= fraction + 1e-9
    assert kept > fraction - 0.05
    assert min(mask.heads_per_layer()) >= 1
    if strategy == "uniform":
        assert len(set(mask.heads_per_layer())) == 1 and len(set(mask.ffn_per_layer())) == 1


def test_global_ranking_follows_normalized_scores(model_and_scores):
    m, s = model_and_scores
    mask = sp.allocate(s, m, flops=0.5)
    hs = s.head / s.head.norm(dim=1, keepdim=True)
    # every kept head beyond each layer's minimum scores at least as high as every removed head
    kept = hs[mask.head]
    removed = hs[~mask.head]
    best_per_layer = hs.max(1).values
    extra = kept[~torch.isin(kept, best_per_layer)]
    assert extra.min() >= removed.max() - 1e-12
    fs = s.ffn / s.ffn.norm(dim=1, keepdim=True)
    assert fs[mask.ffn].min() >= fs[~mask.ffn].max() - 1e-12


def test_params_budget(model_and_scores):
    m, s = model_and_scores
    mask = sp.allocate(s, m, params=0.6)
    dense = sp.dense_cost(m).encoder_params
    kept = sp.cost(m, mask=mask).encoder_params / dense
    assert 0.55 < kept <= 0.6 + 1e-9


def test_explicit_counts_and_fractions(model_and_scores):
    m, s = model_and_scores
    mask = sp.allocate(s, m, heads=10, ffn=100)
    assert int(mask.head.sum()) == 10 and int(mask.ffn.sum()) == 100
    mask = sp.allocate(s, m, heads=0.5)
    assert int(mask.head.sum()) == 16 and bool(mask.ffn.all())


def test_multiple_of_rounds_ffn_widths(model_and_scores):
    m, s = model_and_scores
    mask = sp.allocate(s, m, flops=0.5, multiple_of=8)
    assert all(w % 8 == 0 for w in mask.ffn_per_layer())
    assert sp.cost(m, mask=mask).encoder_flops <= 0.5 * sp.dense_cost(m).encoder_flops


def test_min_heads_and_layer_dropping(model_and_scores):
    m, s = model_and_scores
    s.head[2] = 1e-9  # layer 2's heads look useless
    mask = sp.allocate(s, m, heads=6, min_heads=1)
    assert min(mask.heads_per_layer()) == 1
    mask = sp.allocate(s, m, heads=6, ffn=100, min_heads=0)
    assert mask.heads_per_layer()[2] == 0 and mask.ffn_per_layer()[2] == 0
    assert 2 not in mask.kept_layers
    assert int(mask.ffn.sum()) == 100  # the dropped layer's neurons went to the other layers
    sp.prune_(m, mask)
    assert len(sp.arch.view(m).layers) == 3


def test_infeasible_budget_names_the_smallest_feasible_one(model_and_scores):
    m, s = model_and_scores
    with pytest.raises(ValueError, match=r"smallest feasible budget is flops=0\.\d+") as err:
        sp.allocate(s, m, flops=0.001, min_heads=2)
    smallest = float(re.search(r"flops=(0\.\d+)\. Raise", str(err.value)).group(1))
    with pytest.raises(ValueError):
        sp.allocate(s, m, flops=smallest - 1e-3, min_heads=2)
    mask = sp.allocate(s, m, flops=smallest + 1e-4, min_heads=2)
    assert mask.heads_per_layer() == [2, 2, 2, 2]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(flops=0),
        dict(flops=1.5),
        dict(flops=-0.2),
        dict(params=0),
        dict(flops=0.5, params=0.5),
        dict(),
        dict(heads=-1),
    ],
)
def test_bad_budgets(model_and_scores, kwargs):
    m, s = model_and_scores
    with pytest.raises(ValueError):
        sp.allocate(s, m, **kwargs)


def test_bad_options_and_mismatched_scores(model_and_scores):
    m, s = model_and_scores
    with pytest.raises(ValueError, match="strategy"):
        sp.allocate(s, m, flops=0.5, strategy="greedy")
    with pytest.raises(ValueError, match="multiple_of"):
        sp.allocate(s, m, flops=0.5, multiple_of=0)
    other = tiny.model("bert")
    with pytest.raises(ValueError, match="do not fit this model"):
        sp.allocate(s, other, flops=0.5)


def test_allocation_on_a_pruned_model_only_removes(model_and_scores):
    m, _ = model_and_scores
    first = sp.allocate(sp.score(m, method="magnitude"), m, flops=0.7)
    sp.prune_(m, first)
    s = sp.score(m, tiny.batches(), method="taylor", progress=False)
    second = sp.allocate(s, m, flops=0.4)
    assert not (second.head & ~first.head).any() and not (second.ffn & ~first.ffn).any()
    sp.prune_(m, second)
    assert sp.cost(m).encoder_flops <= 0.4 * sp.dense_cost(m).encoder_flops


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_mask_round_trip(tmp_path, model_and_scores, suffix):
    m, s = model_and_scores
    mask = sp.allocate(s, m, flops=0.5)
    path = mask.save(tmp_path / f"mask{suffix}")
    assert sp.Mask.load(path) == mask
    assert not list(tmp_path.glob("*.tmp"))
    summary = mask.summary()
    assert summary["heads_kept"] == int(mask.head.sum()) and len(summary["ffn_per_layer"]) == 4


def test_mask_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        sp.Mask.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid structprune mask"):
        sp.Mask.load(bad)
    trunc = tmp_path / "bad.safetensors"
    trunc.write_bytes(b"\x10\x00\x00")
    with pytest.raises(ValueError, match="not a valid structprune mask"):
        sp.Mask.load(trunc)
    with pytest.raises(ValueError, match=".json or .safetensors"):
        sp.Mask(torch.ones(1, 1), torch.ones(1, 1)).save(tmp_path / "mask.pt")
    with pytest.raises(ValueError, match="same L"):
        sp.Mask(torch.ones(2, 1), torch.ones(3, 1))


def test_cost_report_matches_the_model():
    m = tiny.model("electra")
    c = sp.cost(m, seq_len=64)
    assert c.total_params == sum(p.numel() for p in m.parameters())
    assert c.encoder_params == sum(p.numel() for p in m.base_model.encoder.layer.parameters())
    assert c.to_dict()["layers"][0]["heads"] == 4
    dense = sp.dense_cost(m, 64)
    assert dense.encoder_flops == c.encoder_flops and dense.total_params == c.total_params
    m2 = copy.deepcopy(m)
    sp.prune_(m2, sp.allocate(sp.score(m2, method="magnitude"), m2, flops=0.5))
    assert sp.dense_cost(m2, 64).encoder_flops == c.encoder_flops
    with pytest.raises(ValueError, match="seq_len"):
        sp.cost(m, seq_len=0)
