"""Pure loss functions of distillation (tensors in, scalar tensor out; no modules, no state).

Shapes: logits ``[B, C]`` (sequence tasks) or ``[B, T, C]`` (token tasks); sentence embeddings ``[B, D]``;
hidden states ``[B, T, D]``; attention probabilities ``[B, heads, T, T]``; ``attention_mask`` ``[B, T]``
with 1 = real token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ...scoring.embedding import embedding_distance


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classification (labels ``-100`` ignored), MSE when ``logits`` has one output.

    Example::

        task_loss(torch.randn(4, 3), torch.tensor([0, 2, 1, 1]))
    """
    if logits.shape[-1] == 1:  # regression (e.g. STS-B)
        return F.mse_loss(
            logits.squeeze(-1).float(), labels.to(logits.device).float().view(logits.shape[:-1])
        )
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).long(), ignore_index=-100
    )


def logit_kd(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logit distillation: ``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` averaged over examples
    (over real tokens for token tasks, ``mask`` ``[B, T]``); MSE between outputs for regression (one output).

    Example::

        logit_kd(student_logits, teacher_logits, temperature=2.0)
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"Student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ; the "
            "two models must have the same number of labels."
        )
    s, t = student.float(), teacher.detach().float()
    if s.shape[-1] == 1:
        per = (s - t).pow(2).squeeze(-1)  # [B] or [B, T]
    else:
        log_p_s = F.log_softmax(s / temperature, dim=-1)
        log_p_t = F.log_softmax(t / temperature, dim=-1)
        per = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * temperature**2  # [B] or [B, T]
    return _masked_mean(per, mask if per.dim() == 2 else None)


def embedding_kd(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Embedding distillation (sentence-transformers' recipe): the mean over sentences of the distance of the
    student's sentence embeddings ``[B, D]`` from the teacher's, ``"mse"`` or ``"cosine"`` (``1 - cos``;
    :func:`structprune.scoring.embedding.embedding_distance`).

    Example::

        embedding_kd(student_out.sentence_embedding, teacher_out.sentence_embedding, "cosine")
    """
    return embedding_distance(student, teacher.detach(), kind).mean()


def _masked_mean(per: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per.mean()
    m = mask.to(per.dtype)
    return (per * m).sum() / m.sum().clamp_min(1.0)


def hidden_mse(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    layer_map: Sequence[tuple[int, int]],
    attention_mask: torch.Tensor | None = None,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean over mapped pairs of the per-token MSE between hidden states.

    ``layer_map`` lists ``(student_index, teacher_index)`` pairs into the ``hidden_states`` tuples
    (index 0 = embeddings, ``i + 1`` = output of layer ``i``). ``project`` maps a student state to the
    teacher's width when they differ. Padding tokens (``attention_mask == 0``) are not counted.

    Example::

        hidden_mse(s_out.hidden_states, t_out.hidden_states, [(0, 0), (1, 2)], batch["attention_mask"])
    """
    if not layer_map:
        raise ValueError("hidden_mse needs at least one (student, teacher) layer pair.")
    total = 0.0
    for si, ti in layer_map:
        s, t = student[si].float(), teacher[ti].detach().float()  # [B, T, D]
        if project is not None:
            s = project(s).float()
        if s.shape != t.shape:
            raise ValueError(
                f"Student hidden state {si} has shape {tuple(s.shape)} but teacher state {ti} has "
                f"{tuple(t.shape)}; widths differ, so a projection is needed."
            )
        per = (s - t).pow(2).mean(-1)  # [B, T]
        total = total + _masked_mean(per, attention_mask)
    return total / len(layer_map)


def attention_kd(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    layer_map: Sequence[tuple[int, int]],
    head_map: Sequence[Sequence[int]],
    attention_mask: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """KL(teacher || student) between attention distributions of the kept heads, averaged over mapped
    layers, heads and real query tokens.

    ``layer_map`` holds ``(student_layer, teacher_layer)`` pairs into the ``attentions`` tuples (0-based
    layers); ``head_map[k]`` lists, for pair ``k``, the teacher head index of each student head (same order
    as the student's heads).

    Example::

        attention_kd(s_out.attentions, t_out.attentions, [(0, 0)], [[0, 2, 3]], batch["attention_mask"])
    """
    if len(layer_map) != len(head_map) or not layer_map:
        raise ValueError("attention_kd needs one head list per (student, teacher) layer pair, and >= 1 pair.")
    total = 0.0
    for (si, ti), heads in zip(layer_map, head_map, strict=True):
        s = student[si].float()  # [B, h_s, T, T]
        idx = torch.as_tensor(list(heads), dtype=torch.long, device=teacher[ti].device)
        t = teacher[ti].detach().float().index_select(1, idx)  # [B, h_s, T, T]
        if s.shape != t.shape:
            raise ValueError(
                f"Student attention {si} has shape {tuple(s.shape)} but the mapped teacher heads give "
                f"{tuple(t.shape)}; the head map does not match the student's heads."
            )
        per = (t * (torch.log(t + eps) - torch.log(s + eps))).sum(-1)  # [B, h, T]
        per = per.mean(1)  # [B, T] (mean over heads)
        total = total + _masked_mean(per, attention_mask)
    return total / len(layer_map)
