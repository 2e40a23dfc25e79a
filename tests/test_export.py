"""ONNX export: dynamic batch/sequence axes, parity with PyTorch in onnxruntime, int8 quantization runs."""

from __future__ import annotations

import logging
import warnings

import onnx
import onnxruntime
import pytest
import tiny
import torch
from helpers import pruned

import structprune as sp
from structprune.export.onnx import example_inputs, onnx_max_abs_diff

# Exports take seconds each: the fast suite runs BERT and MPNet here and DistilBERT below (the three
# layer layouts); the families sharing BERT's layout run in the slow suite.
FAMILIES = [
    pytest.param(f, marks=[] if f in ("bert", "mpnet") else [pytest.mark.slow]) for f in tiny.FAMILIES
]


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_model_exports_with_dynamic_axes_and_matches_pytorch(family, tmp_path):
    model = pruned(family)
    path = sp.export_onnx(model, tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    assert not list(tmp_path.glob("*.data"))  # one self-contained file
    for tensor in graph.input:
        assert [d.dim_param for d in tensor.type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert [o.name for o in graph.output] == ["logits"]
    uses_types = (
        getattr(model.config, "type_vocab_size", 0) > 1
    )  # BERT-style segment ids (not DistilBERT/MPNet)
    expected_inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_types else [])
    assert [i.name for i in graph.input] == expected_inputs

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch_size, seq_len in [(2, 8), (5, 3), (1, 31)]:  # shapes other than the traced one
        inputs = example_inputs(model, batch_size=max(batch_size, 2), seq_len=seq_len, seed=seq_len)
        inputs = {k: v[:batch_size] for k, v in inputs.items()}
        (got,) = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})
        with torch.no_grad():
            want = model(**inputs).logits
        assert got.shape == tuple(want.shape)
        assert torch.allclose(torch.from_numpy(got), want, atol=1e-4), (batch_size, seq_len)


def test_base_model_exports_every_output_and_int8_quantization_runs(tmp_path):
    model = pruned("distilbert", "base")
    path = sp.export_onnx(model, tmp_path / "base.onnx")
    names = [o.name for o in onnx.load(str(path)).graph.output]
    assert names == ["last_hidden_state"]
    assert onnx_max_abs_diff(model, path, example_inputs(model, 3, 11, seed=3)) < 1e-4

    q = sp.quantize_onnx(path, tmp_path / "base-int8.onnx")
    session = onnxruntime.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    inputs = example_inputs(model)
    hidden = session.run(["last_hidden_state"], {k: v.numpy() for k, v in inputs.items()})[0]
    assert hidden.shape == (2, 8, 32)  # accuracy is measured by benchmarks/quantize.py, not asserted here
    assert any(init.data_type == onnx.TensorProto.INT8 for init in onnx.load(str(q)).graph.initializer)


def test_export_arguments_are_checked(tmp_path):
    model = tiny.model("distilbert")
    with pytest.raises(ValueError, match=r"\.onnx"):
        sp.export_onnx(model, tmp_path / "model.bin")
    with pytest.raises(ValueError, match="opset"):
        sp.export_onnx(model, tmp_path / "m.onnx", opset=13)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        example_inputs(model, batch_size=1)
    with pytest.raises(FileNotFoundError):
        sp.quantize_onnx(tmp_path / "missing.onnx", tmp_path / "q.onnx")
    assert not list(tmp_path.iterdir())


def test_export_of_an_eval_model_is_quiet(tmp_path, caplog):
    model = pruned("bert").eval()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        sp.export_onnx(model, tmp_path / "model.onnx")
    assert [str(w.message) for w in caught] == []  # no "training mode" or torch-internal notes
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not model.training
