"""structprune: structured pruning and distillation for BERT-family Hugging Face encoders.

The package reads like its pipeline; each stage is a folder and a verb here::

    arch/        the only code that knows Hugging Face module names (ArchSpec rows, view(model))
    scoring/     1. score heads, neurons, layers, hidden dimensions        -> Scores
    allocation/  2. a budget (FLOPs, params, counts) or the constrained search -> Mask
    surgery/     3. prune_(model, mask): a genuinely smaller dense model
    recovery/    4. reconstruct (retraining-free) and distill (Accelerate loop)
    checkpoint/  5. save_pretrained / from_pretrained / push_to_hub, model cards
    export/         ONNX export and int8 quantization
    run/         the one-call paths: compress, the recipe pipeline, teachers, the demo
    sentence/    the same for sentence-transformers models (compress, distill, save, STS-B, throughput)

``batches.py`` (label keys, device moves, logits), ``mask.py`` (Mask, Scores), ``gates.py`` (the masked
reference), ``data/`` and ``evaluation.py`` serve every stage. Low-level pieces (views, gates, cost
internals, card writers) are imported from their modules, e.g. ``from structprune.gates import Gates``.

Example::

    import structprune as sp
    scores = sp.score(model, batches, method="taylor")
    mask = sp.allocate(scores, model, flops=0.5)
    sp.prune_(model, mask)
    sp.cost(model, seq_len=128)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import _autoconfig

__version__ = "0.1.0"

# ``import structprune`` is cheap (no torch, datasets, accelerate, ...): each name below is imported from
# its module the first time it is used. The config classes of pruned checkpoints are registered with
# transformers' AutoConfig as soon as transformers' Auto classes are imported (structprune/_autoconfig.py).
# a subset of structprune.scoring.__all__, named here without importing it (it imports torch)
_SCORING = ("available_scorers", "gate_gradients", "register_scorer", "score", "score_hidden", "score_layers",
            "score_shape")  # fmt: skip
_ALLOCATION = ("LatencyModel", "allocate", "cost", "dense_cost", "measure_latency", "rearrange",
               "search")  # fmt: skip
_EXPORTS = {
    "allocation": _ALLOCATION,
    "arch": ("ArchSpec", "register_architecture"),
    "checkpoint": ("CardInfo", "from_pretrained", "push_to_hub", "save_pretrained"),
    "evaluation": ("evaluate",),
    "export": ("export_onnx", "onnx_session", "quantize_onnx"),
    "mask": ("Mask", "Scores"),
    "progress": ("set_progress",),
    "recovery.distill": ("DistillConfig", "PruneSchedule", "distill", "finetune"),
    "recovery.reconstruct": ("ReconstructConfig", "reconstruct"),
    "run.compress": ("CompressConfig", "compress"),
    "scoring": _SCORING,
    "surgery": ("prune_", "prune_vocab"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
_SUBMODULES = (
    "allocation", "arch", "atomic", "batches", "cache", "checkpoint", "cli", "data", "errors", "evaluation", "export",
    "gates", "mask", "progress", "recovery", "report", "run", "scoring", "sentence", "surgery",
)  # fmt: skip

__all__ = [
    "ArchSpec",
    "CardInfo",
    "CompressConfig",
    "DistillConfig",
    "LatencyModel",
    "Mask",
    "PruneSchedule",
    "ReconstructConfig",
    "Scores",
    "allocate",
    "available_scorers",
    "compress",
    "cost",
    "dense_cost",
    "distill",
    "evaluate",
    "export_onnx",
    "finetune",
    "from_pretrained",
    "gate_gradients",
    "measure_latency",
    "onnx_session",
    "prune_",
    "prune_vocab",
    "push_to_hub",
    "quantize_onnx",
    "rearrange",
    "reconstruct",
    "register_architecture",
    "register_scorer",
    "save_pretrained",
    "score",
    "score_hidden",
    "score_layers",
    "score_shape",
    "search",
    "set_progress",
]  # the names of _EXPORTS (a test keeps them equal)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE, *_SUBMODULES})


_autoconfig.install()

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from .allocation import LatencyModel, allocate, cost, dense_cost, measure_latency, rearrange, search
    from .arch import ArchSpec, register_architecture
    from .checkpoint import CardInfo, from_pretrained, push_to_hub, save_pretrained
    from .evaluation import evaluate
    from .export import export_onnx, onnx_session, quantize_onnx
    from .mask import Mask, Scores
    from .progress import set_progress
    from .recovery.distill import DistillConfig, PruneSchedule, distill, finetune
    from .recovery.reconstruct import ReconstructConfig, reconstruct
    from .run.compress import CompressConfig, compress
    from .scoring import (
        available_scorers,
        gate_gradients,
        register_scorer,
        score,
        score_hidden,
        score_layers,
        score_shape,
    )
    from .surgery import prune_, prune_vocab
