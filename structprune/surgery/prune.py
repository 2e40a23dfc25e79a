"""Surgery: physically remove heads, FFN neurons, emptied layers and residual-stream dimensions, in place.

Weights, module attributes and the config change together in :func:`prune_`; the result is a smaller
dense model whose ``config.structprune`` records what it keeps (original coordinates).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..arch import ModelView, Structure, view
from ..arch.head_bias import install_head_bias_selector
from ..mask import Mask

logger = logging.getLogger(__name__)


@torch.no_grad()
def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> None:
    """Keep rows (``dim=0``, output features) or columns (``dim=1``) ``index`` of ``linear``, in place."""
    index = index.to(linear.weight.device)
    weight = linear.weight.index_select(dim, index).clone()
    linear.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if dim == 0:
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias[index].clone(), requires_grad=linear.bias.requires_grad)
        linear.out_features = len(index)
    else:
        linear.in_features = len(index)


def _positions(current: list[int], keep: torch.Tensor) -> list[int]:
    """Positions within ``current`` (original ids held now) whose id ``keep`` marks True."""
    return [j for j, orig in enumerate(current) if keep[orig]]


def _head_rows(positions: list[int], head_size: int) -> torch.Tensor:
    # head j occupies features [j * head_size, (j + 1) * head_size) of q/k/v outputs and o inputs
    return torch.tensor([j * head_size + t for j in positions for t in range(head_size)], dtype=torch.long)


def _blocks(index: torch.Tensor, block: int, blocks: int) -> torch.Tensor:
    """``index`` (rows within one block of ``block`` rows) repeated in each of ``blocks`` equal blocks:
    a fused q/k/v projection keeps a head's rows in its q, k and v blocks, a gated MLP's ``up`` a neuron's
    rows in its input and gate halves."""
    return torch.cat([index + b * block for b in range(blocks)])


def _check(v: ModelView, mask: Mask) -> None:
    for lv in v.layers:
        heads, ffn = int(mask.head[lv.orig].sum()), int(mask.ffn[lv.orig].sum())
        if heads == 0 and ffn > 0:
            raise ValueError(
                f"The mask removes every head of layer {lv.orig} but keeps {ffn} of its FFN neurons. An "
                "attention block with no heads is not supported: keep at least one head (allocate(..., "
                "min_heads=1)) or remove the layer's neurons too to drop the whole layer."
            )
    if not mask.kept_layers:
        raise ValueError("The mask removes every layer; keep at least one head or neuron.")
    if v.first_layer_pinned():
        first = v.layers[0].orig
        if not (mask.head[first].any() or mask.ffn[first].any()):
            raise ValueError(
                f"This {v.spec.name} model applies a module to its first layer's output "
                f"({', '.join(v.spec.after_first_layer)}), so its first layer (original layer {first}) cannot "
                "be dropped: keep a head in it (allocate(..., min_heads=1))."
            )
        if mask.hidden is not None and not bool(mask.hidden[v.structure.hidden_dims].all()):
            raise ValueError(
                f"This {v.spec.name} model has a module outside its layers that hidden pruning cannot resize "
                f"({', '.join(v.spec.after_first_layer)}); prune heads, neurons and layers only."
            )


def prune_(model: nn.Module, mask: Mask) -> nn.Module:
    """Remove what ``mask`` does not keep from ``model``, in place, and return ``model``.

    The mask is in original coordinates (``Mask.full(model)`` keeps everything the model has). Layers
    left with no head and no neuron are dropped. Pruning twice composes.

    Example::

        mask = sp.allocate(sp.score(model, batches), model, flops=0.5)
        sp.prune_(model, mask)
        model.config.structprune["heads"]    # original head ids kept per layer
    """
    v = view(model)
    if not isinstance(mask, Mask):
        raise TypeError(f"prune_ expects a structprune.Mask, got {type(mask).__name__}.")
    mask.check_compatible(model)
    _check(v, mask)
    s, spec = v.structure, v.spec

    new_layers, new_heads, new_ffn, dropped, kept = [], [], [], [], []
    for lv in v.layers:
        head_pos = _positions(lv.heads, mask.head[lv.orig])
        ffn_pos = _positions(lv.ffn, mask.ffn[lv.orig])
        if not head_pos and not ffn_pos:
            dropped.append(lv.index)
            continue
        if len(head_pos) != len(lv.heads):
            rows = _head_rows(head_pos, s.head_size)
            for lin, blocks in lv.head_rows:  # q, k, v (fused: one Linear of 3 blocks), head projections
                slice_linear(lin, _blocks(rows, len(lv.heads) * s.head_size, blocks), 0)
            slice_linear(lv.o, rows, 1)
            for attr in spec.attn_head_count_attrs:
                setattr(lv.attn, attr, len(head_pos))
            for attr in spec.attn_all_head_size_attrs:
                setattr(lv.attn, attr, len(head_pos) * s.head_size)
        if len(ffn_pos) != len(lv.ffn):
            idx = torch.tensor(ffn_pos, dtype=torch.long)
            slice_linear(lv.up, _blocks(idx, len(lv.ffn), lv.up_blocks), 0)  # a gated MLP: both halves
            slice_linear(lv.down, idx, 1)
        kept.append(lv)
        new_layers.append(lv.orig)
        new_heads.append([lv.heads[j] for j in head_pos])
        new_ffn.append([lv.ffn[j] for j in ffn_pos])

    for i in reversed(dropped):
        del v.layer_list[i]
    new_hidden = s.hidden
    if mask.hidden is not None:
        current = s.hidden_dims
        pos = [j for j, d in enumerate(current) if mask.hidden[d]]
        if len(pos) != len(current):
            _slice_hidden(v, kept, torch.tensor(pos, dtype=torch.long))
            new_hidden = [current[j] for j in pos]
    structure = Structure(
        num_layers=s.num_layers,
        num_heads=s.num_heads,
        head_size=s.head_size,
        intermediate_size=s.intermediate_size,
        hidden_size=s.hidden_size,
        layers=new_layers,
        heads=new_heads,
        ffn=new_ffn,
        hidden=new_hidden,
    )
    if spec.head_bias:
        _slice_head_bias(v, s, structure)
    v.write_structure(structure, kept=[lv.index for lv in kept] if dropped else None)
    logger.info(
        "pruned to %d layers, %d heads, %d FFN neurons, hidden size %d",
        len(new_layers),
        sum(structure.heads_per_layer),
        sum(structure.ffn_per_layer),
        structure.hidden_width,
    )
    # Give the model the classes its new structure saves and loads with (model.save_pretrained works).
    from ..checkpoint.registry import adopt

    return adopt(model, strict=False)


@torch.no_grad()
def _slice_hidden(v: ModelView, layers: list, pos: torch.Tensor) -> None:
    """Keep residual-stream positions ``pos`` everywhere the stream appears (``view.hidden_sites()`` and
    each kept layer's q/k/v/up inputs, o/down outputs and LayerNorms). Tied weights (an MLM decoder
    sharing the word embeddings) stay tied: each parameter is sliced once and shared again."""
    memo: dict[tuple[int, int], tuple[nn.Parameter, nn.Parameter]] = {}  # holds the old one: ids stay unique

    def cut(module: nn.Module, name: str, dim: int) -> None:
        p = getattr(module, name, None)
        if p is None:
            return
        key = (id(p), dim)
        if key not in memo:
            sliced = p.index_select(dim, pos.to(p.device)).clone()
            memo[key] = (p, nn.Parameter(sliced, requires_grad=p.requires_grad))
        setattr(module, name, memo[key][1])

    def read(lin: nn.Linear) -> None:  # input columns
        cut(lin, "weight", 1)
        lin.in_features = len(pos)

    def write(lin: nn.Linear) -> None:  # output rows
        cut(lin, "weight", 0)
        cut(lin, "bias", 0)
        lin.out_features = len(pos)

    def norm(ln: nn.LayerNorm) -> None:
        cut(ln, "weight", 0)
        cut(ln, "bias", 0)
        ln.normalized_shape = (len(pos),)

    sites = v.hidden_sites()
    for emb in sites.embeddings:
        cut(emb, "weight", 1)
        emb.embedding_dim = len(pos)
    for ln in sites.norms:
        norm(ln)
    for lin in sites.readers:
        read(lin)
    for lin in sites.writers:
        write(lin)
    for lv in layers:
        for lin in lv.readers():  # each Linear once (a fused q/k/v is one)
            read(lin)
        write(lv.o)
        write(lv.down)
        for ln in lv.norms:
            norm(ln)


def _union(structure: Structure) -> list[int]:
    return sorted({h for heads in structure.heads for h in heads})


@torch.no_grad()
def _slice_head_bias(v: ModelView, old: Structure, new: Structure) -> None:
    """Slice a per-head bias shared by all layers (MPNet) to the heads any layer keeps, and give each
    layer the index of its own heads within it."""
    old_union, new_union = _union(old), _union(new)
    emb = v.head_bias
    if new_union != old_union:
        cols = torch.tensor(
            [old_union.index(h) for h in new_union], dtype=torch.long, device=emb.weight.device
        )
        emb.weight = nn.Parameter(emb.weight[:, cols].clone(), requires_grad=emb.weight.requires_grad)
        emb.embedding_dim = len(new_union)
    for module, heads in zip(v.layer_list, new.heads, strict=True):
        attn = module.get_submodule(v.spec.attn)
        index = torch.tensor([new_union.index(h) for h in heads], dtype=torch.long)
        install_head_bias_selector(attn, index, v.spec.head_bias_arg)
