"""Analytical cost model: FLOPs and parameters per encoder layer and in total.

FLOPs count 2 per multiply-add of the matrix products of one sequence of ``seq_len`` tokens (batch 1):
q/k/v/o projections, attention scores and context, FFN up/down. Softmax, LayerNorm and bias additions
are left out (under 1% at these sizes). Parameters are exact: the formula is checked against
``sum(p.numel())`` of the real modules in the test suite.

All four structures are covered: dropped layers cost nothing; heads and neurons cost the formulas below
at the (kept) hidden width; hidden-size pruning also shrinks every LayerNorm, the o/down biases and the
modules outside the encoder that touch the residual stream (embeddings, pooler/classifier inputs, MLM
heads), counted exactly from ``view(model).hidden_sites()``. Encoder FLOPs leave the embeddings and the
task head out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from ..arch import ModelView, view
from ..mask import Mask


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
    hidden_size: int | None = None
    """Width of the residual stream (after the mask, when one is given)."""

    def to_dict(self) -> dict:
        return asdict(self)


def _layer_fixed_params(layer: nn.Module, lv) -> int:
    """Parameters of a layer that head/FFN pruning never changes (LayerNorms, o and down biases)."""
    total = sum(p.numel() for p in layer.parameters())
    variable = sum(p.numel() for m in (lv.q, lv.k, lv.v) for p in m.parameters())
    variable += lv.o.weight.numel() + lv.up.weight.numel() + lv.up.bias.numel() + lv.down.weight.numel()
    return total - variable


def _scaled(numel: int, dims: int, now: int, width: int) -> int:
    """Size of a tensor with ``numel`` elements after ``dims`` of its axes shrink from ``now`` to ``width``."""
    return numel // now**dims * width**dims


def layer_hidden_params_per_dim(lv) -> int:
    """Parameters of a layer's fixed part (LayerNorms, o/down biases) per residual-stream dimension."""
    per = sum(int(p is not None) for m in (lv.o, lv.down) for p in (m.bias,))
    return per + sum(int(n.weight is not None) + int(n.bias is not None) for n in lv.norms)


def outer_hidden_params(v: ModelView, width: int) -> int:
    """Parameters outside the encoder layers that live on the residual stream, at hidden ``width``.

    Counted per unique tensor (a decoder tied to the word embeddings counts once), with the number of its
    axes that are residual-stream axes (an MLM transform ``dense`` has two).
    """
    sites = v.hidden_sites()
    axes: dict[int, tuple] = {}  # id(param) -> (param, set of its residual-stream axes)

    def add(p, axis: int) -> None:
        if p is not None:
            axes.setdefault(id(p), (p, set()))[1].add(axis)

    for emb in sites.embeddings:
        add(emb.weight, 1)
    for ln in sites.norms:
        add(ln.weight, 0)
        add(ln.bias, 0)
    for lin in sites.readers:
        add(lin.weight, 1)
    for lin in sites.writers:
        add(lin.weight, 0)
        add(lin.bias, 0)
    now = v.structure.hidden_width
    return sum(_scaled(p.numel(), len(n), now, width) for p, n in axes.values())


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
    now, dh = s.hidden_width, s.head_size
    d = now if mask is None or mask.hidden is None else int(mask.hidden.sum())
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
        fixed = _layer_fixed_params(lv.module, lv) - (now - d) * layer_hidden_params_per_dim(lv)
        params = fixed + heads * head_params(d, dh) + ffn * neuron_params(d)
        layers.append(LayerCost(lv.orig, heads, ffn, flops, params))
    other = total_params - layer_params_now
    if d != now:
        other += outer_hidden_params(v, d) - outer_hidden_params(v, now)
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
        hidden_size=d,
    )


def dense_cost(model: nn.Module, seq_len: int = 128) -> Cost:
    """Cost of the *unpruned* model ``model`` was made from (all original layers, heads and neurons)."""
    v = view(model)
    s = v.structure
    d, dh, now = s.hidden_size, s.head_size, s.hidden_width
    current = cost(model, seq_len)
    fixed = [
        lc.params - lc.heads * head_params(now, dh) - lc.ffn * neuron_params(now)
        + (d - now) * layer_hidden_params_per_dim(lv)
        for lc, lv in zip(current.layers, v.layers, strict=True)
    ]  # fmt: skip
    per_layer_fixed = fixed[0] if fixed else 0
    other = current.other_params + (
        outer_hidden_params(v, d) - outer_hidden_params(v, now) if d != now else 0
    )
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
    return Cost(seq_len, layers, sum(lc.flops for lc in layers), enc, other, other + enc, hidden_size=d)
