"""Layer-wise least-squares reconstruction (structprune.reconstruct) on tiny models and small tensors."""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import tiny
import torch

import structprune as sp
from structprune.allocation.search import search
from structprune.recovery.reconstruct import (
    BlockStats,
    ReconstructConfig,
    block_error,
    reconstruct,
    solve_scales,
    solve_weights,
)


def _stats(x, y):
    s = BlockStats.zeros(x.shape[1], y.shape[1])
    s.add(x, y)
    return s


# --- pure math -----------------------------------------------------------------------------------


def test_block_error_matches_direct_sum():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 6, generator=g) + 1.0, torch.randn(50, 4, generator=g)
    w, b = torch.randn(4, 6, generator=g), torch.randn(4, generator=g)
    direct = float(((x.double() @ w.double().T + b.double() - y.double()) ** 2).sum())
    assert block_error(_stats(x, y), w, b) == pytest.approx(direct, rel=1e-6)


def test_solve_weights_recovers_exact_linear_map_and_never_worsens():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=g)
    w_true, b_true = torch.randn(3, 8, generator=g), torch.randn(3, generator=g)
    y = x @ w_true.T + b_true
    w0, b0 = torch.zeros(3, 8), torch.zeros(3)
    s = _stats(x, y)
    w, b, step = solve_weights(s, w0 + 0.1, b0, damp=1e-8, max_change=1e9, fit_bias=True)
    torch.testing.assert_close(w.float(), w_true, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(b.float(), b_true, atol=1e-3, rtol=1e-3)
    # a bounded step is shorter but still never worse than where it started
    w, b, step = solve_weights(s, w0 + 0.1, b0, damp=0.01, max_change=0.1, fit_bias=True)
    assert step < 1
    assert block_error(s, w, b) <= block_error(s, w0 + 0.1, b0)


def test_solve_scales_bounded_and_never_worse():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 12, generator=g)  # 3 units of 4 columns
    w0 = torch.randn(5, 12, generator=g)
    y = x @ (w0 * torch.tensor([0.5] * 4 + [9.0] * 4 + [1.0] * 4)).T  # unit 1 "wants" scale 9
    s = _stats(x, y)
    w, b, step = solve_scales(s, w0, torch.zeros(5), group=4, damp=1e-6, max_scale=4.0, fit_bias=False)
    ratio = (w / w0.double()).mean(0).reshape(3, 4).mean(1)
    assert float(ratio.max()) <= 4.0 + 1e-9 and float(ratio.min()) >= 0
    assert block_error(s, w, b) <= block_error(s, w0, torch.zeros(5))


def test_degenerate_statistics_give_finite_weights():
    x = torch.zeros(3, 10)  # dead inputs, fewer rows than unknowns
    x[:, 0] = 1.0
    y = torch.randn(3, 4)
    s = _stats(x, y)
    w, b, _ = solve_weights(s, torch.randn(4, 10), torch.zeros(4), damp=0.01, max_change=2.0, fit_bias=True)
    assert torch.isfinite(w).all() and torch.isfinite(b).all()
    w, b, _ = solve_scales(s, torch.randn(4, 10), torch.zeros(4), 2, 0.01, 4.0, True)
    assert torch.isfinite(w).all() and torch.isfinite(b).all()


# --- on tiny models ------------------------------------------------------------------------------


def _random_mask(model, seed, flops=0.5):
    g = torch.Generator().manual_seed(seed)
    full = sp.Mask.full(model)
    scores = sp.Scores(torch.rand(full.head.shape, generator=g), torch.rand(full.ffn.shape, generator=g))
    return search(scores, model, flops=flops)


def _last_hidden(model, batches):
    outs = []
    with torch.no_grad():
        for b in batches:
            inputs = {k: v for k, v in b.items() if k != "labels"}
            out = model(**inputs, output_hidden_states=True)
            outs.append(out.hidden_states[-1][b["attention_mask"].bool()])
    return torch.cat(outs)


@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet", "modernbert", "deberta-v2"])
@pytest.mark.parametrize("seed", range(3))
def test_reconstruction_reduces_and_never_increases_layer_output_error(family, seed):
    dense = tiny.model(family, seed=seed)
    mask = _random_mask(dense, seed, flops=0.3 + 0.15 * seed)
    calib = tiny.batches(6, batch_size=8, seq_len=12)
    plain = copy.deepcopy(dense)
    sp.prune_(plain, mask)
    fitted = copy.deepcopy(plain)
    report = reconstruct(fitted, dense, calib, progress=False)
    for block in report.blocks:  # every block's own fit never increases its error
        assert block.error_after <= block.error_before * (1 + 1e-9)
    assert report.error_after < report.error_before
    target = _last_hidden(dense, calib)
    err_plain = (_last_hidden(plain, calib) - target).pow(2).sum()
    err_fit = (_last_hidden(fitted, calib) - target).pow(2).sum()
    assert err_fit < err_plain  # the final layer's output is closer to the unpruned model's
    held_out = [tiny.batch(seed=100 + i, batch_size=8, seq_len=12) for i in range(2)]
    target = _last_hidden(dense, held_out)
    assert (_last_hidden(fitted, held_out) - target).pow(2).sum() < (
        _last_hidden(plain, held_out) - target
    ).pow(2).sum()


