"""ONNX export of (pruned) encoders, checked against PyTorch in onnxruntime; optional int8 quantization.

The exporter is ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript): the supported
exporter of torch 2.x. The TorchScript exporter (``dynamo=False``) is deprecated and *traces*:
transformers' attention code branches on Python values (e.g. ``is_causal`` in the SDPA path), which a
trace freezes silently (it warns ``TracerWarning``). ``torch.export`` captures the graph with symbolic
batch and sequence sizes instead. Optimum is not used: it has no exporter for per-layer-pruned
configs, and torch.onnx already handles every supported family.

``optimize=True`` also runs ONNX Runtime's transformer optimizer (fused Attention, LayerNormalization,
BiasGelu; per-layer head counts), see ``fusion.py``; ``quantize_onnx`` on the result gives int8 on top;
``onnx_session`` opens either in onnxruntime the way it runs fastest on CPU.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import torch
from torch import nn

from ..arch import view
from ..batches import eager_attention
from ..errors import require
from .fusion import (
    CPU_DISABLED_OPTIMIZERS,
    FusionReport,
    additive_mask,
    expected_fusions,
    fuse,
    warn_if_incomplete,
)

logger = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def _input_names(model: nn.Module) -> list[str]:
    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and getattr(model.config, "type_vocab_size", 0) > 1:
        names.append("token_type_ids")
    return names


def example_inputs(
    model: nn.Module, batch_size: int = 2, seq_len: int = 8, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random token ids (with some padding) shaped like what ``model`` takes; used to trace and to check."""
    if batch_size < 2 or seq_len < 2:
        raise ValueError(
            "Use batch_size >= 2 and seq_len >= 2: size-1 dimensions would be fixed in the graph."
        )
    g = torch.Generator().manual_seed(seed)
    vocab = int(model.config.vocab_size)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch_size, seq_len), generator=g)
    mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    mask[0, seq_len // 2 :] = 0  # [B, T], first row padded
    out = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in _input_names(model):
        types = torch.zeros(batch_size, seq_len, dtype=torch.long)
        types[:, seq_len // 2 :] = 1
        out["token_type_ids"] = types
    return out


def _with_gap(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same batch with a run of masked tokens inside the second row (after its first token, which stays
    real: families with local attention give padded first tokens arbitrary outputs). A mask is not always
    right padding; a graph that reads it as a length is wrong here."""
    out = dict(inputs)
    mask = inputs["attention_mask"].clone()  # [B, T]
    mask[1, 1 : 1 + max(1, mask.shape[1] // 3)] = 0
    out["attention_mask"] = mask
    return out


def _takes_prepared_mask(model: nn.Module, names: list[str], atol: float = 1e-5) -> bool:
    """Whether ``model`` computes the same outputs from the prepared additive mask (:func:`additive_mask`) as
    from its 0/1 mask, on a batch with masked tokens inside a row (eager attention, PyTorch only). Families
    that build their own masks from the 0/1 one (ModernBERT's sliding windows) do not; they export with
    their own mask path and their attention stays unfused."""
    x = _with_gap(example_inputs(model, batch_size=3, seq_len=13, seed=2))
    x = {n: x[n] for n in names}
    prepared = {**x, "attention_mask": additive_mask(x["attention_mask"])}
    try:
        with torch.no_grad(), eager_attention(model):
            want = [t for t in model(**x, return_dict=True).values() if isinstance(t, torch.Tensor)]
            got = [t for t in model(**prepared, return_dict=True).values() if isinstance(t, torch.Tensor)]
    except Exception:  # a family that refuses 4D masks
        logger.debug("the model does not take a prepared 4D mask", exc_info=True)
        return False
    return len(want) == len(got) and all(
        a.shape == b.shape and float((a - b).abs().max()) <= atol for a, b in zip(want, got, strict=True)
    )


class _Positional(nn.Module):
    """Calls the model with named inputs and returns its tensor outputs as a tuple (ONNX wants positions).

    ``additive_mask=True`` passes the model a prepared ``[B, 1, T, T]`` additive mask built from the 0/1
    ``attention_mask`` input, in the form ONNX Runtime's attention fusion matches (``fusion.py``).
    """

    def __init__(self, model: nn.Module, additive_mask: bool = False):
        super().__init__()
        self.model = model
        self.additive_mask = additive_mask

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        if self.additive_mask:
            attention_mask = additive_mask(attention_mask)  # [B, T] -> [B, 1, T, T]
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}  # [B, T] each (or the 4D mask)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.model(**kwargs, return_dict=True)
        return tuple(v for v in out.values() if isinstance(v, torch.Tensor))


_EXPORTER_LOGGERS = ("torch.onnx._internal.exporter._registration",)


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Raise these loggers to ERROR for the duration (their warnings are not about the user's model)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _output_names(model: nn.Module, inputs: dict[str, torch.Tensor]) -> list[str]:
    with torch.no_grad():
        out = model(**inputs, return_dict=True)
    return [k for k, v in out.items() if isinstance(v, torch.Tensor)]


@dataclass(frozen=True)
class OptimizedOnnx:
    """What ``export_onnx(..., optimize=True)`` wrote: the file, what ONNX Runtime fused in it, and its largest
    difference from PyTorch on the check batches. It is ``os.PathLike`` (and ``str()`` gives the path), so it
    goes wherever a path does.

    Example::

        out = sp.export_onnx(model, "model.onnx", optimize=True)
        out.fusion.fused      # {'Attention': 6, 'LayerNormalization': 13, 'BiasGelu': 6, ...}
        out.fusion.complete   # False (and a warning) when a layer's attention, LayerNorm or GELU did not fuse
        sp.quantize_onnx(out, "model-int8.onnx")
    """

    path: Path
    fusion: FusionReport
    max_abs_diff: float | None
    """Largest |onnxruntime - PyTorch| over the check batches (None with ``check=False``)."""

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


@overload
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = ...,
    inputs: dict[str, torch.Tensor] | None = ...,
    check: bool = ...,
    atol: float = ...,
    optimize: Literal[False] = ...,
) -> Path: ...


@overload
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = ...,
    inputs: dict[str, torch.Tensor] | None = ...,
    check: bool = ...,
    atol: float = ...,
    optimize: Literal[True],
) -> OptimizedOnnx: ...


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = 18,
    inputs: dict[str, torch.Tensor] | None = None,
    check: bool = True,
    atol: float = 1e-4,
    optimize: bool = False,
) -> Path | OptimizedOnnx:
    """Export ``model`` to one ONNX file with dynamic batch and sequence axes; check it in onnxruntime.

    Inputs are ``input_ids``, ``attention_mask`` (and ``token_type_ids`` for families that use them);
    outputs are the model's tensor outputs by name (``logits``; ``last_hidden_state``, ...). With
    ``check=True`` the file is run in onnxruntime on ``inputs`` and on a second, differently shaped batch
    (with masked tokens inside a row, not only at its end), and must match PyTorch within ``atol``. The
    file is written atomically.

    ``optimize=True`` runs ONNX Runtime's transformer optimizer on the graph: one fused ``Attention`` per
    layer (each with its own head count), ``LayerNormalization``, ``BiasGelu``. The check then runs on
    the optimized graph, and the return value is an :class:`OptimizedOnnx` that says what fused; a fusion
    that did not happen also gives a warning (the graph is still correct, only slower).

    Example::

        sp.export_onnx(model, "model.onnx")
        session = sp.onnx_session("model.onnx")                       # or onnxruntime.InferenceSession
        feed = {i.name: enc[i.name] for i in session.get_inputs()}   # BERT also takes token_type_ids
        session.run(["logits"], feed)                                  # enc = tokenizer(..., return_tensors="np")
        sp.export_onnx(model, "fast.onnx", optimize=True).fusion.fused   # {'Attention': 6, ...}
    """
    require("ONNX export", "onnx", "onnxscript", *(["onnxruntime"] if check or optimize else []))
    v = view(model)  # a supported, consistent model
    structure = v.structure
    # fully masked padding rows (sliding windows) differ between SDPA and the exported graph: eager throughout
    eager = optimize or v.spec.sliding_window
    fusable = False  # optimize=True and the model takes the mask ONNX Runtime's attention fusion matches
    if opset < 18:
        raise ValueError(f"opset={opset}: the torch.export-based exporter needs opset 18 or newer.")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"Give the ONNX file a .onnx name, not {path.name!r}.")
    was_training = model.training
    model.eval()
    names = _input_names(model)
    inputs = inputs if inputs is not None else example_inputs(model)
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ValueError(f"inputs lacks {missing}; give {names} (batch >= 2, sequence >= 2).")
    args = tuple(inputs[n] for n in names)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    report = None
    diff = None
    try:
        outputs = _output_names(model, {n: inputs[n] for n in names})
        fusable = optimize and _takes_prepared_mask(model, names)

        def export(fusable: bool):
            with (
                warnings.catch_warnings(),
                _quiet_loggers(*_EXPORTER_LOGGERS),
                eager_attention(model) if eager else contextlib.nullcontext(),
            ):
                # torch's exporter notes that are not about this model: unused axis names, deprecations
                # inside torch itself, and torchvision operators it skips because torchvision is not installed
                warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
                warnings.filterwarnings(
                    "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
                )
                return torch.onnx.export(
                    # eval: the wrapper too (else "exporting in training mode")
                    _Positional(model, additive_mask=fusable).eval(),
                    args,
                    input_names=names,
                    output_names=outputs,
                    opset_version=opset,
                    dynamo=True,
                    dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                    verbose=False,
                )

        try:
            program = export(fusable)
        except Exception:
            if not fusable:
                raise
            logger.info("export with the prepared attention mask failed; exporting the model's own mask path")
            fusable = False
            program = export(fusable)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        raw = path.with_name(f".{path.name}.unfused.tmp")
        try:
            if optimize:
                program.save(str(raw), external_data=False)
                layers = structure.heads_per_layer
                expected = expected_fusions(
                    len(layers), sum(h > 0 for h in layers), sum(n > 0 for n in structure.ffn_per_layer)
                )
                report = fuse(raw, tmp, expected)
                logger.info("ONNX Runtime fusion of %s: %s", path.name, report.summary())
            else:
                program.save(str(tmp), external_data=False)
            if check:
                second = _with_gap(example_inputs(model, batch_size=3, seq_len=13, seed=1))
                with eager_attention(model) if v.spec.sliding_window else contextlib.nullcontext():
                    diff = max(
                        onnx_max_abs_diff(model, tmp, {n: inputs[n] for n in names}),
                        onnx_max_abs_diff(model, tmp, second),
                    )
                if not diff <= atol:
                    raise RuntimeError(
                        f"The exported ONNX graph differs from PyTorch by {diff:.3g} (> atol={atol}); not saved."
                    )
                logger.info("ONNX parity: max |onnxruntime - torch| = %.3g", diff)
            os.replace(tmp, path)
        finally:
            for leftover in (tmp, raw):
                if leftover.exists():
                    leftover.unlink()
    finally:
        model.train(was_training)
    if report is None:
        return path
    warn_if_incomplete(report, path)
    return OptimizedOnnx(path=path, fusion=report, max_abs_diff=diff)


def onnx_session(
    path: str | os.PathLike,
    *,
    threads: int | None = None,
    providers: list[str] | None = None,
    options=None,
):
    """An ``onnxruntime.InferenceSession`` for the ONNX file ``path``, set up to run an exported encoder fast.

    All of onnxruntime's graph optimizations except, on CPU, the ones in
    :data:`~structprune.export.fusion.CPU_DISABLED_OPTIMIZERS` (``SkipLayerNormFusion``: its fused kernel is
    several times slower on CPU than the ``Add`` + ``LayerNormalization`` that ``export_onnx(optimize=True)``
    writes; see ``structprune/export/fusion.py``). ``threads``: intra-op threads (default: onnxruntime's).
    ``providers``: default ``["CPUExecutionProvider"]``; with a GPU provider in the list nothing is disabled.
    ``options``: an ``onnxruntime.SessionOptions`` to start from (its graph optimization level is kept;
    ``threads``, when given, replaces its intra-op thread count).

    Example::

        session = sp.onnx_session("model.onnx", threads=4)
        session.run(["logits"], {i.name: enc[i.name] for i in session.get_inputs()})
    """
    require("ONNX Runtime sessions", "onnxruntime")
    import onnxruntime

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No ONNX file at {path}; export one with structprune.export_onnx first.")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(
            f"threads={threads!r}: give a positive number of threads, or None for onnxruntime's."
        )
    providers = list(providers or ["CPUExecutionProvider"])
    if options is None:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
    cpu_only = all(p == "CPUExecutionProvider" for p in providers)
    disabled = list(CPU_DISABLED_OPTIMIZERS) if cpu_only else []
    return onnxruntime.InferenceSession(str(path), options, providers=providers, disabled_optimizers=disabled)


def onnx_max_abs_diff(model: nn.Module, path: str | os.PathLike, inputs: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between ``model`` and the ONNX file ``path`` (onnxruntime, CPU) on ``inputs``.

    Example::

        onnx_max_abs_diff(model, "model.onnx", example_inputs(model))
    """
    session = onnx_session(path)
    feed_names = [i.name for i in session.get_inputs()]
    feed = {n: inputs[n].cpu().numpy() for n in feed_names}
    got = session.run(None, feed)
    with torch.no_grad():
        out = model(**{n: inputs[n] for n in feed_names}, return_dict=True)
    want = [v for v in out.values() if isinstance(v, torch.Tensor)]
    if len(want) != len(got):
        raise RuntimeError(f"The ONNX file has {len(got)} outputs, the model {len(want)}.")
    return max(float((torch.from_numpy(g) - w.cpu()).abs().max()) for g, w in zip(got, want, strict=True))


def quantize_onnx(path: str | os.PathLike, out: str | os.PathLike, *, per_channel: bool = True) -> Path:
    """Dynamic int8 quantization (onnxruntime) of the ONNX file ``path`` into ``out``; weights become int8.

    ``per_channel`` (default): one scale per output column of each weight, not one per matrix (onnxruntime's
    default, ``per_channel=False``). In ``benchmarks/results/speed.md`` it kept every distilled SST-2 MiniLM
    student (50 / 25 / 10% of the FLOPs) within 0.5 accuracy points of fp32, where one scale per matrix cost the
    25% student 5.04 points. Weights with no elements (a layer whose FFN was pruned away) stay as they are:
    there is nothing to quantize, onnxruntime's per-channel quantizer fails on them, and quantizing them per
    matrix went with the largest losses measured (the 10% student: 14.8 points, ``speed_2026-12-07.md``).

    Accuracy changes: measure it (``benchmarks/speed.py``) before shipping the result.

    Example::

        sp.export_onnx(model, "model.onnx")
        sp.quantize_onnx("model.onnx", "model-int8.onnx")
    """
    require("int8 quantization", "onnx", "onnxruntime")
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path, out = Path(path), Path(out)
    if not path.is_file():
        raise FileNotFoundError(f"No ONNX file at {path}; export one with structprune.export_onnx first.")
    if out.suffix != ".onnx" or out.resolve() == path.resolve():
        raise ValueError(f"Give the quantized model a new .onnx path, not {out}.")
    graph = onnx.load(str(path), load_external_data=False).graph
    empty = {i.name for i in graph.initializer if 0 in i.dims}
    skip = [n.name for n in graph.node if empty.intersection(n.input)]
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        quantize_dynamic(
            str(path), str(tmp), weight_type=QuantType.QInt8, per_channel=per_channel, nodes_to_exclude=skip
        )
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
