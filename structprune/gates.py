"""Multiplicative head / neuron gates, applied with forward pre-hooks.

transformers 5 has no ``head_mask``; gates replace it. A head gate scales each head's slice of the
input of the attention output projection ``o``; an FFN gate scales the input of the down projection.
One mechanism serves scoring (gradients w.r.t. gates), masked evaluation (simulate a mask before
surgery), reconstruction (observe projection inputs) and tests (masked model == pruned model).

Gates are in original coordinates: ``head`` is ``[L, H]`` (shared by the batch) or ``[B, L, H]`` (one
gate per example, which makes per-example gradients available from one backward pass).

``hidden`` (``[D]``, 0/1) is the exact reference for hidden-size pruning: every LayerNorm over the
residual stream computes its statistics over the kept dimensions only and outputs 0 on the removed ones,
and every other module writing the residual stream (ELECTRA's embedding projection) has its removed
outputs zeroed. The pruned model computes exactly this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .arch import LayerView, view
from .mask import Mask

Observer = Callable[[str, LayerView, torch.Tensor], None]
"""Called as ``observer(kind, layer, x)`` with ``kind`` in {"o", "down"} and ``x`` the gated input."""


def _select(gate: torch.Tensor, orig: int, idx: list[int]) -> torch.Tensor:
    # gate: [L, N] -> [n] or [B, L, N] -> [B, n]
    return gate[orig, idx] if gate.dim() == 2 else gate[:, orig][:, idx]


def _scale(x: torch.Tensor, g: torch.Tensor, group: int) -> torch.Tensor:
    """Scale ``x`` [B, T, n * group] by ``g`` ([n] or [B, n]) repeated over each group of features."""
    g = g.to(dtype=x.dtype, device=x.device)
    g = g.repeat_interleave(group, dim=-1)  # [n * group] or [B, n * group]
    if g.dim() == 2:
        g = g.unsqueeze(1)  # [B, 1, n * group]
    return x * g


@dataclass
class Gates:
    """Head/neuron gates plus optional whole-layer skips and a residual-stream (hidden) mask.

    Example::

        with sp.gates.Gates.from_mask(mask).attach(model):
            logits = model(**batch).logits       # what the pruned model would compute
    """

    head: torch.Tensor | None = None
    ffn: torch.Tensor | None = None
    skip_layers: frozenset[int] = field(default_factory=frozenset)
    observer: Observer | None = None
    hidden: torch.Tensor | None = None

    @classmethod
    def from_mask(cls, mask: Mask, observer: Observer | None = None) -> Gates:
        dropped = frozenset(range(mask.num_layers)) - frozenset(mask.kept_layers)
        hidden = None if mask.hidden is None else mask.hidden.float()
        return cls(mask.head.float(), mask.ffn.float(), dropped, observer, hidden)

    @contextmanager
    def attach(self, model) -> Iterator[Gates]:
        """Install the hooks on ``model`` for the duration of the ``with`` block; always removed."""
        handles = []
        v = view(model)
        self._check_fits(v)
        try:
            for lv in v.layers:
                head_size = lv.o.in_features // max(len(lv.heads), 1)
                handles.append(lv.o.register_forward_pre_hook(self._hook("o", lv, self.head, head_size)))
                handles.append(lv.down.register_forward_pre_hook(self._hook("down", lv, self.ffn, 1)))
                if lv.orig in self.skip_layers:
                    handles.append(lv.module.register_forward_hook(_skip_layer, with_kwargs=True))
            if self.hidden is not None:
                handles += _attach_hidden(v, self.hidden)
            yield self
        finally:
            for h in handles:
                h.remove()

    def _check_fits(self, v) -> None:
        """Gates index original coordinates: they must have been made for this model's original sizes."""
        st = v.structure
        for name, gate, size in (("head", self.head, st.num_heads), ("ffn", self.ffn, st.intermediate_size)):
            if gate is None:
                continue
            shape = tuple(gate.shape[-2:])
            if shape != (st.num_layers, size):
                raise ValueError(
                    f"Gates.{name} has shape {tuple(gate.shape)} but this model has {st.num_layers} layers of {size} "
                    f"{'heads' if name == 'head' else 'FFN neurons'} (original sizes): the gates were made for "
                    "another model. Build them from this model's mask."
                )
        if self.hidden is not None and tuple(self.hidden.shape[-1:]) != (st.hidden_size,):
            raise ValueError(
                f"Gates.hidden has {self.hidden.shape[-1]} dimensions but this model's hidden size is "
                f"{st.hidden_size}: the gates were made for another model."
            )

    def _hook(self, kind: str, lv: LayerView, gate: torch.Tensor | None, group: int):
        idx = lv.heads if kind == "o" else lv.ffn

        def hook(module, args):
            x = args[0]
            if gate is not None:
                x = _scale(x, _select(gate, lv.orig, idx), group)
            if self.observer is not None:
                self.observer(kind, lv, x)
            return (x, *args[1:]) if gate is not None else None

        return hook


