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
from .cost import Cost, cost, dense_cost
from .depth import score_layers
from .distill import DistillConfig, distill, finetune
from .evaluation import evaluate
from .gates import Gates
from .hidden import score_hidden
from .importance import available_scorers, register_scorer, score
from .latency import measure_latency
from .mask import Mask, Scores
from .shape import score_shape
from .surgery import prune_

__version__ = "0.1.0"

__all__ = [
    "ArchSpec",
    "Cost",
    "DistillConfig",
    "Gates",
    "Mask",
    "Scores",
    "allocate",
    "available_scorers",
    "cost",
    "dense_cost",
    "distill",
    "evaluate",
    "finetune",
    "measure_latency",
    "prune_",
    "register_architecture",
    "register_scorer",
    "score",
    "score_hidden",
    "score_layers",
    "score_shape",
    "supported_families",
    "view",
]
