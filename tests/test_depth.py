"""Depth pruning: layer scores, allocate(layers=...), surgery == the skipped-layers reference, target shapes."""

import copy

import pytest
import tiny
import torch

import structprune as sp
from structprune.recovery.distill import build_map


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_dropped_layers_equal_skipped_layers_and_cost_is_exact(family):
    m = tiny.model(family, num_hidden_layers=4)
    b = tiny.batch()
    scores = sp.score(m, method="magnitude")
    scores.layer = sp.score_layers(m, tiny.batches(1), progress=False)
    assert scores.layer.shape == (4,)
    mask = sp.allocate(scores, m, layers=2)
    kept = scores.layer.topk(2).indices.sort().values.tolist()
    assert mask.kept_layers == kept
    assert bool(mask.head[kept].all()) and not mask.head[[i for i in range(4) if i not in kept]].any()
    skip = frozenset(range(4)) - set(kept)
    with sp.gates.Gates(skip_layers=skip).attach(m):  # the reference: those layers are the identity
        ref = tiny.outputs(m, b)
    predicted = sp.cost(m, mask=mask)
    sp.prune_(m, mask)
    torch.testing.assert_close(tiny.outputs(m, b), ref, rtol=1e-4, atol=1e-5)
    assert sp.arch.view(m).structure.layers == kept  # the distillation layer map
    assert predicted.total_params == sum(p.numel() for p in m.parameters())
    assert len(predicted.layers) == 2


def test_layer_map_follows_the_kept_layers():
    teacher = tiny.model("bert", num_hidden_layers=4)
    student = tiny.model("bert", num_hidden_layers=4)
    scores = sp.Scores(torch.ones(4, 4), torch.ones(4, 48), layer=torch.tensor([3.0, 0.0, 2.0, 1.0]))
    sp.prune_(student, sp.allocate(scores, student, layers=3))
    assert build_map(student, teacher).layers == [0, 2, 3]


def test_score_layers_reflects_damage():
    m = tiny.model("bert", num_hidden_layers=3)
    labelled = sp.score_layers(m, tiny.batches(1), progress=False)
    free = sp.score_layers(m, tiny.batches(1, labels=None), progress=False)
    assert labelled.shape == free.shape == (3,)
    assert (free > 0).all()  # skipping any layer changes the logits
    sp.prune_(m, sp.allocate(sp.Scores(torch.ones(3, 4), torch.ones(3, 48), layer=free), m, layers=2))
    again = sp.score_layers(m, tiny.batches(1, labels=None), progress=False)
    assert int((again == 0).sum()) == 1  # the dropped layer scores 0
    base = tiny.model("bert", "base")
    assert (sp.score_layers(base, tiny.batches(1, labels=None), progress=False) > 0).all()


def test_target_shape_with_a_flops_budget_is_met_and_exact():
    m = tiny.model("bert", intermediate_size=64, num_attention_heads=8, num_hidden_layers=4)
    scores = sp.score_shape(m, tiny.batches(1), progress=False)
    assert scores.layer.shape == (4,) and scores.hidden.shape == (32,)
    for kwargs in (dict(flops=0.2), dict(params=0.25), dict(heads=6, ffn=40)):
        mask = sp.allocate(scores, m, layers=3, hidden=24, **kwargs)
        assert len(mask.kept_layers) == 3 and int(mask.hidden.sum()) == 24
        c = sp.cost(m, mask=mask)
        if "flops" in kwargs:
            assert 0.15 < c.encoder_flops / sp.dense_cost(m).encoder_flops <= 0.2 + 1e-9
        if "params" in kwargs:
            assert 0.2 < c.encoder_params / sp.dense_cost(m).encoder_params <= 0.25 + 1e-9
        if "heads" in kwargs:
            assert int(mask.head.sum()) == 6 and int(mask.ffn.sum()) == 40
    mask = sp.allocate(scores, m, layers=2, hidden=16, flops=0.1, strategy="uniform")
    assert len(set(h for h in mask.heads_per_layer() if h)) == 1
    pruned = tiny.model("bert", intermediate_size=64, num_attention_heads=8, num_hidden_layers=4)
    predicted = sp.cost(pruned, mask=mask)
    sp.prune_(pruned, mask)
    assert predicted.total_params == sum(p.numel() for p in pruned.parameters())
    assert sp.cost(pruned).encoder_flops == predicted.encoder_flops


def test_bad_shapes_are_refused_with_what_to_do():
    m = tiny.model("bert", num_hidden_layers=3)
    scores = sp.score(m, tiny.batches(1), method="magnitude", progress=False)
    with pytest.raises(ValueError, match="keep between 1 and 3"):
        sp.allocate(scores, m, layers=4)
    with pytest.raises(ValueError, match="keep between 1 and 3"):
        sp.allocate(scores, m, layers=0)
    with pytest.raises(ValueError, match="number of layers"):
        sp.allocate(scores, m, layers="2")
    with pytest.raises(ValueError, match="smallest feasible budget is flops="):
        sp.allocate(scores, m, layers=2, flops=0.01)
    with pytest.raises(ValueError, match="one budget"):
        sp.allocate(scores, m)
    with pytest.raises(ValueError, match="one budget"):
        sp.allocate(scores, m, layers=2, flops=0.5, heads=3)
    with pytest.raises(ValueError, match=r"Scores.layer needs one score per layer \[3\]"):
        sp.Scores(scores.head, scores.ffn, layer=torch.ones(4))
    # without layer scores the layers are ranked by summed head and neuron scores
    mask = sp.allocate(scores, m, layers=2)
    totals = scores.head.sum(1) + scores.ffn.sum(1)
    assert mask.kept_layers == totals.topk(2).indices.sort().values.tolist()


def test_compress_with_a_target_shape():
    m = tiny.model("bert", intermediate_size=64, num_attention_heads=8, num_hidden_layers=4)
    student, report = sp.compress(
        m, tiny.batches(2), flops=0.2, layers=2, hidden=24, search=False, reconstruct=False, progress=False
    )
    s = sp.arch.view(student).structure
    assert len(s.layers) == 2 and s.hidden_width == 24
    assert report.flops_kept <= 0.2 + 1e-9


def test_compress_reconstructs_after_a_width_cut():
    """With ``hidden=`` the heads and neurons are fitted to the model at the target depth and full width (at the
    kept dimensions); the held-back selection weighs the fitted candidates against the plain ones."""
    m = tiny.model("bert", intermediate_size=64, num_attention_heads=8, num_hidden_layers=4)
    calib = tiny.batches(8, batch_size=8, seq_len=12)
    student, report = sp.compress(
        copy.deepcopy(m), calib, flops=0.2, layers=2, hidden=24, select=False, progress=False
    )
    assert report.choice.endswith(", reconstructed") and report.reconstruction is not None
    assert len(report.reconstruction.blocks) == 4  # the two kept layers, attention and FFN
    assert report.reconstruction.error_after < report.reconstruction.error_before
    s = sp.arch.view(student).structure
    assert len(s.layers) == 2 and s.hidden_width == 24 and report.flops_kept <= 0.2 + 1e-9
    _, selected = sp.compress(copy.deepcopy(m), calib, flops=0.2, layers=2, hidden=24, progress=False)
    assert any(c.endswith(", reconstructed") for c in selected.candidates)
    assert any(c.endswith(", not reconstructed") for c in selected.candidates)
    assert selected.choice in selected.candidates
