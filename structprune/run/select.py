"""How ``compress`` chooses among its own candidates: by the loss on calibration examples it held back.

The constrained search with reconstruction is not the best path on every task (a search tuned on some
tasks can lose to a global allocation on another; reconstruction can fit the calibration set rather than
the task). ``compress(select=True)`` therefore builds a few candidates from the same scores - the
configured path, a global allocation of the same scores, a global allocation of Taylor scores from the
same gradients, each with and without reconstruction - and weighs them by their loss on a held-back part of
the calibration data: by default (``select_by="divergence"``) the KL divergence of its outputs from the unpruned
model's, or for an embedding model the mean cosine distance from its sentence embeddings; with
``select_by="task_loss"`` and labels, the task loss. The report lists every candidate's held-out loss.

The default is measured (``benchmarks/results/selection_*.md``, summed up in ``selection_summary.md``): over 32
cases of five GLUE tasks, two budgets and three to five calibration seeds each, the candidate with the lowest
held-back KL scored higher on validation than the task loss's pick (kept unless another was clearly lower) in 10
and lower in 2 (+0.64 points on average). The task loss on a few hundred labelled examples is noisier than the
KL from a teacher's full output distribution: on RTE at 25% it kept a global allocation without reconstruction at
44.40% (below the majority class) whose held-back task loss was the lowest by chance.

A few hundred held-back examples rank candidates that differ by a collapse (all-mpnet-base-v2's rearranged
search at chance) but not always candidates within noise of each other (MiniLM on SST-2, without reconstruction:
the search's rearrangement variants within 0.7 points of validation accuracy, and the lowest held-back task loss
the worst of them; ``benchmarks/results/rearrange_minilm_sst2.md``). ``margin`` > 0 keeps the configured path unless
another candidate's loss is lower by more than that many standard errors of the per-example difference (paired
over the same held-back examples; :func:`clearly_lower`); by default (0) the lowest loss wins, which the cases
above favour with the KL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..batches import embeddings_of, labels_of, logits_of, model_inputs, num_examples, to_device
from ..mask import Scores
from ..scoring import functional as fn
from ..scoring.embedding import embedding_distance
from ..scoring.gradients import GateGradients

MIN_FIT_EXAMPLES = 32  # below this, all calibration data fits and nothing is held back


def split_holdout(batches: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """The calibration batches split by whole batches into ``(fit, held)``: the last ``fraction`` of the
    examples are held back (``held`` is empty when too few examples would be left to fit)."""
    total = sum(num_examples(b) for b in batches)
    want = round(total * fraction)
    if want < 1 or total - want < MIN_FIT_EXAMPLES or len(batches) < 2:
        return batches, []
    held, n = [], 0
    for b in reversed(batches):
        if n >= want or len(held) == len(batches) - 1:
            break
        held.insert(0, b)
        n += num_examples(b)
    return batches[: len(batches) - len(held)], held


def taylor_from(grads: GateGradients, batch_sizes: list[int]) -> Scores:
    """Taylor scores (|gradient of the batch-mean loss| summed over batches) from per-example gradients."""
    head = torch.zeros(grads.head.shape[1:])
    ffn = torch.zeros(grads.ffn.shape[1:])
    start = 0
    for n in batch_sizes:
        head += fn.taylor_from_gate_grads(grads.head[start : start + n])
        ffn += fn.taylor_from_gate_grads(grads.ffn[start : start + n])
        start += n
    return Scores(head, ffn, method="taylor", meta={"label_free": grads.label_free})


def _output(out) -> torch.Tensor:
    """What label-free selection compares: an embedding model's sentence embeddings, else the logits."""
    embeddings = embeddings_of(out)
    return (embeddings if embeddings is not None else logits_of(out)).float()


@torch.no_grad()
def reference_logits(model: nn.Module, held: list[dict]) -> list[torch.Tensor]:
    """The unpruned model's outputs on ``held`` (logits, or sentence embeddings for an embedding model)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        return [_output(model(**model_inputs(b, device))) for b in held]
    finally:
        model.train(was)


def _per_example(values: torch.Tensor, n: int) -> torch.Tensor:
    """``values`` (one per example, or per token) as ``n`` per-example means."""
    return values.reshape(n, -1).float().mean(-1)


@torch.no_grad()
def heldout_losses(
    model: nn.Module, held: list[dict], *, label_free: bool, reference: list | None
) -> torch.Tensor:
    """The loss of ``model`` on each example of ``held`` (a 1-d tensor): its task loss (cross-entropy, or the
    squared error of a one-output regression head), or (``label_free``) the KL divergence of its outputs from
    ``reference`` (the unpruned model's logits; for an embedding model, the cosine distance of its sentence
    embeddings from the unpruned model's)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    losses = []
    try:
        for i, raw in enumerate(held):
            batch = to_device(raw, device)
            n = num_examples(batch)
            out = model(**model_inputs(batch))
            if label_free:
                logits = _output(out)
                ref = reference[i]
                if embeddings_of(out) is not None:
                    loss = embedding_distance(logits, ref)
                elif logits.shape[-1] == 1:  # regression: squared difference
                    loss = (logits - ref).pow(2)
                else:
                    p = F.log_softmax(ref.reshape(-1, ref.shape[-1]), -1)
                    q = F.log_softmax(logits.reshape(-1, logits.shape[-1]), -1)
                    loss = F.kl_div(q, p, log_target=True, reduction="none").sum(-1)
            else:
                logits, labels = getattr(out, "logits", None), labels_of(batch)
                multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
                # spans, multi-label: the model's own loss for the batch, for each of its examples
                if logits is None or labels is None or multi_label:
                    loss = model(**batch).loss.reshape(1).expand(n)
                elif logits.shape[-1] == 1:  # regression head
                    loss = (logits.float().reshape(labels.shape) - labels.float()).pow(2)
                else:
                    loss = F.cross_entropy(
                        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                        reduction="none",
                    )  # fmt: skip
            losses.append(_per_example(loss, n))
    finally:
        model.train(was)
    return torch.cat(losses) if losses else torch.zeros(0)


def heldout_loss(model: nn.Module, held: list[dict], *, label_free: bool, reference: list | None) -> float:
    """Mean per-example held-back loss of ``model`` (:func:`heldout_losses`)."""
    losses = heldout_losses(model, held, label_free=label_free, reference=reference)
    return float(losses.mean()) if len(losses) else 0.0


def clearly_lower(losses: torch.Tensor, than: torch.Tensor, margin: float) -> bool:
    """Whether per-example ``losses`` are lower than ``than`` (the same examples, in order) by more than ``margin``
    standard errors of their mean difference (a one-sided paired test; ``margin=0``: lower at all)."""
    diff = (than - losses).double()
    if len(diff) < 2 or margin == 0:
        return bool(diff.mean() > 0) if len(diff) else False
    return bool(diff.mean() > margin * diff.std() / len(diff) ** 0.5)
