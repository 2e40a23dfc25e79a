"""One definition per concept: label keys, device moves, logits, budgets, masks of a structure, atomic writes."""

import json
import math

import pytest
import tiny
import torch

import structprune as sp
from structprune.allocation.budget import check_fraction, one_budget
from structprune.atomic import atomic_write_json
from structprune.batches import has_labels, labels_of, logits_of, model_inputs, to_device
from structprune.scoring import scorer_info, scorer_options


def test_label_is_read_as_labels_everywhere():
    b = tiny.batch()
    renamed = {("label" if k == "labels" else k): v for k, v in b.items()}
    assert has_labels(renamed) and torch.equal(labels_of(renamed), b["labels"])
    assert "labels" in to_device(renamed, "cpu") and "label" not in to_device(renamed, "cpu")
    assert set(model_inputs(renamed)) == {k for k in b if k != "labels"}
    # a batch labelled `label` scores like one labelled `labels` (before: score() refused it)
    model = tiny.model("bert")
    a = sp.score(model, [b], method="taylor", progress=False)
    c = sp.score(model, [renamed], method="taylor", progress=False)
    assert torch.allclose(a.head, c.head) and torch.allclose(a.ffn, c.ffn)


def test_logits_of_every_output_shape():
    t = torch.zeros(2, 3)
    model = tiny.model("bert")
    out = model(**model_inputs(tiny.batch()))
    assert logits_of(out) is out.logits and logits_of({"logits": t}) is t and logits_of((t,)) is t
    assert logits_of(t) is t
    with pytest.raises(ValueError, match="no logits"):
        logits_of(tiny.model("bert", task="base")(**model_inputs(tiny.batch())))
    with pytest.raises(TypeError, match="dict of model inputs"):
        to_device([1, 2], "cpu")


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, math.nan, math.inf, True, "0.5", None])
def test_one_budget_check(bad):
    with pytest.raises(ValueError, match="fraction of the unpruned encoder kept"):
        check_fraction("flops", bad)
    model = tiny.model("bert")
    scores = sp.score(model, method="magnitude")
    if bad is not None:
        with pytest.raises(ValueError):
            sp.allocate(scores, model, flops=bad)
        with pytest.raises(ValueError):
            sp.CompressConfig(flops=bad)
    assert one_budget(0.5, None) == ("flops", 0.5) and one_budget(None, 1) == ("params", 1.0)
    with pytest.raises(ValueError, match="exactly one budget"):
        one_budget(0.5, 0.5)


def test_mask_full_is_the_mask_of_the_recorded_structure():
    model = tiny.model("bert")
    scores = sp.score_shape(model, tiny.batches(2), progress=False)
    sp.prune_(model, sp.allocate(scores, model, hidden=24, flops=0.5))
    record = model.config.structprune
    full = sp.Mask.full(model)
    assert full == sp.Mask.from_structure(record)
    assert int(full.hidden.sum()) == 24  # hidden dimensions survive (the old copy in distillation lost them)


def test_scorers_declare_what_they_need():
    assert scorer_info("taylor").gradients and scorer_info("fisher").needs_data
    assert not scorer_info("magnitude").needs_data and not scorer_info("activation").gradients
    assert scorer_options("magnitude", ["data"], label_free=True) == {"batches": None}
    assert scorer_options("fisher", ["data"], label_free=True) == {"batches": ["data"], "label_free": True}
    with pytest.raises(ValueError, match="Unknown scoring method 'nope'"):
        scorer_info("nope")


def test_atomic_json_leaves_no_temporary(tmp_path):
    path = atomic_write_json(tmp_path / "sub" / "state.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["state.json"]
