"""Hidden-size (residual stream) pruning: score the residual-stream dimensions.

Removing dimension ``d`` of the residual stream removes it everywhere it appears: the embeddings, every
LayerNorm, the input columns of q/k/v/up and the output rows of o/down in every layer, and the task-head
inputs that read the stream (``view(model).hidden_sites()`` lists them from the family's spec). The head
size is kept: only q/k/v *input* columns and o *output* rows shrink, so any hidden size works with any
number of heads. The exact reference of the pruned model is ``Gates(hidden=mask)``: every LayerNorm over
the stream computes its statistics over the kept dimensions and outputs 0 on the removed ones.

``config.hidden_size`` keeps the original width; ``config.structprune["hidden"]`` lists the original
dimensions kept. MLM heads tied to the word embeddings are handled: where the embedding space is the
residual stream, the MLM transform's output, its LayerNorm and the tied decoder's input shrink with it
and the decoder stays tied to the (sliced) word embeddings.

Two scorers, both in original coordinates (``[hidden_size]``, higher = keep):

- ``"activation"``: mean |value| of each dimension at every point where the stream is written (each
  LayerNorm output over it, ELECTRA's embedding projection; in pre-norm layers also each o and down
  output), over real tokens, summed over the points;
  LayerNorm weights are included, since they are part of the output.
- ``"taylor"``: |gradient of the loss w.r.t. a multiplicative gate ``g[d]``| applied at all those points
  at once (one gate per example, first-order Taylor as for heads), which is what removing ``d``
  everywhere does to first order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..arch import ModelView, view
from ..batches import has_labels, iterate, model_inputs, num_examples, to_device
from . import functional as fn
from .passes import own_prediction_loss, scoring_state

HIDDEN_METHODS = ("activation", "taylor")


def _write_points(v: ModelView) -> list[nn.Module]:
    """Modules whose output is (a fresh copy of) the residual stream: LayerNorms over it and writers; in
    pre-norm layers (ModernBERT) the stream is a sum that each layer's o and down add to, so those too."""
    sites = v.hidden_sites()
    points = sites.norms + sites.writers + [n for lv in v.layers for n in lv.norms]
    if v.spec.pre_norm:
        points += [m for lv in v.layers for m in (lv.o, lv.down)]
    return points


def _token_mask(batch: dict, x: torch.Tensor) -> torch.Tensor | None:
    mask = batch.get("attention_mask")
    if mask is None or mask.shape != x.shape[:2]:
        return None
    return mask.to(x.dtype)[..., None]  # [B, T, 1]


def score_hidden(
    model: nn.Module,
    batches: Iterable[Mapping],
    *,
    method: str = "activation",
    max_batches: int | None = None,
    label_free: bool = False,
    progress: bool = True,
) -> torch.Tensor:
    """Importance of every original residual-stream dimension ``[hidden_size]`` (see the module doc).

    Dimensions the model no longer has score 0. ``taylor`` reads labels from the batches, or uses the
    model's own predictions with ``label_free=True``. Leaves the model as it was.

    Example::

        scores = sp.score(model, batches, method="taylor")
        scores.hidden = sp.score_hidden(model, batches, method="activation")
        mask = sp.allocate(scores, model, hidden=192, flops=0.2)
    """
    if method not in HIDDEN_METHODS:
        raise ValueError(
            f"Unknown hidden scoring method {method!r}; choose one of {', '.join(HIDDEN_METHODS)}."
        )
    v = view(model)
    s = v.structure
    points = _write_points(v)
    if not points:
        raise ValueError(
            f"The {v.spec.name!r} spec describes no LayerNorms over the residual stream (ArchSpec.layer_norms); "
            "hidden-size pruning needs them."
        )
    acc = torch.zeros(s.hidden_width, dtype=torch.float64)
    device = next(model.parameters()).device
    current: dict = {}

    def observe(module, args, output):
        x = output.detach().float()  # [B, T, D]
        mask = _token_mask(current["batch"], x)
        a = x.abs() if mask is None else x.abs() * mask
        tokens = x.shape[0] * x.shape[1] if mask is None else mask.sum()
        acc.add_((a.sum(dim=(0, 1)) / tokens).double().cpu())

    def gate(module, args, output):
        return output * current["gate"].to(output.dtype)  # [B, 1, D] broadcast over tokens

    with scoring_state(model):
        handles = [p.register_forward_hook(observe if method == "activation" else gate) for p in points]
        try:
            for raw in iterate(
                batches, max_batches, progress=progress, desc="scoring hidden", what="Scoring"
            ):
                batch = to_device(raw, device)
                current["batch"] = batch
                if method == "activation":
                    with torch.no_grad():
                        model(**model_inputs(batch))
                    continue
                acc += _taylor_batch(model, batch, s.hidden_width, label_free, current)
        finally:
            for h in handles:
                h.remove()
    out = torch.zeros(s.hidden_size)
    out[s.hidden_dims] = acc.float()
    return out


def _taylor_batch(model, batch: dict, width: int, label_free: bool, current: dict) -> torch.Tensor:
    if not has_labels(batch) and not label_free:
        raise ValueError(
            "A batch has no 'labels'; taylor hidden scoring needs them. Add labels or pass label_free=True."
        )
    if label_free:
        batch = model_inputs(batch)
    bsz = num_examples(batch)
    device = next(model.parameters()).device
    g = torch.ones(bsz, 1, width, device=device, requires_grad=True)
    current["gate"] = g
    out = model(**batch)
    if label_free:
        loss = own_prediction_loss(out)
    else:
        if getattr(out, "loss", None) is None:
            raise ValueError("The model returned no loss for a batch with labels; use a task model.")
        loss = out.loss * bsz  # batch mean -> sum: each example's gate gets its own gradient
    (grad,) = torch.autograd.grad(loss, (g,))
    return fn.taylor_from_gate_grads(grad[:, 0].detach().float()).double().cpu()
