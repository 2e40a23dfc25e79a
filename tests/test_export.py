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

# Exports take seconds each: the fast suite runs BERT, MPNet, ModernBERT and DeBERTa-v2 here and DistilBERT
# below (the five layer layouts); the families sharing BERT's layout run in the slow suite.
FAST = ("bert", "mpnet", "modernbert", "deberta-v2")
FAMILIES = [pytest.param(f, marks=[] if f in FAST else [pytest.mark.slow]) for f in tiny.FAMILIES]


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


# --------------------------------------------------------------------------- ONNX Runtime fusions


def _uneven_heads(family: str = "bert"):
    """Every layer kept, each with its own head count (1, 3, 2 of 4) and FFN width: what the fusion must
    read per layer."""
    model = tiny.model(family)
    mask = sp.Mask.full(model)
    mask.head[0, [0, 2, 3]] = False
    mask.head[1, 1] = False
    mask.head[2, [0, 1]] = False
    mask.ffn[0, :20] = False
    mask.ffn[2, 10:15] = False
    return sp.prune_(model, mask)


def _attention_heads(path) -> list[int]:
    graph = onnx.load(str(path)).graph
    return [
        next(a.i for a in n.attribute if a.name == "num_heads")
        for n in graph.node
        if n.op_type == "Attention"
    ]


@pytest.fixture(scope="module")
def optimized_uneven(tmp_path_factory):
    model = _uneven_heads()
    return model, sp.export_onnx(model, tmp_path_factory.mktemp("fused") / "uneven.onnx", optimize=True)


@pytest.mark.parametrize("which", ["dense", "uneven heads"])
def test_optimized_export_fuses_every_layer_with_its_own_head_count(which, optimized_uneven, tmp_path):
    if which == "dense":
        model = tiny.model("bert")
        out = sp.export_onnx(model, tmp_path / "dense.onnx", optimize=True)
    else:
        model, out = optimized_uneven
    heads = sp.arch.view(model).structure.heads_per_layer
    assert heads == ([4, 4, 4] if which == "dense" else [1, 3, 2])
    assert isinstance(out, sp.export.OptimizedOnnx) and out.fusion.complete and out.fusion.missing == []
    layers = len(heads)
    assert out.fusion.fused["Attention"] == layers
    assert out.fusion.fused["LayerNormalization"] == 2 * layers + 1  # + the embeddings'
    assert "SkipLayerNormalization" not in out.fusion.fused  # slower on CPU (structprune/export/fusion.py)
    assert out.fusion.fused["BiasGelu"] == layers
    assert _attention_heads(out) == heads  # each layer's count, read from its own reshape
    assert out.max_abs_diff is not None and out.max_abs_diff <= 1e-4
    # the unfused pieces are gone: no softmax or erf (GELU) left outside the fused operators
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "Softmax" not in ops and "Erf" not in ops

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch_size, seq_len, left in [(1, 31, False), (5, 3, False), (3, 17, True)]:
        inputs = example_inputs(model, batch_size=max(batch_size, 2), seq_len=seq_len, seed=seq_len)
        inputs = {k: v[:batch_size] for k, v in inputs.items()}
        if left:  # padding in front: the fused attention takes the 0/1 mask itself, not a length
            inputs["attention_mask"] = inputs["attention_mask"].flip(-1)
            assert inputs["attention_mask"][0, 0] == 0
        (got,) = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})
        with torch.no_grad():
            want = model(**inputs).logits
        assert torch.allclose(torch.from_numpy(got), want, atol=1e-4), (batch_size, seq_len, left)


def test_int8_on_top_of_the_optimized_graph_runs_and_stays_close(optimized_uneven, tmp_path):
    model, out = optimized_uneven
    q = sp.quantize_onnx(out, tmp_path / "uneven-int8.onnx")  # OptimizedOnnx goes where a path does
    ops = [n.op_type for n in onnx.load(str(q)).graph.node]
    assert ops.count("QAttention") == 3  # the fused attention is quantized as a whole
    assert "MatMulInteger" in ops
    inputs = example_inputs(model, batch_size=8, seq_len=24, seed=5)
    with torch.no_grad():
        want = model(**inputs).logits
    diff = onnx_max_abs_diff(model, q, inputs)
    assert 0 < diff < 0.05 * float(want.abs().max()) + 1e-3  # int8 changes the numbers, a little
    assert q.stat().st_size < 0.6 * out.path.stat().st_size