def _kept_positions(v, hidden: torch.Tensor) -> torch.Tensor | None:
    """Positions, among the dimensions ``v``'s model holds now, that ``hidden`` ([D] original) keeps."""
    s = v.structure
    if hidden.dim() != 1 or hidden.numel() != s.hidden_size:
        raise ValueError(f"Gates.hidden must be [hidden_size={s.hidden_size}], got {tuple(hidden.shape)}.")
    if not bool(((hidden == 0) | (hidden == 1)).all()):
        raise ValueError(
            "Gates.hidden is the 0/1 reference mask of hidden pruning; give 0 or 1 per dimension."
        )
    current = s.hidden_dims
    pos = [j for j, d in enumerate(current) if hidden[d] > 0]
    if not pos:
        raise ValueError("Gates.hidden keeps no hidden dimension the model still has.")
    return None if len(pos) == len(current) else torch.tensor(pos, dtype=torch.long)


def _attach_hidden(v, hidden: torch.Tensor) -> list:
    pos = _kept_positions(v, hidden)
    if pos is None:
        return []
    sites = v.hidden_sites()
    handles = []
    for norm in sites.norms + [n for lv in v.layers for n in lv.norms]:
        handles.append(norm.register_forward_hook(_masked_norm(pos)))
    for lin in sites.writers + [m for lv in v.layers for m in (lv.o, lv.down)]:
        handles.append(lin.register_forward_hook(_zero_removed(pos)))
    if v.rel_table is not None:
        # The layers also read a table in the hidden space that no LayerNorm need zero (DeBERTa's relative
        # positions): their head projections see only the kept dimensions (a no-op on the residual stream,
        # which is zero there already).
        for lin in {id(m): m for lv in v.layers for m, _ in lv.head_rows}.values():
            handles.append(lin.register_forward_pre_hook(_zero_removed_input(pos)))
    return handles


def masked_layer_norm(x: torch.Tensor, norm: nn.LayerNorm, pos: torch.Tensor) -> torch.Tensor:
    """LayerNorm of ``x`` [..., D] over the dimensions ``pos`` only; the other dimensions become 0.

    This is what a LayerNorm whose weight and bias were sliced to ``pos`` computes, scattered back.
    """
    pos = pos.to(x.device)
    w = None if norm.weight is None else norm.weight.index_select(0, pos)
    b = None if norm.bias is None else norm.bias.index_select(0, pos)
    kept = F.layer_norm(x.index_select(-1, pos), (len(pos),), w, b, norm.eps)  # [..., k]
    return torch.zeros_like(x).index_copy(-1, pos, kept)


def _masked_norm(pos: torch.Tensor):
    def hook(module, args, output):
        return masked_layer_norm(args[0], module, pos)

    return hook


def _zero_removed(pos: torch.Tensor):
    def hook(module, args, output):
        return torch.zeros_like(output).index_copy(
            -1, pos.to(output.device), output.index_select(-1, pos.to(output.device))
        )

    return hook


def _zero_removed_input(pos: torch.Tensor):
    def hook(module, args):
        x = args[0]
        kept = x.index_select(-1, pos.to(x.device))
        return (torch.zeros_like(x).index_copy(-1, pos.to(x.device), kept), *args[1:])

    return hook


def _skip_layer(module, args, kwargs, output):
    """Forward hook making a layer the identity (the reference for a dropped layer)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden
