"""The one-call retraining-free path (structprune.compress), on tiny models and on the real SST-2 teacher."""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import tiny
import torch

import structprune as sp
from structprune.checkpoint.card import recorded_card
from structprune.run.compress import CompressConfig, compress

pytestmark = pytest.mark.filterwarnings("ignore:Only .* calibration examples")


def _calib(n=6, **kw):
    return tiny.batches(n, batch_size=8, seq_len=12, **kw)


@pytest.mark.parametrize("label_free", [False, True])
def test_compress_meets_budget_and_reports(label_free):
    model = tiny.model("bert")
    dense = copy.deepcopy(model)
    calib = _calib(labels=None) if label_free else _calib()
    out, report = compress(model, calib, flops=0.5, select=False, progress=False)
    assert out is model
    assert report.label_free is label_free
    assert report.flops_kept <= 0.5
    assert sp.cost(model).encoder_flops <= 0.5 * sp.dense_cost(dense).encoder_flops
    assert report.params_after < report.params_before
    assert report.examples == 48
    assert report.reconstruction is not None
    assert report.reconstruction.error_after < report.reconstruction.error_before
    assert set(report.seconds) >= {"score", "search", "prune", "reconstruct", "total"}
    d = report.to_dict()
    assert d["mask"]["heads_kept"] == int(report.mask.head.sum())
    assert sp.Mask.full(model) == report.mask  # the model holds exactly the reported mask


def test_compress_without_search_or_reconstruction_is_the_allocate_path():
    model = tiny.model("bert")
    calib = _calib()
    ref = copy.deepcopy(model)
    scores = sp.score(ref, calib, method="taylor", progress=False)
    sp.prune_(ref, sp.allocate(scores, ref, flops=0.5))
    compress(
        model,
        calib,
        flops=0.5,
        method="taylor",
        search=False,
        reconstruct=False,
        select=False,
        progress=False,
    )
    batch = tiny.batch(seed=9)
    torch.testing.assert_close(tiny.outputs(model, batch), tiny.outputs(ref, batch))


def test_compress_num_examples_and_params_budget():
    model = tiny.model("bert")
    _, report = compress(
        model,
        _calib(),
        params=0.7,
        num_examples=20,
        reconstruct={"fit": "scales"},
        select=False,
        progress=False,
    )
    assert report.examples == 20
    assert report.reconstruction.fit == "scales"


@pytest.mark.parametrize(
    "label_free, select_by", [(False, "task_loss"), (True, "task_loss"), (False, "divergence")]
)
def test_compress_keeps_the_candidate_with_the_lowest_held_out_loss(label_free, select_by):
    """With labels the candidates are weighed by the held-back task loss, or (select_by='divergence') by the KL
    divergence from the unpruned model's outputs, which is also what weighs them without labels."""
    from structprune.run.select import heldout_loss, reference_logits, split_holdout

    model = tiny.model("bert")
    dense = copy.deepcopy(model)
    calib = _calib(8, labels=None) if label_free else _calib(8)
    out, report = compress(model, calib, flops=0.5, select_margin=0, select_by=select_by, progress=False)
    by_divergence = label_free or select_by == "divergence"
    assert report.selected_by == ("divergence" if by_divergence else "task_loss")
    weighed = "divergence from the unpruned model" if by_divergence else "task loss"
    assert f"(chosen among {len(report.candidates)} candidates by held-back {weighed})" in (
        recorded_card(out).method
    )  # the model card says how the kept candidate was chosen
    assert len(report.candidates) >= 4  # search / allocate (fisher, taylor), with and without reconstruction
    assert report.choice == min(
        report.candidates, key=report.candidates.get
    )  # margin 0: the lowest loss wins
    fit, held = split_holdout(calib, 0.25)
    assert sum(len(b["input_ids"]) for b in held) == 16 and len(fit) == 6
    ref = reference_logits(dense, held) if by_divergence else None
    assert heldout_loss(out, held, label_free=by_divergence, reference=ref) == pytest.approx(
        report.candidates[report.choice], rel=1e-5
    )  # the model returned is the candidate chosen
    assert sp.Mask.full(model) == report.mask and report.flops_kept <= 0.5
    assert "select" in report.seconds


