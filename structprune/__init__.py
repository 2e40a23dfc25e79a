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

from .allocation import allocate, cost, dense_cost, measure_latency, rearrange, search
from .arch import ArchSpec, register_architecture
from .checkpoint import CardInfo, from_pretrained, push_to_hub, save_pretrained
from .evaluation import evaluate
from .export import export_onnx, quantize_onnx
from .mask import Mask, Scores
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
from .surgery import prune_

__version__ = "0.1.0"

__all__ = [
    "ArchSpec",
    "CardInfo",
    "CompressConfig",
    "DistillConfig",
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
    "prune_",
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
]