@pytest.mark.parametrize("optimize", [False, True])
def test_int8_per_channel_handles_a_layer_whose_ffn_was_pruned_away(optimize, tmp_path):
    """A layer with no FFN neurons left exports zero-width weights; onnxruntime's per-channel quantizer fails on
    them, so quantize_onnx leaves them as they are and quantizes the rest, one scale per output column."""
    model = tiny.model("bert")
    mask = sp.Mask.full(model)
    mask.ffn[1, :] = False  # layer 1: FFN gone
    mask.head[2, [0, 1]] = False
    model = sp.prune_(model, mask).eval()
    out = sp.export_onnx(model, tmp_path / "m.onnx", optimize=optimize)
    graph = onnx.load(str(out)).graph
    empty = {i.name for i in graph.initializer if 0 in i.dims}
    assert empty  # the zero-width FFN weights are in the graph
    inputs = example_inputs(model, batch_size=8, seq_len=24, seed=5)
    with torch.no_grad():
        want = model(**inputs).logits
    for per_channel in (True, False):
        q = sp.quantize_onnx(out, tmp_path / f"m-int8-{per_channel}.onnx", per_channel=per_channel)
        qgraph = onnx.load(str(q)).graph
        scales = [
            i
            for i in qgraph.initializer
            if i.name.endswith("_scale") and i.data_type == onnx.TensorProto.FLOAT
        ]
        assert any(len(i.dims) == 1 and i.dims[0] > 1 for i in scales) == per_channel  # a scale per column
        untouched = [n for n in qgraph.node if empty.intersection(n.input)]
        assert "MatMul" in {n.op_type for n in untouched}  # left in fp32
        assert not {"MatMulInteger", "QAttention"}.intersection(n.op_type for n in untouched)
        diff = onnx_max_abs_diff(model, q, inputs)
        assert 0 < diff < 0.05 * float(want.abs().max()) + 1e-3


def test_a_family_the_optimizer_cannot_fuse_warns_and_stays_correct(tmp_path):
    model = pruned("mpnet")  # MPNet adds a relative position bias inside attention: no Attention pattern
    with pytest.warns(UserWarning, match=r"fused only part of mpnet\.onnx: Attention: 0 of 2") as caught:
        out = sp.export_onnx(model, tmp_path / "mpnet.onnx", optimize=True)
    assert caught[0].filename == __file__  # attributed to the caller's line
    assert not out.fusion.complete and out.fusion.missing == ["Attention: 0 of 2"]
    assert out.fusion.fused["LayerNormalization"] == 4  # what does fuse still fuses (the layers')
    assert out.max_abs_diff <= 1e-4
    inputs = example_inputs(model, 3, 11, seed=2)
    assert onnx_max_abs_diff(model, out, inputs) < 1e-4


def test_a_model_that_builds_its_own_masks_exports_its_own_mask_path(tmp_path, monkeypatch):
    from structprune.export import onnx as export_module

    model = _uneven_heads()
    assert export_module._takes_prepared_mask(model, ["input_ids", "attention_mask", "token_type_ids"])
    monkeypatch.setattr(export_module, "_takes_prepared_mask", lambda *a, **k: False)
    with pytest.warns(UserWarning, match=r"Attention: 0 of 3 \(fused: "):
        out = sp.export_onnx(model, tmp_path / "m.onnx", optimize=True)
    assert "Attention" not in out.fusion.fused and out.fusion.fused["LayerNormalization"] == 7
    assert out.max_abs_diff <= 1e-4
    assert onnx_max_abs_diff(model, out, example_inputs(model, 4, 9, seed=3)) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in ("modernbert", "deberta-v2") if f in tiny.FAMILIES])
def test_families_without_a_fusable_attention_export_correct_graphs_and_say_so(family, tmp_path):
    model = pruned(family)
    with pytest.warns(UserWarning, match="fused only part"):
        out = sp.export_onnx(model, tmp_path / f"{family}.onnx", optimize=True)
    assert not out.fusion.complete and out.max_abs_diff <= 1e-4


