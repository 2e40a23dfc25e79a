"""What every gradient or activation scorer shares: the scoring state, the gate-gradient pass, and the
loss against a model's own predictions (label-free scoring).

Used by :mod:`.units` (heads and neurons), :mod:`.gradients` (per-example gradients for the search),
:mod:`.layers` and :mod:`.hidden`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import ModelView
from ..batches import embeddings_of, has_labels, iterate, model_inputs, num_examples, to_device
from ..gates import Gates
from .embedding import fisher_sample_loss


def zeros(v: ModelView) -> tuple[torch.Tensor, torch.Tensor]:
    s = v.structure
    return torch.zeros(s.num_layers, s.num_heads), torch.zeros(s.num_layers, s.intermediate_size)


@contextmanager
def scoring_state(model: nn.Module):
    """Eval mode and frozen parameters while scoring; restores both (and clears nothing it did not set)."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def own_prediction_loss(out) -> torch.Tensor:
    """Sum over examples of the cross-entropy to the model's own predicted labels (label-free); for an
    embedding model (a ``sentence_embedding`` output), the loss whose squared per-example gradients estimate
    how far removing a gate moves the normalised embedding (:func:`.embedding.fisher_sample_loss`)."""
    embeddings = embeddings_of(out)
    if embeddings is not None:
        return fisher_sample_loss(embeddings)
    heads = [
        t for name in ("logits", "start_logits", "end_logits") if (t := getattr(out, name, None)) is not None
    ]
    if not heads:
        raise ValueError(
            "Label-free gradient scoring needs a model with a task head that returns logits; this model "
            "returns none. Use method='activation' or 'magnitude', or a *For... task model."
        )
    loss = 0.0
    for logits in heads:
        if logits.shape[-1] == 1:
            raise ValueError(
                "Label-free gradient scoring needs class logits; a regression head (num_labels=1) has no "
                "own prediction to differ from. Pass labels, or use method='activation'."
            )
        flat = logits.reshape(-1, logits.shape[-1]).float()
        loss = loss + F.cross_entropy(flat, flat.argmax(-1).detach(), reduction="sum")
    return loss


def gate_grads(model, v: ModelView, batches, *, label_free: bool, max_batches, progress, reduce):
    """Per-example gate gradients of the loss, reduced per batch by ``reduce`` and summed over batches."""
    s = v.structure
    head_acc, ffn_acc = zeros(v)
    device = next(model.parameters()).device
    for raw in iterate(batches, max_batches, progress=progress, desc="scoring", what="Scoring"):
        batch = to_device(raw, device)
        if not has_labels(batch) and not label_free:
            raise ValueError(
                "A batch has no 'labels' (or start/end_positions); gradient scoring needs them. Add a 'labels' column, or pass "
                "label_free=True to score against the model's own predictions."
            )
        if label_free:
            batch = model_inputs(batch)
        bsz = num_examples(batch)
        head = torch.ones(bsz, s.num_layers, s.num_heads, device=device, requires_grad=True)
        ffn = torch.ones(bsz, s.num_layers, s.intermediate_size, device=device, requires_grad=True)
        with Gates(head, ffn).attach(model):
            out = model(**batch)
            if label_free:
                loss = own_prediction_loss(out)  # sum of per-example losses
            else:
                if getattr(out, "loss", None) is None:
                    raise ValueError("The model returned no loss for a batch with labels; use a task model.")
                loss = out.loss * bsz  # batch mean -> sum, so each gate gets its own example's gradient
        g_head, g_ffn = torch.autograd.grad(loss, (head, ffn))
        head_acc += reduce(g_head.detach().float()).cpu()
        ffn_acc += reduce(g_ffn.detach().float()).cpu()
    return only_alive(v, head_acc, ffn_acc)


def only_alive(v: ModelView, head: torch.Tensor, ffn: torch.Tensor):
    from ..mask import Mask

    alive = Mask.full(v.model)
    return head * alive.head, ffn * alive.ffn
