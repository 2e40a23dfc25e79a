"""Inputs that used to give a silently wrong result now give a clear error (and leave the model as it was)."""

import json
import math

import pytest
import tiny
import torch

import structprune as sp
from structprune.gates import Gates


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad", [0.5, math.nan, 2.0])
def test_masks_hold_booleans_only(bad):
    head = torch.ones(3, 4)
    head[0, 0] = bad
    with pytest.raises(ValueError, match="Mask.head must hold booleans"):
        sp.Mask(head, torch.ones(3, 48))


@pytest.mark.parametrize("where", ["head", "ffn", "layer"])
def test_nan_scores_are_refused_by_allocate_and_search(where):
    model = tiny.model("bert")
    scores = sp.score(model, method="magnitude")
    scores.layer = torch.ones(3)
    getattr(scores, where).view(-1)[0] = math.nan
    for fn in (sp.allocate, sp.search):
        with pytest.raises(ValueError, match="NaN or inf"):
            fn(scores, model, flops=0.5)


def test_multiple_of_larger_than_a_layer_is_refused():
    model = tiny.model("bert")
    scores = sp.score(model, method="magnitude")
    for fn in (sp.allocate, sp.search):
        with pytest.raises(ValueError, match="larger than a layer's FFN"):
            fn(scores, model, flops=0.5, multiple_of=64)


def test_gates_of_another_model_are_refused():
    gates = Gates.from_mask(sp.Mask.full(tiny.model("bert", num_attention_heads=8)))
    with pytest.raises(ValueError, match="made for another model"), gates.attach(tiny.model("bert")):
        pass


def test_score_checks_token_ids_and_labels_like_compress():
    model = tiny.model("bert")
    before = _weights(model)
    b = tiny.batch()
    b["input_ids"][0, 0] = tiny.VOCAB + 5
    with pytest.raises(ValueError, match="another tokenizer"):
        sp.score(model, [b], method="taylor", progress=False)
    b = tiny.batch()
    b["labels"][0] = 7  # 3 classes
    with pytest.raises(ValueError, match="outside the model's 3 classes"):
        sp.score(model, [b], method="fisher", progress=False)
    sp.score(model, [b], method="taylor", label_free=True, progress=False)  # labels unused: fine
    assert _same(_weights(model), before)


def test_a_nan_eval_never_becomes_the_best_and_non_finite_weights_fail_the_run(tmp_path):
    from torch.utils.data import DataLoader

    from structprune.recovery.distill import LoopCallback, NonFiniteLossError

    rows = [{**{k: v[i] for k, v in tiny.batch(batch_size=8).items()}} for i in range(8)]
    data = DataLoader(rows, batch_size=4)

    class Poison(LoopCallback):  # a diverged model: weights turn NaN after the step, before its evaluation
        def on_log(self, loop, record):
            if "loss" in record:
                with torch.no_grad():
                    loop.module.student.classifier.weight.fill_(math.nan)

    cfg = sp.DistillConfig(
        task="mnli", max_steps=1, progress=False, output_dir=str(tmp_path / "run"), log_every=1
    )
    with pytest.raises(NonFiniteLossError, match="non-finite weights"):
        sp.finetune(tiny.model("bert"), data, data, cfg, callbacks=[Poison()])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    evals = [json.loads(r) for r in lines if "eval_accuracy" in r]
    assert evals and all(math.isnan(e["eval_loss"]) for e in evals)
    assert not any(e.get("best") for e in evals)  # a NaN evaluation is never kept as the best
    assert not (tmp_path / "run" / "best").exists()


def test_resume_skips_a_damaged_latest_checkpoint(tmp_path, caplog):
    import logging

    from torch.utils.data import DataLoader

    rows = [{k: v[i] for k, v in tiny.batch(batch_size=8).items()} for i in range(8)]
    data = DataLoader(rows, batch_size=2)
    run = tmp_path / "run"
    base = dict(
        task="mnli", progress=False, output_dir=str(run), save_every=2, save_total_limit=3, log_every=1
    )
    sp.finetune(tiny.model("bert"), data, None, sp.DistillConfig(max_steps=4, **base))
    steps = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert steps == ["step-2", "step-4"]
    weights = next((run / "checkpoints" / "step-4").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # a kill while writing
    with caplog.at_level(logging.WARNING):
        _, history = sp.finetune(
            tiny.model("bert"), data, None, sp.DistillConfig(max_steps=6, resume_from="latest", **base)
        )
    assert "skipping the damaged checkpoint" in caplog.text
    assert "step-2, the newest intact checkpoint" in caplog.text
    assert [r["step"] for r in history if "loss" in r] == [1, 2, 3, 4, 5, 6]
    (run / "checkpoints" / "step-6" / "trainer_state.json").write_text("{")
    for name in ("step-2", "step-4"):
        (run / "checkpoints" / name / "trainer_state.json").write_text("{")
    with pytest.raises(ValueError, match="No intact checkpoint"):
        sp.finetune(
            tiny.model("bert"), data, None, sp.DistillConfig(max_steps=8, resume_from="latest", **base)
        )
