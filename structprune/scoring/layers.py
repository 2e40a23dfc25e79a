"""Depth pruning: score whole encoder layers.

A layer's score is how much worse the model does with that layer skipped (made the identity with
``Gates(skip_layers={l})``, the exact reference of a dropped layer): the increase of the task loss when
the batches carry labels, else the divergence from the full model's own outputs (KL of the logits, the
cosine distance of an embedding model's sentence embeddings, or the mean squared change of the last
hidden state for a model without a task head). Higher = keep.
``structprune.allocate(scores, model, layers=4)`` keeps the best-scored layers; ``prune_`` then drops the
others and records ``Structure.layers``, the original index of each kept layer (the distillation map).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import view
from ..batches import embeddings_of, has_labels, iterate, model_inputs, to_device
from ..gates import Gates
from .embedding import embedding_distance
from .passes import scoring_state


def _outputs(model: nn.Module, batch: dict, use_labels: bool) -> tuple[str, torch.Tensor]:
    """``("loss", scalar)`` with labels, else ``("embedding", [B, D])``, ``("logits", [..., C])`` or
    ``("hidden", [B, T, D])``."""
    out = model(**batch)
    if use_labels:
        if getattr(out, "loss", None) is None:
            raise ValueError("The model returned no loss for a batch with labels; use a task model.")
        return "loss", out.loss.float()
    embeddings = embeddings_of(out)
    if embeddings is not None:  # an embedding model: how far its sentence embeddings move
        return "embedding", embeddings.float()
    logits = getattr(out, "logits", None)
    if logits is None:
        logits = getattr(out, "start_logits", None)
    if logits is not None and logits.shape[-1] > 1:
        return "logits", logits.float()
    if logits is not None:  # regression: one output, compared by squared error
        return "hidden", logits.float()
    return "hidden", out.last_hidden_state.float()


def _damage(full: tuple[str, torch.Tensor], skipped: tuple[str, torch.Tensor]) -> float:
    """How much worse ``skipped`` is than ``full``: loss increase, the mean cosine distance of sentence
    embeddings, KL(full || skipped) of the logits (per example or token), or the mean squared change."""
    kind, a = full
    b = skipped[1]
    if kind == "loss":
        return float(b - a)
    if kind == "embedding":
        return float(embedding_distance(b, a).mean())
    if kind == "logits":
        p = F.log_softmax(a.reshape(-1, a.shape[-1]), -1)
        q = F.log_softmax(b.reshape(-1, b.shape[-1]), -1)
        return float(F.kl_div(q, p, log_target=True, reduction="batchmean"))
    return float((a - b).pow(2).mean())


def score_layers(
    model: nn.Module,
    batches: Iterable[Mapping],
    *,
    max_batches: int | None = None,
    label_free: bool = False,
    progress: bool = True,
) -> torch.Tensor:
    """Importance of every original layer ``[num_layers]``: the damage done by skipping it.

    With labels in the batches (and ``label_free=False``) the damage is the task-loss increase; otherwise
    it is the KL divergence from the full model's logits (MSE of the last hidden state for a base model).
    Layers the model no longer has score 0 (``allocate`` never keeps them). Leaves the model as it was.

    Example::

        scores = sp.score(model, batches, method="taylor")
        scores.layer = sp.score_layers(model, batches)
        mask = sp.allocate(scores, model, layers=4, flops=0.3)
    """
    v = view(model)
    out = torch.zeros(v.structure.num_layers, dtype=torch.float64)
    device = next(model.parameters()).device
    n = 0
    with scoring_state(model), torch.no_grad():
        for raw in iterate(batches, max_batches, progress=progress, desc="scoring layers", what="Scoring"):
            batch = to_device(raw, device)
            use_labels = not label_free and has_labels(batch)
            if not use_labels:
                batch = model_inputs(batch)
            full = _outputs(model, batch, use_labels)
            for lv in v.layers:
                with Gates(skip_layers=frozenset({lv.orig})).attach(model):
                    out[lv.orig] += _damage(full, _outputs(model, batch, use_labels))
            n += 1
    return (out / max(n, 1)).float()