def test_rearrangement_variants_are_weighed_beside_the_configured_path():
    """Kwon et al.'s rearrangement refines the search's mask; it can hurt (all-mpnet-base-v2 at 50%: its heads), so
    beside the configured path (the search with both rearrangements, reconstructed) the search with no or one
    rearrangement is a candidate, and only the one of them with the lowest held-back loss before reconstruction is
    reconstructed too (two reconstructions, not four)."""
    family = ("search", "search+rearrange (heads)", "search+rearrange (neurons)")
    differed = 0
    for seed in range(4):
        torch.manual_seed(seed)
        _, report = compress(tiny.model("bert"), _calib(8), flops=0.4, select_margin=0, progress=False)
        c = report.candidates
        assert "search+rearrange, reconstructed" in c or "search+rearrange" not in report.choice
        plain = {k: c[f"{k}, not reconstructed"] for k in family if f"{k}, not reconstructed" in c}
        fitted = [k for k in family if f"{k}, reconstructed" in c]
        assert len(fitted) <= 1 and "search, not reconstructed" in c  # identical masks are weighed once
        if len(plain) > 1:
            differed += 1
            assert fitted == [min(plain, key=plain.get)]
        assert report.choice == min(c, key=c.get)
    assert differed  # a rearrangement moved something in at least one of the seeds


def test_select_keeps_the_configured_path_unless_another_is_clearly_better():
    """Candidates within noise of the configured path do not replace it (select_margin standard errors of the paired
    per-example difference of held-back losses); margin 0 takes the lowest loss."""
    from structprune.run.select import clearly_lower

    torch.manual_seed(0)
    base = torch.rand(200)
    assert clearly_lower(base - 0.5, base, 2.0)  # lower on every example
    noisy = base + 0.02 * torch.randn(200)
    assert not clearly_lower(noisy - 0.001, base, 2.0) and clearly_lower(noisy - 0.001, noisy, 0.0)
    assert not clearly_lower(base, base, 0.0) and not clearly_lower(torch.zeros(0), torch.zeros(0), 2.0)
    kept = []
    for seed in range(3):
        torch.manual_seed(seed)
        _, report = compress(tiny.model("bert"), _calib(8), flops=0.4, select_margin=1e9, progress=False)
        kept.append(report.choice)
        assert min(report.candidates.values()) <= report.candidates[report.choice]
    assert kept == ["search+rearrange, reconstructed"] * 3  # nothing is clearly better by a billion SEs


@pytest.mark.parametrize("num_labels", [3, 1])
def test_held_back_losses_are_per_example_task_losses(num_labels):
    """Labelled held-back losses are the model's own task loss, per example (cross-entropy; squared error for a
    one-output regression head), so their mean is what the model reports for the batch."""
    from structprune.run.select import heldout_losses

    model = tiny.model("bert", num_labels=num_labels).eval()
    batch = _calib(1)[0]
    if num_labels == 1:
        batch = {**batch, "labels": torch.rand(len(batch["input_ids"]))}
    losses = heldout_losses(model, [batch], label_free=False, reference=None)
    assert losses.shape == (len(batch["input_ids"]),) and bool((losses >= 0).all())
    with torch.no_grad():
        assert float(losses.mean()) == pytest.approx(float(model(**batch).loss), rel=1e-5)


def test_too_few_examples_to_hold_back_use_them_all():
    _, report = compress(tiny.model("bert"), _calib(3), flops=0.5, progress=False)
    assert report.candidates == {} and report.choice == "search+rearrange, reconstructed"


def test_compress_bad_input():
    calib = _calib()
    with pytest.raises(ValueError, match="outside the model's 3 classes"):
        compress(tiny.model("bert"), _calib(num_labels=7), flops=0.5, progress=False)
    regression_labels = [{**b, "labels": torch.rand(len(b["labels"]))} for b in calib]
    with pytest.raises(ValueError, match="regression task"):
        compress(tiny.model("bert"), regression_labels, flops=0.5, progress=False)
    with pytest.raises(ValueError, match="regression head"):
        compress(tiny.model("bert", num_labels=1), calib, flops=0.5, progress=False)
    bad_ids = [{**b, "input_ids": b["input_ids"] + 1000} for b in calib]
    with pytest.raises(ValueError, match="another tokenizer"):
        compress(tiny.model("bert"), bad_ids, flops=0.5, progress=False)
    with pytest.raises(ValueError, match="smallest feasible budget is flops=") as err:
        compress(tiny.model("bert"), calib, flops=0.02, min_heads=2, progress=False)
    smallest = float(re.search(r"flops=([0-9.]+) \(", str(err.value)).group(1))
    model, report = compress(tiny.model("bert"), calib, flops=smallest, min_heads=2, progress=False)
    assert report.mask.heads_per_layer() == [2, 2, 2]
    with pytest.raises(ValueError, match="empty"):
        compress(tiny.model("bert"), [], flops=0.5, progress=False)
    with pytest.raises(ValueError, match="not both"):
        CompressConfig(flops=0.5, params=0.5)
    with pytest.raises(ValueError, match="Unknown method"):
        CompressConfig(method="vibes")
    with pytest.raises(TypeError, match="not both"):
        compress(tiny.model("bert"), calib, flops=0.5, config=CompressConfig())
    with pytest.warns(UserWarning, match="calibration examples"), warnings.catch_warnings():
        warnings.simplefilter("always")
        compress(tiny.model("bert"), calib[:1], flops=0.6, progress=False)


@pytest.mark.slow
def test_reconstruction_beats_plain_pruning_on_real_sst2(sst2_teacher, sst2_glue_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from structprune.data import load_split, make_dataloader
    from structprune.evaluation import evaluate

    tok = AutoTokenizer.from_pretrained(sst2_teacher)
    teacher = AutoModelForSequenceClassification.from_pretrained(sst2_teacher).eval()
    train = load_split("sst2", "train", data_dir=sst2_glue_dir)
    calib = list(
        make_dataloader(train, tok, "sst2", batch_size=32, max_length=64, limit=256, limit_mode="random")
    )
    val = make_dataloader(
        load_split("sst2", "validation", data_dir=sst2_glue_dir), tok, "sst2", batch_size=64, limit=300
    )

    grads = sp.gate_gradients(teacher, calib, progress=False)  # one scoring pass for both
    plain, _ = compress(
        copy.deepcopy(teacher), calib, 0.4, gradients=grads, reconstruct=False, select=False, progress=False
    )
    fitted, report = compress(
        copy.deepcopy(teacher), calib, 0.4, gradients=grads, select=False, progress=False
    )
    acc_plain = evaluate(plain, val, "sst2", progress=False)["accuracy"]
    acc_fitted = evaluate(fitted, val, "sst2", progress=False)["accuracy"]
    assert report.mask == sp.Mask.full(plain)  # same mask: the difference is the reconstruction
    assert acc_fitted > acc_plain, (acc_plain, acc_fitted)


def test_compress_reuses_gradients_across_budgets():
    model = tiny.model("bert")
    calib = _calib()
    grads = sp.gate_gradients(model, calib, progress=False)
    a, rep_a = compress(copy.deepcopy(model), calib, flops=0.6, gradients=grads, progress=False)
    b, rep_b = compress(copy.deepcopy(model), calib, flops=0.6, progress=False)
    assert rep_a.mask == rep_b.mask  # same scores, same mask, whether scored here or passed in
    assert "score" in rep_a.seconds and rep_a.seconds["score"] < 1.0
    with pytest.raises(ValueError, match="another model"):
        compress(tiny.model("bert", num_hidden_layers=2), calib, flops=0.5, gradients=grads, progress=False)
    with pytest.raises(ValueError, match="method='fisher'"):
        compress(copy.deepcopy(model), calib, flops=0.5, gradients=grads, method="taylor", progress=False)


def test_compress_to_a_tinybert_shape_with_its_defaults():
    model = tiny.model("bert")
    _, report = compress(model, _calib(8), flops=0.3, layers=2, hidden=24, progress=False)
    st = sp.arch.view(model).structure
    assert len(st.layers) == 2 and st.hidden_width == 24 and report.flops_kept <= 0.3
    assert report.choice.startswith("allocate")  # the search prices at the full width: global allocation
    # fitted to the model at 2 layers and full width, or not: chosen on held-back examples
    assert {c.rsplit(", ", 1)[1] for c in report.candidates} == {"reconstructed", "not reconstructed"}
    assert (report.reconstruction is not None) == report.choice.endswith(", reconstructed")


def test_select_by_is_validated_and_reported():
    with pytest.raises(ValueError, match="select_by must be one of 'task_loss', 'divergence', got 'kl'"):
        CompressConfig(select_by="kl")
    _, report = compress(tiny.model("bert"), _calib(), flops=0.5, select=False, progress=False)
    assert report.selected_by is None and report.candidates == {}  # nothing held back: nothing weighed
    # the two criteria weigh the same candidates differently (the KL of the labelled run is not its task loss);
    # by default, labels or not, the KL (benchmarks/results/selection_summary.md)
    torch.manual_seed(0)
    _, by_loss = compress(tiny.model("bert"), _calib(8), flops=0.5, select_by="task_loss", progress=False)
    torch.manual_seed(0)
    _, by_kl = compress(tiny.model("bert"), _calib(8), flops=0.5, progress=False)
    assert (by_loss.selected_by, by_kl.selected_by) == ("task_loss", "divergence")
    assert by_loss.candidates.keys() == by_kl.candidates.keys()
    assert all(by_loss.candidates[k] != pytest.approx(by_kl.candidates[k]) for k in by_kl.candidates)
