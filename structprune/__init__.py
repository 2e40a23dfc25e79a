"""structprune: structured pruning and distillation for BERT-family Hugging Face encoders.

Example::

    import structprune as sp
    scores = sp.score(model, batches, method="taylor")
    mask = sp.allocate(scores, model, flops=0.5)
    sp.prune_(model, mask)
    sp.cost(model, seq_len=128)
"""

from .allocate import allocate
from .arch import ArchSpec, register_architecture, supported_families, view
from .checkpoint import CardInfo, from_pretrained, push_to_hub, save_pretrained, write_model_card
from .compress import CompressConfig, CompressReport, compress
from .cost import Cost, cost, dense_cost
from .depth import score_layers
from .distill import DistillConfig, distill, finetune
from .evaluation import evaluate
from .export import export_onnx, quantize_onnx
from .gates import Gates
from .hidden import score_hidden
from .importance import available_scorers, register_scorer, score
from .latency import measure_latency
from .mask import Mask, Scores
from .reconstruct import ReconstructConfig, ReconstructReport, reconstruct
from .search import GateGradients, gate_gradients, rearrange, search
from .shape import score_shape
from .surgery import prune_

__version__ = "0.1.0"

__all__ = [
    "ArchSpec",
    "CardInfo",
    "CompressConfig",
    "CompressReport",
    "Cost",
    "DistillConfig",
    "GateGradients",
    "Gates",
    "Mask",
    "ReconstructConfig",
    "ReconstructReport",
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
    "score",
    "score_hidden",
    "score_layers",
    "save_pretrained",
    "score_shape",
    "search",
    "supported_families",
    "view",
    "write_model_card",
]
