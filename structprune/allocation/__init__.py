"""Stage 2 — allocation: scores and a budget become a :class:`~structprune.mask.Mask`.

- :mod:`.cost`: analytical FLOPs and parameters per layer (the unit every budget is measured in).
- :mod:`.allocate`: budgets (FLOPs, parameters, head/neuron counts, layers, hidden size), global or
  per-layer ranking, ``multiple_of`` rounding, minimum heads per layer.
- :mod:`.search`: the constrained mask search and Fisher rearrangement of Kwon et al.
- :mod:`.latency`: measured latency (the timing protocol shared with the benchmarks).
- :mod:`.latency_model`: :class:`LatencyModel`, per-layer latency tables measured on a device, which
  ``latency=`` budgets are fractions of; :mod:`.latency_setting`: what one holds for, and its cache.
"""

from .allocate import allocate
from .cost import Cost, cost, dense_cost
from .latency import measure_latency
from .latency_model import LatencyModel
from .search import rearrange, retained, search

__all__ = [
    "Cost",
    "LatencyModel",
    "allocate",
    "cost",
    "dense_cost",
    "measure_latency",
    "rearrange",
    "retained",
    "search",
]
