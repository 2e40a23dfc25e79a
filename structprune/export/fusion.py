"""ONNX Runtime's transformer fusions (Attention, LayerNormalization, BiasGelu) on an exported encoder.

The fusing is done by ONNX Runtime's own optimizer (``onnxruntime.transformers.optimizer.optimize_model``,
``model_type="bert"``, which covers every BERT-layout encoder); what is here only makes the exported graph
look the way its pattern matcher expects, and says what fused:

1. **Static head counts.** transformers reshapes q/k/v with ``-1`` heads (``view(B, T, -1, d)``); the
   fusion reads the head count of each attention from that reshape's shape and gives up on ``-1``. Passing
   ``num_heads`` does not help a pruned model (one number for every layer), so :func:`static_head_reshapes`
   writes ``[0, 0, n, d]`` into each such reshape, with ``n`` read from the static width of its input.
   With that, ``num_heads=0, hidden_size=0`` makes the optimizer infer each layer's count on its own.
2. **The attention mask.** The fusion matches the additive mask that transformers' SDPA path used to build
   (``Where(Cast(1 - Expand(mask[:, None, None, :])), min, ...)``); transformers 5 builds it differently,
   and its SDPA decomposition adds an ``IsNaN``/``Where`` after the softmax. The export wrapper therefore
   builds that mask itself (:func:`additive_mask`; transformers passes a prepared 4D mask through
   unchanged) and exports with eager attention. The exporter folds the mask's two ``Unsqueeze`` into
   one; :func:`split_mask_unsqueeze` splits them again.

A fusion that does not happen is reported (:class:`FusionReport`, a warning), never silent: the graph
stays correct, only slower.

The residual adds and their LayerNorms are left as ``Add`` + ``LayerNormalization``, not fused into
``SkipLayerNormalization``: on CPU, onnxruntime 1.32's ``SkipLayerNormalization`` kernel is a scalar loop (a
division per element); on a [32, 128, 384] batch it took 6.5 ms where ``Add`` + ``LayerNormalization`` took
1.9 ms (2 threads, AMD EPYC; ``benchmarks/results/ort_layernorm.md``), and a BERT layer runs two of them at
the model's full width however much of the layer was pruned. onnxruntime fuses the pair again when it loads
a graph at its default optimization level, so a CPU session should be opened without that rewrite:
:data:`CPU_DISABLED_OPTIMIZERS` (``sp.onnx_session`` does it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

OPTIMIZER_MODEL_TYPE = "bert"
"""``optimize_model``'s model type for every supported family (BERT, RoBERTa, XLM-R, ELECTRA and DistilBERT
share its patterns; families it cannot fuse, e.g. MPNet's relative attention bias, stay unfused)."""

CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
"""onnxruntime graph rewrites a CPU session should skip (``InferenceSession(..., disabled_optimizers=...)``):
``SkipLayerNormFusion`` turns ``Add`` + ``LayerNormalization`` into the slower ``SkipLayerNormalization`` (see
the module docstring)."""

GELU_OPS = ("BiasGelu", "FastGelu", "Gelu", "GemmFastGelu")
"""The fused forms of the FFN activation; any one of them counts."""


