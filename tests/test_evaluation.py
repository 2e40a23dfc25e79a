"""structprune.evaluate: the one eval loop."""

from __future__ import annotations

import pytest
import tiny
import torch

from structprune import evaluate
from structprune.data import compute_metrics, get_task


def test_evaluate_tiny_classification_matches_manual():
    model = tiny.model("bert", num_labels=2)
    batches = tiny.batches(3, num_labels=2)
    out = evaluate(model, batches, "sst2", progress=False)
    with torch.no_grad():
        logits = torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    want = compute_metrics("sst2", logits.numpy(), labels.numpy())
    assert out["accuracy"] == pytest.approx(want["accuracy"])
    assert out["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-5)
    assert get_task("sst2").main_metric in out
