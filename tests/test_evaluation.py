"""structprune.evaluate: the one evaluation loop (plain, dict of loaders, Accelerate, real teacher)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from helpers import evaluate_prepared, rows

from structprune import evaluate
from structprune.data import TaskInfo, compute_metrics, get_task, load_split, make_dataloader

TESTS = Path(__file__).resolve().parent


def manual(model, loader, task):
    """Reference: logits and labels collected by hand, metrics + mean loss computed directly."""
    logits, labels = [], []
    with torch.no_grad():
        for b in loader:
            labels.append(b.pop("labels"))
            logits.append(model(**b).logits)
    logits, labels = torch.cat(logits), torch.cat(labels)
    if task.is_regression:
        loss = torch.nn.functional.mse_loss(logits.squeeze(-1), labels)
    else:
        loss = torch.nn.functional.cross_entropy(logits, labels)
    return {**compute_metrics(task, logits.numpy(), labels.numpy()), "loss": float(loss)}


def test_evaluate_tiny_classification_matches_manual():
    model = tiny.model("bert", num_labels=2)
    batches = tiny.batches(3, num_labels=2)
    out = evaluate(model, batches, "sst2", progress=False)
    with torch.no_grad():
        logits = torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    assert out["accuracy"] == pytest.approx(compute_metrics("sst2", logits, labels)["accuracy"])
    assert out["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-5)
    assert set(out) == {"accuracy", "loss"}


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_evaluate_through_make_dataloader_independent_of_batching(family):
    tok = tiny.tokenizer()
    model = tiny.model(family, num_labels=2)
    data = rows(37)
    task = TaskInfo.custom("t", text_keys="sentence", num_labels=2)
    a = evaluate(model, make_dataloader(data, tok, task, batch_size=5), task, progress=False)
    b = evaluate(model, make_dataloader(data, tok, task, batch_size=16, bucket=False), task, progress=False)
    assert set(a) == {"accuracy", "f1", "loss"}
    assert a == pytest.approx(b, abs=1e-5)
    assert a == pytest.approx(manual(model, make_dataloader(data, tok, task, batch_size=37), task), abs=1e-5)


def test_evaluate_regression():
    tok = tiny.tokenizer()
    model = tiny.model("bert", num_labels=1)
    task = get_task("stsb")
    data = [
        {"sentence1": r["sentence"], "sentence2": r["sentence"][::-1], "label": r["label"]}
        for r in rows(30, 1, 1)
    ]
    loader = make_dataloader(data, tok, task, batch_size=8)
    out = evaluate(model, loader, task, progress=False)
    assert set(out) == {"pearson", "spearmanr", "loss"}
    assert out == pytest.approx(manual(model, loader, task), abs=1e-5)
    assert out["loss"] > 1.0  # an untrained model is far from labels in [0, 5]


def test_evaluate_restores_mode_and_rejects_wrong_head():
    model = tiny.model("bert", num_labels=3)
    model.train()
    out = evaluate(model, tiny.batches(2, num_labels=3), "mnli", progress=False)
    assert model.training and 0.0 <= out["accuracy"] <= 1.0
    with pytest.raises(ValueError, match=r"num_labels=2\); give the model a head with 2 output"):
        evaluate(model, tiny.batches(1, num_labels=3), "sst2", progress=False)
    assert model.training  # restored even after an error
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [], "mnli", progress=False)


def test_evaluate_without_labels_and_dict_of_loaders():
    model = tiny.model("bert", num_labels=3)
    unlabeled = [{k: v for k, v in b.items() if k != "labels"} for b in tiny.batches(2)]
    assert evaluate(model, unlabeled, "mnli", progress=False) == {}
    test_split = [{**b, "labels": torch.full_like(b["labels"], -1)} for b in tiny.batches(2)]
    assert evaluate(model, test_split, "mnli", progress=False) == {}
    tok = tiny.tokenizer()
    loaders = {
        s: make_dataloader(rows(12, i, 3, pair=True), tok, "mnli")
        for i, s in enumerate(["validation_matched", "validation_mismatched"])
    }
    out = evaluate(model, loaders, "mnli", progress=False)
    assert set(out) == {f"{s}/{m}" for s in loaders for m in ("accuracy", "loss")}
    assert get_task("mnli").main_score(out) == out["validation_matched/accuracy"]
    assert out["validation_matched/accuracy"] == pytest.approx(
        evaluate(model, loaders["validation_matched"], "mnli", progress=False)["accuracy"]
    )


def test_evaluate_with_single_process_accelerator():
    from accelerate import Accelerator

    want, got = evaluate_prepared(Accelerator(cpu=True), 21)
    assert got == pytest.approx(want, abs=1e-6)


MULTI = """
import json
import sys
sys.path.insert(0, {tests!r})
from helpers import evaluate_prepared
from accelerate import debug_launcher


def body():
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    want, got = evaluate_prepared(acc, 13)
    result = dict(rank=acc.process_index, world=acc.num_processes, want=want, got=got)
    with open({out!r} + f"/rank{{acc.process_index}}.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    debug_launcher(body, num_processes=2)
"""


@pytest.mark.slow
def test_evaluate_two_processes_drops_duplicated_tail(tmp_path):
    """13 examples, batch 4, 2 processes: the last round is padded with repeats that must not be counted."""
    script = tmp_path / "multi.py"
    script.write_text(textwrap.dedent(MULTI.format(tests=str(TESTS), out=str(tmp_path))))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert sorted(r["rank"] for r in results) == [0, 1]
    for r in results:
        want, got = r["want"], r["got"]
        assert r["world"] == 2 and set(got) == {"accuracy", "loss"}
        assert got == pytest.approx(want, abs=1e-6)  # same as one process over exactly the 13 examples
        assert got["accuracy"] * 13 == pytest.approx(round(got["accuracy"] * 13))  # a count out of 13, not 16


@pytest.mark.slow
def test_real_sst2_teacher_on_validation_subset(sst2_teacher, sst2_glue_dir):
    teacher, glue = sst2_teacher, sst2_glue_dir
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForSequenceClassification.from_pretrained(teacher)
    loader = make_dataloader(
        load_split("sst2", "validation", glue), tok, "sst2", batch_size=32, max_length=64, limit=64
    )
    out = evaluate(model, loader, "sst2", progress=False)
    assert 0.75 < out["accuracy"] <= 1.0  # 86.35% on all 872
    assert 0.0 < out["loss"] < 0.6
    assert np.isclose(out["accuracy"] * 64, round(out["accuracy"] * 64))
