"""The real MiniLM SST-2 teacher pruned to 50% FLOPs: every loading path and ONNX parity (slow)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import NO_STRUCTPRUNE_SCRIPT, run_without_structprune
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import structprune as sp
from structprune.checkpoint import registry
from structprune.checkpoint import remote_modeling as rm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm(tmp_path_factory, sst2_teacher, sst2_glue_dir):
    from structprune.data import load_split, make_dataloader

    model = AutoModelForSequenceClassification.from_pretrained(sst2_teacher).eval()
    tok = AutoTokenizer.from_pretrained(sst2_teacher)
    loader = make_dataloader(
        load_split("sst2", "validation", data_dir=sst2_glue_dir), tok, "sst2", 16, max_length=64, limit=48
    )
    batches = list(loader)
    sp.prune_(model, sp.allocate(sp.score(model, batches[:2], method="taylor"), model, flops=0.5))
    folder = sp.save_pretrained(
        model, tmp_path_factory.mktemp("minilm") / "pruned", card=sp.CardInfo(budget="50% encoder FLOPs")
    )
    return model, batches, folder


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_minilm_pruned_to_half_the_flops_loads_everywhere(minilm, sst2_teacher, tmp_path):
    model, batches, folder = minilm
    s = sp.arch.view(model).structure
    assert not registry.is_stock(s)  # non-uniform heads/FFN per layer: the hard case
    assert sp.cost(model).encoder_flops <= 0.5 * sp.dense_cost(model).encoder_flops * 1.01
    assert (folder / "model.safetensors").stat().st_size < 0.9 * (
        sst2_teacher / "model.safetensors"
    ).stat().st_size
    assert {"tokenizer.json", "README.md", "structure.png", rm.MODELING_FILE} <= {
        p.name for p in folder.iterdir()
    }
    # the kept neurons as bit masks, not ~3,500 integers one per line (about 45 KB more)
    assert (folder / "config.json").stat().st_size < 10_000

    for loaded in (sp.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(folder)):
        for batch in batches[:2]:
            assert torch.equal(logits(loaded, batch), logits(model, batch))

    # Without structprune: the bundled modeling file.
    batch = batches[0]
    ref = tmp_path / "ref.safetensors"
    save_file(
        {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "logits": logits(model, batch),
        },
        ref,
    )
    (tmp_path / "cases.json").write_text(json.dumps([{"dir": str(folder), "ref": str(ref), "stock": False}]))
    proc = run_without_structprune(
        NO_STRUCTPRUNE_SCRIPT, [str(tmp_path / "cases.json"), str(tmp_path / "out.json")], tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = json.loads((tmp_path / "out.json").read_text()).values()
    assert result["max_diff"] < 1e-5 and "trust_remote_code=True" in result["plain"]


def test_minilm_pruned_exports_to_onnx_with_parity(minilm, tmp_path):
    model, batches, _ = minilm
    inputs = {k: v for k, v in batches[0].items() if k != "labels"}
    path = sp.export_onnx(model, tmp_path / "minilm.onnx", inputs=inputs)
    for batch in batches[1:3]:
        diff = sp.export.onnx.onnx_max_abs_diff(
            model, path, {k: v for k, v in batch.items() if k != "labels"}
        )
        assert diff < 1e-4
