"""ONNX export of (pruned) encoders, checked against PyTorch in onnxruntime; optional int8 quantization.

The exporter is ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript): the supported
exporter of torch 2.x. The TorchScript exporter (``dynamo=False``) is deprecated and *traces*:
transformers' attention code branches on Python values (e.g. ``is_causal`` in the SDPA path), which a
trace freezes silently (it warns ``TracerWarning``). ``torch.export`` captures the graph with symbolic
batch and sequence sizes instead. Optimum is not used: it has no exporter for per-layer-pruned
configs, and torch.onnx already handles every supported family.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..arch import view
from ..errors import require

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


class _Positional(nn.Module):
    """Calls the model with named inputs and returns its tensor outputs as a tuple (ONNX wants positions)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}  # [B, T] each
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


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = 18,
    inputs: dict[str, torch.Tensor] | None = None,
    check: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Export ``model`` to one ONNX file with dynamic batch and sequence axes; check it in onnxruntime.

    Inputs are ``input_ids``, ``attention_mask`` (and ``token_type_ids`` for families that use them);
    outputs are the model's tensor outputs by name (``logits``; ``last_hidden_state``, ...). With
    ``check=True`` the file is run in onnxruntime on ``inputs`` and on a second, differently shaped batch
    and must match PyTorch within ``atol``. The file is written atomically.

    Example::

        sp.export_onnx(model, "model.onnx")
        session = onnxruntime.InferenceSession("model.onnx")
        feed = {i.name: enc[i.name] for i in session.get_inputs()}   # BERT also takes token_type_ids
        session.run(["logits"], feed)                                  # enc = tokenizer(..., return_tensors="np")
    """
    require("ONNX export", "onnx", "onnxscript", *(["onnxruntime"] if check else []))
    view(model)  # a supported, consistent model
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
    try:
        outputs = _output_names(model, {n: inputs[n] for n in names})
        with warnings.catch_warnings(), _quiet_loggers(*_EXPORTER_LOGGERS):
            # torch's exporter notes that are not about this model: unused axis names, deprecations inside
            # torch itself, and torchvision operators it skips because torchvision is not installed
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
            warnings.filterwarnings(
                "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
            )
            program = torch.onnx.export(
                _Positional(model).eval(),  # eval: the wrapper too (else "exporting in training mode")
                args,
                input_names=names,
                output_names=outputs,
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                verbose=False,
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            program.save(str(tmp), external_data=False)
            if check:
                diff = max(
                    onnx_max_abs_diff(model, tmp, {n: inputs[n] for n in names}),
                    onnx_max_abs_diff(model, tmp, example_inputs(model, batch_size=3, seq_len=13, seed=1)),
                )
                if not diff <= atol:
                    raise RuntimeError(
                        f"The exported ONNX graph differs from PyTorch by {diff:.3g} (> atol={atol}); not saved."
                    )
                logger.info("ONNX parity: max |onnxruntime - torch| = %.3g", diff)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    finally:
        model.train(was_training)
    return path


def onnx_max_abs_diff(model: nn.Module, path: str | os.PathLike, inputs: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between ``model`` and the ONNX file ``path`` (onnxruntime, CPU) on ``inputs``.

    Example::

        onnx_max_abs_diff(model, "model.onnx", example_inputs(model))
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed_names = [i.name for i in session.get_inputs()]
    feed = {n: inputs[n].cpu().numpy() for n in feed_names}
    got = session.run(None, feed)
    with torch.no_grad():
        out = model(**{n: inputs[n] for n in feed_names}, return_dict=True)
    want = [v for v in out.values() if isinstance(v, torch.Tensor)]
    if len(want) != len(got):
        raise RuntimeError(f"The ONNX file has {len(got)} outputs, the model {len(want)}.")
    return max(float((torch.from_numpy(g) - w.cpu()).abs().max()) for g, w in zip(got, want, strict=True))


def quantize_onnx(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Dynamic int8 quantization (onnxruntime) of the ONNX file ``path`` into ``out``; weights become int8.

    Accuracy changes: measure it (``benchmarks/quantize.py``) before shipping the result.

    Example::

        sp.export_onnx(model, "model.onnx")
        sp.quantize_onnx("model.onnx", "model-int8.onnx")
    """
    require("int8 quantization", "onnx", "onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path, out = Path(path), Path(out)
    if not path.is_file():
        raise FileNotFoundError(f"No ONNX file at {path}; export one with structprune.export_onnx first.")
    if out.suffix != ".onnx" or out.resolve() == path.resolve():
        raise ValueError(f"Give the quantized model a new .onnx path, not {out}.")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
