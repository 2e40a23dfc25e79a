"""Multiplicative head / neuron gates, applied with forward pre-hooks.

transformers 5 has no ``head_mask``; gates replace it. A head gate scales each head's slice of the
input of the attention output projection ``o``; an FFN gate scales the input of the down projection.
One mechanism serves scoring (gradients w.r.t. gates), masked evaluation (simulate a mask before
surgery), reconstruction (observe projection inputs) and tests (masked model == pruned model).

Gates are in original coordinates: ``head`` is ``[L, H]`` (shared by the batch) or ``[B, L, H]`` (one
gate per example, which makes per-example gradients available from one backward pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

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
    """Head/neuron gates plus optional whole-layer skips.

    Example::

        with sp.Gates.from_mask(mask).attach(model):
            logits = model(**batch).logits       # what the pruned model would compute
    """

    head: torch.Tensor | None = None
    ffn: torch.Tensor | None = None
    skip_layers: frozenset[int] = field(default_factory=frozenset)
    observer: Observer | None = None

    @classmethod
    def from_mask(cls, mask: Mask, observer: Observer | None = None) -> Gates:
        dropped = frozenset(range(mask.num_layers)) - frozenset(mask.kept_layers)
        return cls(mask.head.float(), mask.ffn.float(), dropped, observer)

    @contextmanager
    def attach(self, model) -> Iterator[Gates]:
        """Install the hooks on ``model`` for the duration of the ``with`` block; always removed."""
        handles = []
        try:
            for lv in view(model).layers:
                head_size = lv.o.in_features // max(len(lv.heads), 1)
                handles.append(lv.o.register_forward_pre_hook(self._hook("o", lv, self.head, head_size)))
                handles.append(lv.down.register_forward_pre_hook(self._hook("down", lv, self.ffn, 1)))
                if lv.orig in self.skip_layers:
                    handles.append(lv.module.register_forward_hook(_skip_layer, with_kwargs=True))
            yield self
        finally:
            for h in handles:
                h.remove()

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


def _skip_layer(module, args, kwargs, output):
    """Forward hook making a layer the identity (the reference for a dropped layer)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden
