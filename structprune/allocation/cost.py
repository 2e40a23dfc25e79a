"""Analytical cost model: FLOPs and parameters per encoder layer and in total.

FLOPs count 2 per multiply-add of the matrix products of one sequence of ``seq_len`` tokens (batch 1):
q/k/v/o projections, attention scores and context, FFN up/down (both halves of a gated MLP's up
projection), and DeBERTa's relative-position terms (the projection of the shared table and the scores
against it, per head and term). Softmax, LayerNorm, bias additions and rotary position embeddings are
left out (elementwise, under 1% at these sizes); sliding-window attention is counted dense, as the eager
and SDPA kernels compute it. Parameters are exact: the formula is checked against ``sum(p.numel())`` of
the real modules in the test suite. What a head and a neuron consist of in a family is :class:`Units`.

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


@dataclass(frozen=True)
class Units:
    """What one attention head and one FFN neuron of a family's layer consist of (:func:`units`).

    The defaults are BERT's: q/k/v rows with biases, one up row with a bias. ModernBERT: no biases and a
    gated MLP (``up_blocks=2``: a neuron costs two up rows and one down column). DeBERTa: ``rel_terms``
    position terms per head (c2p, p2c) against a table of ``rel_rows`` relative positions, projected per
    head (by q/k, or by ``extra_rows`` own projections when ``share_att_key`` is false). Rotary position
    embeddings (ModernBERT) have no parameters and only elementwise work, left out like softmax.
    """

    qkv: int = 3
    """Head-laid-out blocks of rows reading the tokens (q, k, v)."""
    extra_rows: int = 0
    """More head-laid-out projections (DeBERTa's ``pos_key_proj``/``pos_query_proj``)."""
    row_biases: int = 3
    """How many of a head's row blocks carry a bias."""
    rel_terms: int = 0
    rel_rows: int = 0
    table_projections: int = 0
    """Per-head projections of the position table in each layer: the own position projections, or, where
    there are none (DeBERTa's ``share_att_key``), q and k, which both project it."""
    up_blocks: int = 1
    up_bias: int = 1


BERT_UNITS = Units()


def units(v: ModelView) -> Units:
    """The :class:`Units` of ``v``'s layers (read from the first layer's modules)."""
    lv = v.layers[0]
    table = v.rel_table
    qkv = sum(blocks for lin, blocks in lv.head_rows if any(lin is m for m in (lv.q, lv.k, lv.v)))
    extra = sum(blocks for _, blocks in lv.head_rows) - qkv
    return Units(
        qkv=qkv,
        extra_rows=extra,
        row_biases=sum(blocks for lin, blocks in lv.head_rows if lin.bias is not None),
        rel_terms=lv.rel_terms,
        rel_rows=0 if table is None or not lv.rel_terms else table.num_embeddings,
        table_projections=0 if not lv.rel_terms else extra or 2,
        up_blocks=lv.up_blocks,
        up_bias=int(lv.up.bias is not None),
    )


def head_flops(hidden: int, head_size: int, seq_len: int, u: Units = BERT_UNITS) -> int:
    """FLOPs one attention head costs: its q/k/v/o slices plus its scores and context; with relative
    positions (DeBERTa), the projections of the table and, per term, the scores against it."""
    flops = 2 * seq_len * (u.qkv + 1) * hidden * head_size + 2 * 2 * seq_len * seq_len * head_size
    table = u.table_projections * 2 * u.rel_rows * hidden * head_size  # once per forward, whatever the batch
    return flops + table + u.rel_terms * 2 * seq_len * u.rel_rows * head_size


def neuron_flops(hidden: int, seq_len: int, u: Units = BERT_UNITS) -> int:
    """FLOPs one FFN neuron costs: its row(s) of the up projection (two when gated) and its down column."""
    return 2 * (u.up_blocks + 1) * seq_len * hidden


def head_params(hidden: int, head_size: int, u: Units = BERT_UNITS) -> int:
    """Parameters one head owns: its q/k/v (and position-projection) rows with their biases, o columns."""
    return (u.qkv + u.extra_rows + 1) * hidden * head_size + u.row_biases * head_size


def neuron_params(hidden: int, u: Units = BERT_UNITS) -> int:
    """Parameters one FFN neuron owns: its row(s) of up (with biases) and its column of down."""
    return (u.up_blocks + 1) * hidden + u.up_blocks * u.up_bias


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
    variable = sum(p.numel() for m, _ in lv.head_rows for p in m.parameters())
    variable += lv.o.weight.numel() + sum(p.numel() for p in lv.up.parameters()) + lv.down.weight.numel()
    return total - variable


def first_layer_gap_per_dim(v: ModelView) -> int:
    """Parameters per residual-stream dimension that the original first layer lacks (modules that are an
    Identity there only, ``ArchSpec.first_layer_identity``: ModernBERT's ``attn_norm``)."""
    lv = v.layers[0]
    gap = 0
    for _, template in v.spec.first_layer_identity:
        module = lv.module.get_submodule(template)
        gap += sum(p.numel() for p in module.parameters()) // v.structure.hidden_width
    return gap


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
    u = units(v)
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
        flops = heads * head_flops(d, dh, seq_len, u) + ffn * neuron_flops(d, seq_len, u)
        fixed = _layer_fixed_params(lv.module, lv) - (now - d) * layer_hidden_params_per_dim(lv)
        params = fixed + heads * head_params(d, dh, u) + ffn * neuron_params(d, u)
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
    u = units(v)
    current = cost(model, seq_len)
    lc, lv = current.layers[0], v.layers[0]
    # the fixed part of a layer at the full width: the same in every layer, but for modules that the
    # original first layer lacks (ModernBERT's attn_norm)
    gap = first_layer_gap_per_dim(v)
    per_layer_fixed = (
        lc.params - lc.heads * head_params(now, dh, u) - lc.ffn * neuron_params(now, u)
        + (d - now) * layer_hidden_params_per_dim(lv) + (gap * d if lv.orig == 0 else 0)
    )  # fmt: skip
    other = current.other_params + (
        outer_hidden_params(v, d) - outer_hidden_params(v, now) if d != now else 0
    )
    layers = [
        LayerCost(
            i,
            s.num_heads,
            s.intermediate_size,
            s.num_heads * head_flops(d, dh, seq_len, u) + s.intermediate_size * neuron_flops(d, seq_len, u),
            per_layer_fixed
            - (gap * d if i == 0 else 0)
            + s.num_heads * head_params(d, dh, u)
            + s.intermediate_size * neuron_params(d, u),
        )  # fmt: skip
        for i in range(s.num_layers)
    ]
    enc = sum(lc.params for lc in layers)
    return Cost(seq_len, layers, sum(lc.flops for lc in layers), enc, other, other + enc, hidden_size=d)