def _narrowed(model, layers: int, hidden: int, seed: int = 0):
    """``(wide, student)``: ``model`` cut to ``layers`` random layers, and a copy of that also cut to ``hidden``
    random residual dimensions and in heads / neurons (what ``sp.compress(..., layers=, hidden=)`` fits)."""
    g = torch.Generator().manual_seed(seed)
    s = sp.arch.view(model).structure
    drop = torch.randperm(s.num_layers, generator=g)[: s.num_layers - layers]
    depth = sp.Mask.full(model)
    depth.head[drop], depth.ffn[drop] = False, False
    wide = copy.deepcopy(model)
    sp.prune_(wide, depth)
    mask = _random_mask(model, seed, flops=0.6)
    mask.head &= depth.head
    mask.ffn &= depth.ffn
    mask.hidden = torch.zeros(s.hidden_size, dtype=torch.bool)
    mask.hidden[torch.randperm(s.hidden_size, generator=g)[:hidden]] = True
    student = copy.deepcopy(wide)
    sp.prune_(student, mask)
    return wide, student


@pytest.mark.parametrize("family", ["bert", "mpnet", "modernbert", "deberta-v2"])
@pytest.mark.parametrize("seed", range(2))
def test_a_student_narrower_than_its_reference_is_fitted_to_the_kept_dimensions(family, seed):
    """After a width cut the student's residual stream is the reference's kept dimensions (up to a per-token
    shift and scale, as its LayerNorms normalize over them only): each block is fitted there, and the
    student's normalized outputs come closer to the reference's."""
    wide, plain = _narrowed(
        tiny.model(family, num_hidden_layers=3, seed=seed), layers=2, hidden=24, seed=seed
    )
    kept = sp.arch.view(plain).structure.hidden
    assert len(kept) == 24 and len(sp.arch.view(plain).layers) == 2
    calib = tiny.batches(6, batch_size=8, seq_len=12)
    fitted = copy.deepcopy(plain)
    report = reconstruct(fitted, wide, calib, progress=False)
    assert len(report.blocks) == 4  # two kept layers x (attention, FFN)
    assert all(b.error_after <= b.error_before * (1 + 1e-9) for b in report.blocks)
    assert report.error_after < report.error_before
    for batches in (calib, [tiny.batch(seed=100 + i, batch_size=8, seq_len=12) for i in range(2)]):
        # the reference's last output at the kept dimensions, normalized over them as the student's LayerNorm
        # normalizes (the tiny models' LayerNorms are the identity affine map, untrained)
        target = torch.nn.functional.layer_norm(_last_hidden(wide, batches)[:, kept], (len(kept),))
        err_plain = (_last_hidden(plain, batches) - target).pow(2).sum()
        assert (_last_hidden(fitted, batches) - target).pow(2).sum() < err_plain
    # the reference must be the full-width model (a Mask works on full-width models only)
    narrow = copy.deepcopy(wide)
    width_only = sp.Mask.full(wide)
    width_only.hidden = torch.ones(32, dtype=torch.bool)
    width_only.hidden[next(d for d in range(32) if d not in kept)] = (
        False  # wider than the student, not whole
    )
    sp.prune_(narrow, width_only)
    with pytest.raises(ValueError, match="reference model has pruned hidden dimensions"):
        reconstruct(copy.deepcopy(plain), narrow, calib, progress=False)
    with pytest.raises(ValueError, match="Prune first"):
        reconstruct(copy.deepcopy(plain), sp.Mask.full(plain), calib, progress=False)


@pytest.mark.parametrize("fit", ["weights", "scales"])
def test_mask_mode_equals_pruned_mode(fit):
    dense = tiny.model("bert")
    mask = _random_mask(dense, 4)
    calib = tiny.batches(4, batch_size=8, seq_len=12)
    pruned = copy.deepcopy(dense)
    sp.prune_(pruned, mask)
    rep_pruned = reconstruct(pruned, dense, calib, fit=fit, progress=False)
    masked = copy.deepcopy(dense)
    rep_masked = reconstruct(masked, mask, calib, fit=fit, progress=False)
    batch = tiny.batch(seed=50, batch_size=4, seq_len=12)
    with sp.gates.Gates.from_mask(mask).attach(masked):
        gated = tiny.outputs(masked, batch)
    sp.prune_(masked, mask)
    torch.testing.assert_close(tiny.outputs(masked, batch), tiny.outputs(pruned, batch), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gated, tiny.outputs(pruned, batch), atol=1e-5, rtol=1e-4)
    assert rep_masked.error_after == pytest.approx(rep_pruned.error_after, rel=1e-4)


