"""`DistillModule`: the trainable part of a run (student + optional projection) and its loss."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ...batches import embeddings_of, labels_of, logits_of, model_inputs
from .config import DistillConfig
from .losses import attention_kd, embedding_kd, hidden_mse, logit_kd, task_loss
from .maps import DistillMap


class DistillModule(nn.Module):
    """What is trained: the student plus, when widths differ, the hidden-state projection.

    ``forward(batch, teacher_out)`` returns ``(loss, parts)``; this whole module is what Accelerate
    prepares (DDP-wraps), so the projection's gradients are synchronised too. The teacher is *not* in it.
    """

    def __init__(self, student: nn.Module, config: DistillConfig, dmap: DistillMap | None, projection=None):
        super().__init__()
        self.student = student
        self.projection = projection
        self.config = config
        self.dmap = dmap
        self.terms = config  # the loss weights in force: the config's, or the current stage's

    def forward(self, batch: Mapping, teacher_out=None):
        cfg, terms = self.config, self.terms
        labels = labels_of(batch)
        inputs = model_inputs(batch)
        distil = teacher_out is not None
        out = self.student(
            **inputs,
            output_hidden_states=distil and terms.hidden_weight > 0,
            output_attentions=distil and terms.attention_weight > 0,
        )
        # an embedding model (structprune.sentence.SentenceEncoder): its sentence embeddings are its output
        embeddings = embeddings_of(out)
        logits = logits_of(out) if embeddings is None else None
        parts: dict[str, torch.Tensor] = {}
        if labels is not None and (terms.task_weight > 0 or not distil):
            if embeddings is not None:  # labels: target embeddings (e.g. the teacher's, computed beforehand)
                parts["task"] = embedding_kd(embeddings, labels, cfg.embedding_loss)
            else:
                parts["task"] = task_loss(logits, labels)
        if distil:
            if terms.logit_weight > 0 and embeddings is not None:
                parts["embedding"] = embedding_kd(embeddings, embeddings_of(teacher_out), cfg.embedding_loss)
            elif terms.logit_weight > 0:
                token_mask = inputs.get("attention_mask") if logits.dim() == 3 else None
                parts["logit"] = logit_kd(logits, logits_of(teacher_out), cfg.temperature, token_mask)
            if terms.hidden_weight > 0:
                parts["hidden"] = hidden_mse(
                    out.hidden_states,
                    teacher_out.hidden_states,
                    self.dmap.hidden_pairs(),
                    inputs.get("attention_mask"),
                    self.projection,
                )
            if terms.attention_weight > 0:
                parts["attention"] = attention_kd(
                    out.attentions,
                    teacher_out.attentions,
                    self.dmap.attention_pairs(),
                    self.dmap.attention_heads(),
                    inputs.get("attention_mask"),
                )
        weights = {
            "task": terms.task_weight if distil else 1.0,
            "logit": terms.logit_weight,
            "embedding": terms.logit_weight,  # the output term of an embedding model
            "hidden": terms.hidden_weight,
            "attention": terms.attention_weight,
        }
        loss = sum(weights[k] * v for k, v in parts.items())
        return loss, parts
