"""What a budget is, in one place: the fraction of the unpruned model's encoder kept, and what keeping
a head or a neuron costs under it (:class:`Prices`).

Used by :func:`~structprune.allocation.allocate`, the constrained search and ``CompressConfig``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..arch import view
from .cost import (
    dense_cost,
    head_flops,
    head_params,
    layer_hidden_params_per_dim,
    neuron_flops,
    neuron_params,
)


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


@dataclass(frozen=True)
class Prices:
    """What keeping structure costs under a budget: ``fixed + heads * head + neurons * neuron`` (FLOPs or
    parameters), against ``budget`` (the fraction of the unpruned encoder's ``total``)."""

    kind: str
    fixed: float
    head: float
    neuron: float
    budget: float
    total: float

    def of(self, heads: int, neurons: int) -> float:
        return self.fixed + heads * self.head + neurons * self.neuron


def prices(model, kind: str, fraction: float, seq_len: int, *, width: int | None = None,
           layers: int | None = None) -> Prices:  # fmt: skip
    """The :class:`Prices` of ``model`` for a ``kind`` ("flops" | "params") budget of ``fraction``.

    ``width``: the residual width the kept layers will have (default: the model's current width);
    ``layers``: how many layers are kept (default: the model's current layers). FLOPs have no fixed part
    (every encoder FLOP belongs to a head or a neuron); parameters do (biases and LayerNorms per layer).
    """
    v = view(model)
    st = v.structure
    dense = dense_cost(model, seq_len)
    D, dh = st.hidden_size, st.head_size
    d = st.hidden_width if width is None else width
    n_layers = len(st.layers) if layers is None else layers
    if kind == "flops":
        return Prices(kind, 0, head_flops(d, dh, seq_len), neuron_flops(d, seq_len),
                      fraction * dense.encoder_flops, dense.encoder_flops)  # fmt: skip
    L, H, inter = st.num_layers, st.num_heads, st.intermediate_size
    fixed = dense.encoder_params - L * (H * head_params(D, dh) + inter * neuron_params(D))
    fixed_at_d = fixed / L - (D - d) * layer_hidden_params_per_dim(v.layers[0])
    return Prices(kind, fixed_at_d * n_layers, head_params(d, dh), neuron_params(d),
                  fraction * dense.encoder_params, dense.encoder_params)  # fmt: skip


def check_allocation(scores, model, *, min_heads, multiple_of) -> None:
    """What ``allocate`` and the search both check: scores that fit the model and hold only finite
    numbers, ``min_heads`` within a layer's heads, ``multiple_of`` within a layer's FFN width."""
    st = view(model).structure
    L, H, inter = st.num_layers, st.num_heads, st.intermediate_size
    if tuple(scores.head.shape) != (L, H) or tuple(scores.ffn.shape) != (L, inter):
        raise ValueError(
            f"Scores of shape head {tuple(scores.head.shape)} / ffn {tuple(scores.ffn.shape)} do not fit this "
            f"model (head ({L}, {H}) / ffn ({L}, {inter})): score this model first."
        )
    parts = [scores.head, scores.ffn, *(t for t in (scores.layer, scores.hidden) if t is not None)]
    if not all(bool(torch.isfinite(t).all()) for t in parts):
        raise ValueError("Scores contain NaN or inf; re-score the model (check the data and the loss).")
    if isinstance(min_heads, bool) or not isinstance(min_heads, int) or not 0 <= min_heads <= H:
        raise ValueError(f"min_heads must be an integer between 0 and {H}, got {min_heads!r}.")
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise ValueError(f"multiple_of must be a positive integer, got {multiple_of!r}.")
    if multiple_of > inter:
        raise ValueError(
            f"multiple_of={multiple_of} is larger than a layer's FFN ({inter} neurons): every layer would keep 0 "
            f"or {multiple_of} neurons. Use a multiple_of of at most {inter} (e.g. 8, 16 or 64)."
        )