# --------------------------------------------------------------------------- export side


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, T]`` 0/1 mask -> ``[B, 1, T, T]`` additive mask (0 kept, dtype's min masked), built in the
    form ONNX Runtime's attention fusion recognizes.

    Example::

        additive_mask(torch.tensor([[1, 1, 0]]))[0, 0, 0]  # tensor([0., 0., -3.4028e+38])
    """
    b, t = attention_mask.shape
    expanded = attention_mask[:, None, None, :].expand(b, 1, t, t)  # [B, 1, T, T]
    inverted = 1.0 - expanded.to(dtype)
    return inverted.masked_fill(inverted.to(torch.bool), torch.finfo(dtype).min)


# --------------------------------------------------------------------------- graph preparation


def _constants(graph) -> dict:
    from onnx import numpy_helper

    out = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _scalar(consts: dict, name: str) -> int | None:
    value = consts.get(name)
    if value is None or value.size != 1:
        return None
    return int(value.reshape(-1)[0])


def _static_widths(model) -> dict[str, tuple[int, int | None]]:
    """``(rank, last dimension or None)`` of every value ONNX shape inference knows a shape for, by name."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    widths = {}
    for vi in [*g.value_info, *g.input, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        last = dims[-1] if dims else None
        widths[vi.name] = (
            len(dims),
            last.dim_value if last is not None and last.HasField("dim_value") else None,
        )
    return widths


def static_head_reshapes(model) -> int:
    """In place: every ``Reshape(x[B, T, n*d], Concat(B, T, -1, d))`` becomes ``Reshape(x, [0, 0, n, d])``.

    ``n`` is read from ``x``'s static width, so each layer gets its own head count. Returns how many
    reshapes changed.
    """
    import numpy as np
    from onnx import numpy_helper

    g = model.graph
    consts = _constants(g)
    producer = {out: node for node in g.node for out in node.output}
    widths = _static_widths(model)
    changed = 0
    shapes: dict[tuple[int, int], str] = {}
    for node in g.node:
        if node.op_type != "Reshape":
            continue
        concat = producer.get(node.input[1])
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
            continue
        heads, head_size = _scalar(consts, concat.input[2]), _scalar(consts, concat.input[3])
        rank, width = widths.get(node.input[0], (None, None))
        if heads != -1 or not head_size or head_size <= 0 or rank != 3 or not width or width % head_size:
            continue
        key = (width // head_size, head_size)
        if key not in shapes:
            shapes[key] = f"structprune_heads_{key[0]}x{key[1]}"
            g.initializer.append(numpy_helper.from_array(np.array([0, 0, *key], dtype=np.int64), shapes[key]))
        node.input[1] = shapes[key]  # [B, T, n*d] -> [B, T, n, d]; 0 copies the input's dimension
        for attr in [a for a in node.attribute if a.name == "allowzero"]:
            node.attribute.remove(attr)  # allowzero=1 would read the 0s literally
        changed += 1
    return changed


def split_mask_unsqueeze(model, mask_input: str = "attention_mask") -> int:
    """In place: ``Unsqueeze(mask, [1, 2])`` becomes ``Unsqueeze(Unsqueeze(mask, [1]), [2])``. Returns how
    many were split."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    consts = _constants(g)
    split = 0
    for i, node in enumerate(list(g.node)):
        if node.op_type != "Unsqueeze" or node.input[0] != mask_input or len(node.input) < 2:
            continue
        axes = consts.get(node.input[1])
        if axes is None or [int(a) for a in axes.reshape(-1)] != [1, 2]:
            continue
        names = [f"structprune_axis_{a}" for a in (1, 2)]
        for name, a in zip(names, (1, 2), strict=True):
            if name not in consts:
                g.initializer.append(numpy_helper.from_array(np.array([a], dtype=np.int64), name))
                consts[name] = np.array([a])
        middle = f"{node.output[0]}_structprune_mid"
        g.node.insert(i + split, helper.make_node("Unsqueeze", [mask_input, names[0]], [middle]))
        node.input[0], node.input[1] = middle, names[1]
        split += 1
    return split


# --------------------------------------------------------------------------- fusion


@dataclass(frozen=True)
class FusionReport:
    """What ONNX Runtime's optimizer fused, against what a fully fused encoder of this shape has.

    ``fused``: the optimizer's counts of its fused operators (nonzero ones). ``expected``: per layer one
    ``Attention``, two ``LayerNormalization`` and one fused GELU (``Gelu`` stands for any of
    :data:`GELU_OPS`). ``missing``: one line per shortfall ("Attention: 0 of 6"); empty when complete.

    Example::

        report.complete, report.fused["Attention"], report.missing
    """

    fused: dict[str, int]
    expected: dict[str, int]
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing

    def counts(self) -> str:
        """``"Attention 6, LayerNormalization 13, ..."`` (``"nothing"`` when nothing fused)."""
        return ", ".join(f"{k} {v}" for k, v in self.fused.items()) or "nothing"

    def summary(self) -> str:
        return f"fused {self.counts()}" + ("" if self.complete else f"; not fused: {'; '.join(self.missing)}")


def expected_fusions(layers: int, attention_layers: int, ffn_layers: int) -> dict[str, int]:
    """A fully fused encoder: an ``Attention`` per layer with heads, two ``LayerNormalization`` per layer
    (after attention and after the FFN; the embeddings' one comes on top) and a fused GELU per layer with FFN
    neurons."""
    return {"Attention": attention_layers, "LayerNormalization": 2 * layers, "Gelu": ffn_layers}


def _shortfalls(fused: dict[str, int], expected: dict[str, int]) -> list[str]:
    got = dict(fused)
    got["Gelu"] = sum(fused.get(op, 0) for op in GELU_OPS)
    return [f"{op}: {got.get(op, 0)} of {n}" for op, n in expected.items() if got.get(op, 0) < n]


class _DropExpected(logging.Filter):
    """ORT notes that are expected for a pruned model: its attention width (heads x head size) differs
    from the model width, which the fusion handles; it logs a warning that says the opposite."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is not same as weight matrix dimension" not in record.getMessage()


def _prepared(src: str | os.PathLike):
    import onnx

    graph = onnx.load(str(src))
    reshapes, unsqueezes = static_head_reshapes(graph), split_mask_unsqueeze(graph)
    logger.debug(
        "prepared for fusion: %d head reshapes made static, %d mask unsqueezes split", reshapes, unsqueezes
    )
    return graph


def fuse(src: str | os.PathLike, out: str | os.PathLike, expected: dict[str, int]) -> FusionReport:
    """Prepare the exported graph ``src`` (:func:`static_head_reshapes`, :func:`split_mask_unsqueeze`), run
    ONNX Runtime's transformer optimizer on it and write the result to ``out``.

    Example::

        report = fuse("model.onnx", "model-fused.onnx", expected_fusions(6, 6, 6))
    """
    import onnx
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    graph = _prepared(src)
    options = FusionOptions(OPTIMIZER_MODEL_TYPE)
    # the 2D 0/1 mask itself, not "mask index" (which assumes right padding: wrong for left-padded batches)
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    # Add + LayerNormalization, not SkipLayerNormalization: the faster pair on CPU (module docstring)
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    quiet = _DropExpected()
    ort_loggers = [
        logging.getLogger(n) for n in ("fusion_attention", "onnxruntime.transformers.fusion_attention")
    ]
    for lg in ort_loggers:
        lg.addFilter(quiet)
    try:
        optimized = optimize_model(
            graph,
            model_type=OPTIMIZER_MODEL_TYPE,
            num_heads=0,  # 0: read from each attention's reshape (per layer, see static_head_reshapes)
            hidden_size=0,
            optimization_options=options,
            opt_level=0,  # the Python fusions only; the session applies ORT's own graph optimizations at load
        )
    except Exception as err:  # the optimizer's pattern code on a layout it does not know: keep the graph
        logger.debug("ONNX Runtime's optimizer failed", exc_info=True)
        onnx.save(_prepared(src), str(out))  # the optimizer may have left ``graph`` half rewritten
        return FusionReport(
            fused={}, expected=dict(expected), missing=[f"everything (the optimizer failed: {err!r})"]
        )
    finally:
        for lg in ort_loggers:
            lg.removeFilter(quiet)
    fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    optimized.save_model_to_file(str(out), use_external_data_format=False)
    return FusionReport(fused=fused, expected=dict(expected), missing=_shortfalls(fused, expected))


def warn_if_incomplete(report: FusionReport, path: Path) -> None:
    """Warn that ``path`` is only partly fused, naming what is missing (nothing when it is complete)."""
    if report.complete:
        return
    from ..progress import warn

    warn(
        f"ONNX Runtime fused only part of {path.name}: {'; '.join(report.missing)} (fused: {report.counts()}). "
        "The graph is correct but slower than a fully fused one: ONNX Runtime's transformer optimizer did not "
        "recognize those patterns (e.g. MPNet's attention, which adds a relative position bias, or a family that "
        "builds its own attention masks; or an onnxruntime whose fusions differ from the tested 1.32)."
    )
