"""What a latency model holds for: the setting it was measured in (:class:`LatencySetting`) and the model
it describes (:class:`ModelDims`), and where :meth:`structprune.LatencyModel.cached` keeps it (a file
named by a hash of both under ``$STRUCTPRUNE_CACHE/latency``)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..arch import view
from ..cache import cache_root
from .latency import device_name

FORMAT = "structprune.latency/1"
CACHE_FOLDER = "latency"


def _int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    return value


def _text(name: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}.")
    return value


@dataclass(frozen=True)
class LatencySetting:
    """Where and how a latency model was measured; a latency model holds only for its own setting."""

    device: str
    """``"cpu:<processor model>"`` or ``"cuda:<GPU name>"``."""
    threads: int
    """``torch.get_num_threads()`` while measuring."""
    batch_size: int
    seq_len: int
    dtype: str
    """The model's parameter dtype, e.g. ``"float32"``."""
    torch: str
    """``torch.__version__``."""
    attention: str
    """The model's attention implementation (``config._attn_implementation``, e.g. ``"sdpa"``)."""

    def __post_init__(self):
        for name in ("device", "dtype", "torch", "attention"):
            _text(f"setting.{name}", getattr(self, name))
        for name in ("threads", "batch_size", "seq_len"):
            _int(f"setting.{name}", getattr(self, name))

    @classmethod
    def current(
        cls, model: nn.Module, batch_size: int = 32, seq_len: int = 128, device=None
    ) -> LatencySetting:
        """The setting ``model`` runs in here: its device (or ``device``), torch's threads, its dtype."""
        param = next(model.parameters())
        dev = torch.device(device) if device is not None else param.device
        return cls(
            device=device_name(dev),
            threads=torch.get_num_threads(),
            batch_size=_int("batch_size", batch_size),
            seq_len=_int("seq_len", seq_len),
            dtype=str(param.dtype).removeprefix("torch."),
            torch=torch.__version__,
            attention=str(getattr(model.config, "_attn_implementation", None) or "eager"),
        )

    def describe(self) -> str:
        """E.g. ``"cpu:Intel Xeon, 2 threads, batch 32 x seq 128, float32, torch 2.13.0, sdpa attention"``."""
        return (
            f"{self.device}, {self.threads} threads, batch {self.batch_size} x seq {self.seq_len}, {self.dtype}, "
            f"torch {self.torch}, {self.attention} attention"
        )


@dataclass(frozen=True)
class ModelDims:
    """The unpruned model a latency model describes: family, class (task head) and sizes."""

    family: str
    architecture: str
    num_layers: int
    num_heads: int
    head_size: int
    intermediate_size: int
    hidden_size: int
    vocab_size: int

    def __post_init__(self):
        _text("dims.family", self.family)
        _text("dims.architecture", self.architecture)
        for name in ("num_layers", "num_heads", "head_size", "intermediate_size", "hidden_size"):
            _int(f"dims.{name}", getattr(self, name))
        _int("dims.vocab_size", self.vocab_size, low=0)

    @classmethod
    def of(cls, model: nn.Module) -> ModelDims:
        """The original (unpruned) shape of ``model``, also when it is pruned."""
        from ..checkpoint.registry import base_model_type  # a config attribute; no checkpoint machinery

        st = view(model).structure
        return cls(
            family=base_model_type(model.config),
            architecture=type(model).__name__.removeprefix("StructPrune"),
            num_layers=st.num_layers,
            num_heads=st.num_heads,
            head_size=st.head_size,
            intermediate_size=st.intermediate_size,
            hidden_size=st.hidden_size,
            vocab_size=int(getattr(model.config, "vocab_size", 0) or 0),
        )


def latency_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of cached latency models: ``cache_dir``, else ``<cache root>/latency`` (``$STRUCTPRUNE_CACHE``,
    default ``~/.cache/structprune``; see :func:`structprune.cache.cache_root`)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return cache_root() / CACHE_FOLDER


def cache_key(setting: LatencySetting, dims: ModelDims) -> str:
    """A hash of everything a latency model depends on: the setting and the model's shape and class."""
    text = json.dumps({"format": FORMAT, "setting": asdict(setting), "dims": asdict(dims)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path(setting: LatencySetting, dims: ModelDims, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :meth:`LatencyModel.cached` keeps the model of ``dims`` measured in ``setting``."""
    name = f"{dims.family}-{dims.num_layers}x{dims.hidden_size}-b{setting.batch_size}-s{setting.seq_len}"
    return latency_cache(cache_dir) / f"{name}-{cache_key(setting, dims)}.json"