def test_an_optimizer_failure_keeps_the_unfused_graph_and_says_so(tmp_path, monkeypatch):
    import onnxruntime.transformers.optimizer as ort_optimizer

    def broken(*args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(ort_optimizer, "optimize_model", broken)
    model = pruned("bert")
    with pytest.warns(UserWarning, match="the optimizer failed: IndexError"):
        out = sp.export_onnx(model, tmp_path / "m.onnx", optimize=True)
    assert out.fusion.fused == {} and not out.fusion.complete
    assert out.max_abs_diff <= 1e-4  # the prepared, unfused graph is still checked against PyTorch
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary files left behind


def test_static_head_reshapes_give_each_layer_its_head_count(tmp_path):
    from structprune.export.fusion import split_mask_unsqueeze, static_head_reshapes

    model = _uneven_heads()
    path = sp.export_onnx(model, tmp_path / "plain.onnx")  # transformers reshapes q/k/v with -1 heads
    graph = onnx.load(str(path))
    assert static_head_reshapes(graph) == 9  # q, k, v of 3 layers
    shapes = {i.name: onnx.numpy_helper.to_array(i).tolist() for i in graph.graph.initializer}
    reshapes = [shapes.get(n.input[1]) for n in graph.graph.node if n.op_type == "Reshape"]
    heads = [s[2] for s in reshapes if s is not None and len(s) == 4 and s[:2] == [0, 0]]
    assert heads == [1, 1, 1, 3, 3, 3, 2, 2, 2]
    assert split_mask_unsqueeze(graph) == 0  # the plain export passes the 2D mask on: nothing to split
    assert (
        onnx_max_abs_diff(model, _save(graph, tmp_path / "static.onnx"), example_inputs(model, 2, 7)) < 1e-4
    )


def _save(graph, path):
    onnx.save(graph, str(path))
    return path


def test_cli_export_optimize_and_int8(tmp_path, capsys):
    from structprune import cli

    folder = sp.save_pretrained(_uneven_heads(), tmp_path / "model", tokenizer=tiny.tokenizer(), card=False)
    code = cli.main(["export", str(folder), "--out", str(tmp_path / "m.onnx"), "--optimize", "--int8"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ONNX Runtime fusion: fused Attention 3," in out and "not fused" not in out
    assert "max |int8 - PyTorch|" in out
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "m-int8.onnx").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "electra", "distilbert"])
def test_other_families_onnx_runtime_recognizes_fuse_completely(family, tmp_path):
    model = _uneven_heads(family)
    out = sp.export_onnx(model, tmp_path / f"{family}.onnx", optimize=True)
    assert out.fusion.complete, out.fusion.summary()
    assert _attention_heads(out) == [1, 3, 2]
    assert out.max_abs_diff <= 1e-4


def test_onnx_session_skips_the_cpu_slow_skip_layer_norm_rewrite(optimized_uneven, tmp_path):
    """onnxruntime would fuse the export's Add + LayerNormalization into SkipLayerNormalization at load time
    (slower on CPU); sp.onnx_session opens the graph without that rewrite, and the outputs are the same."""
    import onnxruntime as ort

    model, out = optimized_uneven
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "LayerNormalization" in ops and "SkipLayerNormalization" not in ops

    def optimized_ops(make) -> set[str]:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        dump = tmp_path / f"dump-{len(list(tmp_path.iterdir()))}.onnx"
        opts.optimized_model_filepath = str(dump)
        session = make(opts)
        return session, {n.op_type for n in onnx.load(str(dump)).graph.node}

    _, plain = optimized_ops(lambda o: ort.InferenceSession(str(out), o, providers=["CPUExecutionProvider"]))
    assert "SkipLayerNormalization" in plain  # what a default session does to the graph
    session, ours = optimized_ops(lambda o: sp.onnx_session(out, threads=1, options=o))
    assert "SkipLayerNormalization" not in ours and "LayerNormalization" in ours
    inputs = example_inputs(model, batch_size=3, seq_len=17, seed=4)
    (got,) = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        want = model(**inputs).logits
    assert torch.allclose(torch.from_numpy(got), want, atol=1e-4)


def test_onnx_session_arguments_are_checked(optimized_uneven, tmp_path):
    _, out = optimized_uneven
    with pytest.raises(FileNotFoundError, match="No ONNX file"):
        sp.onnx_session(tmp_path / "missing.onnx")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads="):
            sp.onnx_session(out, threads=bad)
