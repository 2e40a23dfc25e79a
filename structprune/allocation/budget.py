"""What a budget is, checked in one place: the fraction of the unpruned model's encoder kept.

Used by :func:`~structprune.allocation.allocate`, the constrained search and ``CompressConfig``.
"""

from __future__ import annotations

import math


def check_fraction(name: str, value) -> float:
    """``value`` as a float in (0, 1]; anything else (bool, NaN, 0, > 1, a string) is a ValueError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= 1
    ):
        raise ValueError(
            f"{name}={value!r}: a budget is the fraction of the unpruned encoder kept, a number in (0, 1]."
        )
    return float(value)


def one_budget(flops, params) -> tuple[str, float]:
    """The one fraction budget given, as ``("flops" | "params", fraction)``."""
    if (flops is None) == (params is None):
        raise ValueError(
            "Give exactly one budget: flops=<fraction kept> or params=<fraction kept>, not both."
        )
    return ("flops", check_fraction("flops", flops)) if flops is not None else (
        "params", check_fraction("params", params))  # fmt: skip
