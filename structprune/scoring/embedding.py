"""The label-free objective of an embedding model: how far its sentence embeddings move from the unpruned
model's. One definition, used wherever structprune compares or differentiates an embedding model's output:

- :func:`embedding_distance`: per-sentence distance of an embedding from the unpruned model's — ``"cosine"``
  (``1 - cos``, i.e. half the squared distance of the L2-normalised embeddings; what retrieval and STS
  compare) or ``"mse"`` (mean squared difference, the loss of sentence-transformers' distillation
  recipe). ``compress`` chooses among its candidates by the cosine distance on held-back sentences
  (:mod:`structprune.run.select`), layer scoring measures the damage of skipping a layer with it
  (:mod:`.layers`) and distillation matches the teacher's embeddings with it
  (:func:`structprune.recovery.distill.losses.embedding_kd`).
- :func:`fisher_sample_loss`: what gradient scorers back-propagate for an embedding model
  (:func:`structprune.scoring.passes.own_prediction_loss`). At the unpruned model the distance and its
  gradient are zero, so first-order scores of the distance itself would all be 0. What ranks a gate is
  the second-order growth of the distance when it is removed: for ``1 - cos`` at its minimum that is
  ``1/2 ||J_g||^2``, with ``J_g`` the derivative of the normalised embedding w.r.t. the gate (the
  Gauss-Newton diagonal, exact at the minimum, which is also the Fisher information of a Gaussian
  around the embedding). Its unbiased one-sample estimate is ``(z . J_g)^2`` for a random sign vector
  ``z`` (Hutchinson), i.e. the squared gate gradient of ``z . e``: the loss returned here. Fisher scores
  (squared per-example gradients) are therefore that estimate; the constrained search's rearrangement
  gets ``E[g g^T] = J^T J``, the Gauss-Newton block it needs, from the same per-example gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EMBEDDING_LOSSES = ("cosine", "mse")


def embedding_distance(
    embedding: torch.Tensor, reference: torch.Tensor, kind: str = "cosine"
) -> torch.Tensor:
    """Per-sentence distance ``[B]`` of ``embedding`` ``[B, D]`` from ``reference`` ``[B, D]``.

    ``kind="cosine"``: ``1 - cos(embedding, reference)``; ``kind="mse"``: the mean over dimensions of the
    squared difference (sentence-transformers' ``MSELoss``).

    Example::

        embedding_distance(student_emb, teacher_emb).mean()   # 0 when the directions agree
    """
    if kind not in EMBEDDING_LOSSES:
        raise ValueError(f"Unknown embedding loss {kind!r}; choose one of {', '.join(EMBEDDING_LOSSES)}.")
    if embedding.shape != reference.shape:
        raise ValueError(
            f"Embeddings {tuple(embedding.shape)} and reference embeddings {tuple(reference.shape)} differ in "
            "shape; both models must produce embeddings of the same dimension."
        )
    e, r = embedding.float(), reference.float()
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(e, r, dim=-1)
    return (e - r).pow(2).mean(-1)


def fisher_sample_loss(embedding: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``sum_i z_i . normalize(embedding_i)`` with fixed random signs ``z`` ``[B, D]`` (seeded: the same
    scores on every run). Its per-example gradients squared estimate the Gauss-Newton diagonal of the
    cosine distance (see the module docstring).

    Example::

        loss = fisher_sample_loss(out.sentence_embedding)   # then autograd w.r.t. per-example gates
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(0, 2, embedding.shape, generator=g).float().mul_(2).sub_(1)  # Rademacher signs
    return (F.normalize(embedding.float(), dim=-1) * z.to(embedding.device)).sum()