def test_scales_fit_only_rescales_kept_columns():
    dense = tiny.model("bert")
    mask = _random_mask(dense, 5)
    pruned = copy.deepcopy(dense)
    sp.prune_(pruned, mask)
    before = [lv.down.weight.detach().clone() for lv in sp.arch.view(pruned).layers]
    reconstruct(pruned, dense, tiny.batches(4, batch_size=8), fit="scales", max_scale=3.0, progress=False)
    for w0, lv in zip(before, sp.arch.view(pruned).layers, strict=True):
        ratio = lv.down.weight.detach() / w0  # [D, n]: one factor per column
        assert torch.allclose(ratio, ratio[:1].expand_as(ratio), atol=1e-4)
        assert float(ratio.max()) <= 3.0 + 1e-4 and float(ratio.min()) >= -1e-6


def test_too_few_examples_warns_regularizes_and_stays_finite():
    dense = tiny.model("bert", intermediate_size=96)
    mask = _random_mask(dense, 0, flops=0.8)
    pruned = copy.deepcopy(dense)
    sp.prune_(pruned, mask)
    one = [tiny.batch(seed=0, batch_size=1, seq_len=6)]
    with pytest.warns(UserWarning, match="few for"):
        report = reconstruct(pruned, dense, one, progress=False)
    assert all(torch.isfinite(p).all() for p in pruned.parameters())
    raised = [b for b in report.blocks if b.damp > 0.01]
    assert raised and all(b.error_after <= b.error_before * (1 + 1e-9) for b in report.blocks)


def _unpadded(n: int, seq_len: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, tiny.VOCAB, (n, seq_len), generator=g)
    return [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]


@pytest.mark.parametrize("fit", ["weights", "scales"])
def test_few_tokens_warn_once_at_the_callers_line_with_advice_that_suffices(fit):
    dense = tiny.model("bert", intermediate_size=96)
    mask = _random_mask(dense, 0, flops=0.8)
    pruned = copy.deepcopy(dense)
    sp.prune_(pruned, mask)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reconstruct(pruned, dense, _unpadded(1, 2), fit=fit, progress=False)
    assert len(caught) == 1, [str(w.message) for w in caught]  # one warning per call, not one per block
    warning = caught[0]
    assert warning.filename == __file__  # the user's line, not structprune's internals
    text = str(warning.message)
    assert "few for" in text and f"fit={fit!r}" in text
    examples = int(re.search(r"about (\d+) examples of this length", text).group(1))
    assert examples > 1
    if fit == "weights":
        assert "fit='scales', which needs" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what the warning advised is enough
        reconstruct(copy.deepcopy(pruned), dense, _unpadded(examples, 2, seed=1), fit=fit, progress=False)
    with pytest.warns(UserWarning, match="few for"):  # one example fewer is not
        reconstruct(copy.deepcopy(pruned), dense, _unpadded(examples - 1, 2, seed=1), fit=fit, progress=False)


def test_reconstruction_warning_points_at_the_compress_call():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sp.compress(tiny.model("bert"), _unpadded(2, 3), flops=0.6, progress=False)
    few = [w for w in caught if "few for" in str(w.message)]
    assert len(few) == 1 and few[0].filename == __file__


def test_max_examples_and_dropped_layers():
    dense = tiny.model("bert")
    mask = _random_mask(dense, 1)
    mask.head[1] = False
    mask.ffn[1] = False  # layer 1 dropped whole
    pruned = copy.deepcopy(dense)
    sp.prune_(pruned, mask)
    report = reconstruct(pruned, dense, tiny.batches(4, batch_size=8), max_examples=12, progress=False)
    assert report.examples == 12
    assert {b.layer for b in report.blocks} == {0, 2}
    assert report.error_after < report.error_before


def test_reconstruct_bad_input():
    dense = tiny.model("bert")
    pruned = copy.deepcopy(dense)
    sp.prune_(pruned, _random_mask(dense, 0))
    with pytest.raises(ValueError, match="empty"):
        reconstruct(pruned, dense, [], progress=False)
    with pytest.raises(TypeError, match="dict of model inputs"):
        reconstruct(pruned, dense, [torch.ones(2, 3)], progress=False)
    with pytest.raises(TypeError, match="unpruned model or a structprune.Mask"):
        reconstruct(pruned, "dense", tiny.batches(1), progress=False)
    with pytest.raises(ValueError, match="not the one this model was pruned from"):
        reconstruct(pruned, tiny.model("bert", num_hidden_layers=2), tiny.batches(1), progress=False)
    with pytest.raises(ValueError, match="fit must be"):
        ReconstructConfig(fit="magic")
    with pytest.raises(ValueError, match="damp"):
        ReconstructConfig(damp=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a normal call does not warn
        reconstruct(pruned, dense, tiny.batches(6, batch_size=8, seq_len=12), fit="scales", progress=False)
