"""Stage 1 — scoring: how much each structure matters, in original coordinates (higher = keep).

- :mod:`.units`: heads and FFN neurons — the scorer registry (:func:`register_scorer`, each scorer
  declaring what it needs) and :func:`score` (magnitude, Taylor, Fisher, activation, random).
- :mod:`.functional`: the pure tensor math of those scorers.
- :mod:`.passes`: what gradient/activation scorers share (scoring state, gate-gradient pass, label-free loss).
- :mod:`.embedding`: the label-free objective of embedding models (how far sentence embeddings move).
- :mod:`.gradients`: per-example gate gradients for the search's Fisher rearrangement.
- :mod:`.layers`: whole layers (damage done by skipping one).
- :mod:`.hidden`: residual-stream (hidden) dimensions.
- :mod:`.shape`: all four at once, for TinyBERT-shaped students.
"""

from .gradients import GateGradients, gate_gradients
from .hidden import score_hidden
from .layers import score_layers
from .shape import score_shape
from .units import ScorerInfo, available_scorers, register_scorer, score, scorer_info, scorer_options

__all__ = [
    "GateGradients",
    "ScorerInfo",
    "available_scorers",
    "gate_gradients",
    "register_scorer",
    "score",
    "score_hidden",
    "score_layers",
    "score_shape",
    "scorer_info",
    "scorer_options",
]
