"""Analytical cost model: FLOPs and parameters per encoder layer and in total.

FLOPs count 2 per multiply-add of the matrix products of one sequence of ``seq_len`` tokens (batch 1):
q/k/v/o projections, attention scores and context, FFN up/down. Softmax, LayerNorm and bias additions
are left out (under 1% at these sizes). Parameters are exact: the formula is checked against
``sum(p.numel())`` of the real modules in the test suite.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from .arch import view
from .mask import Mask


def head_flops(hidden: int, head_size: int, seq_len: int) -> int:
    """FLOPs one attention head costs: its q/k/v/o slices plus its scores and context."""
    return 2 * seq_len * 4 * hidden * head_size + 2 * 2 * seq_len * seq_len * head_size


def neuron_flops(hidden: int, seq_len: int) -> int:
    """FLOPs one FFN neuron costs: one row of the up and one column of the down projection."""
    return 2 * 2 * seq_len * hidden


def head_params(hidden: int, head_size: int) -> int:
    """Parameters one head owns: q/k/v rows with their biases and o columns."""
    return 4 * hidden * head_size + 3 * head_size


def neuron_params(hidden: int) -> int:
    """Parameters one FFN neuron owns: a row of up (with its bias) and a column of down."""
    return 2 * hidden + 1


@dataclass
class LayerCost:
    layer: int
    """Original index of the layer."""
    heads: int
    ffn: int
    flops: int
    params: int


@dataclass
class Cost:
    """FLOPs and parameters of a model (or of a model after a mask), per layer and in total."""

    seq_len: int
    layers: list[LayerCost]
    encoder_flops: int
    encoder_params: int
    other_params: int
    """Embeddings, pooler, task head: untouched by head/FFN pruning."""
    total_params: int
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _layer_fixed_params(layer: nn.Module, lv) -> int:
    """Parameters of a layer that head/FFN pruning never changes (LayerNorms, o and down biases)."""
    total = sum(p.numel() for p in layer.parameters())
    variable = sum(p.numel() for m in (lv.q, lv.k, lv.v) for p in m.parameters())
    variable += lv.o.weight.numel() + lv.up.weight.numel() + lv.up.bias.numel() + lv.down.weight.numel()
    return total - variable


def cost(model: nn.Module, seq_len: int = 128, mask: Mask | None = None) -> Cost:
    """FLOPs and parameters of ``model``, or of what ``model`` would be after ``prune_(model, mask)``.

    Example::

        c = sp.cost(model, seq_len=128)
        c.encoder_flops, c.total_params, [lc.heads for lc in c.layers]
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be a positive number of tokens, got {seq_len}.")
    v = view(model)
    s = v.structure
    if mask is not None:
        mask.check_compatible(model)
    d, dh = s.hidden_size, s.head_size
    total_params = sum(p.numel() for p in model.parameters())
    layers: list[LayerCost] = []
    layer_params_now = 0
    for lv in v.layers:
        layer_params_now += sum(p.numel() for p in lv.module.parameters())
        if mask is None:
            heads, ffn = len(lv.heads), len(lv.ffn)
        else:
            heads, ffn = int(mask.head[lv.orig].sum()), int(mask.ffn[lv.orig].sum())
            if heads == 0 and ffn == 0:
                continue  # the layer is dropped
        flops = heads * head_flops(d, dh, seq_len) + ffn * neuron_flops(d, seq_len)
        params = _layer_fixed_params(lv.module, lv) + heads * head_params(d, dh) + ffn * neuron_params(d)
        layers.append(LayerCost(lv.orig, heads, ffn, flops, params))
    other = total_params - layer_params_now
    if mask is not None and v.head_bias is not None:
        # the shared per-head bias (MPNet) keeps one column per head that any layer keeps
        union_now = {h for heads in s.heads for h in heads}
        union_after = {
            h for lc_orig in mask.kept_layers for h in mask.head[lc_orig].nonzero().flatten().tolist()
        }
        other -= (len(union_now) - len(union_after)) * v.head_bias.num_embeddings
    encoder_params = sum(lc.params for lc in layers)
    return Cost(
        seq_len=seq_len,
        layers=layers,
        encoder_flops=sum(lc.flops for lc in layers),
        encoder_params=encoder_params,
        other_params=other,
        total_params=other + encoder_params,
    )


def dense_cost(model: nn.Module, seq_len: int = 128) -> Cost:
    """Cost of the *unpruned* model ``model`` was made from (all original layers, heads and neurons)."""
    s = view(model).structure
    d, dh = s.hidden_size, s.head_size
    current = cost(model, seq_len)
    fixed = [lc.params - lc.heads * head_params(d, dh) - lc.ffn * neuron_params(d) for lc in current.layers]
    per_layer_fixed = fixed[0] if fixed else 0
    layers = [
        LayerCost(
            i,
            s.num_heads,
            s.intermediate_size,
            s.num_heads * head_flops(d, dh, seq_len) + s.intermediate_size * neuron_flops(d, seq_len),
            per_layer_fixed + s.num_heads * head_params(d, dh) + s.intermediate_size * neuron_params(d),
        )
        for i in range(s.num_layers)
    ]
    enc = sum(lc.params for lc in layers)
    return Cost(
        seq_len, layers, sum(lc.flops for lc in layers), enc, current.other_params, current.other_params + enc
    )
