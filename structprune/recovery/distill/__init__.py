"""Distillation from the unpruned teacher, fine-tuning and gradual pruning: one Accelerate loop.

Example::

    import structprune as sp
    cfg = sp.DistillConfig(output_dir="runs/sst2", task="sst2", num_epochs=2, hidden_weight=1.0)
    student, history = sp.distill(student, teacher, train_dl, eval_dl, config=cfg)
"""

from .callbacks import LoopCallback
from .config import DistillConfig, DistillStage, PruneSchedule, tinybert_stages
from .gradual import GradualPruning, cubic_fractions, flops_fraction, prune_event, prune_schedule
from .loop import Loop, NonFiniteLossError, distill, finetune
from .maps import DistillMap, build_map
from .module import DistillModule

__all__ = [
    "DistillConfig",
    "DistillStage",
    "PruneSchedule",
    "DistillMap",
    "DistillModule",
    "GradualPruning",
    "Loop",
    "LoopCallback",
    "NonFiniteLossError",
    "build_map",
    "cubic_fractions",
    "distill",
    "finetune",
    "flops_fraction",
    "prune_event",
    "prune_schedule",
    "tinybert_stages",
]
