"""Importance scoring: ``score(model, batches, method=...) -> Scores``.

Scorers are registered by name (``register_scorer``) and return head and neuron scores in original
coordinates. Scoring leaves the model as it found it: no hooks, no gradients, same ``requires_grad``
flags and train/eval mode.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..arch import ModelView, view
from ..gates import Gates
from ..mask import Scores
from . import functional as fn

LABEL_KEYS = ("labels", "start_positions", "end_positions")
Scorer = Callable[..., tuple[torch.Tensor, torch.Tensor]]
_SCORERS: dict[str, tuple[Scorer, bool]] = {}


def register_scorer(name: str, scorer: Scorer, *, needs_data: bool = True) -> None:
    """Register ``scorer(view, batches, **options) -> (head [L, H], ffn [L, I])`` under ``name``."""
    _SCORERS[name] = (scorer, needs_data)


def available_scorers() -> list[str]:
    return sorted(_SCORERS)


def _zeros(v: ModelView) -> tuple[torch.Tensor, torch.Tensor]:
    s = v.structure
    return torch.zeros(s.num_layers, s.num_heads), torch.zeros(s.num_layers, s.intermediate_size)


@contextmanager
def _scoring_state(model: nn.Module):
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


def _to_device(batch: Mapping, device: torch.device) -> dict:
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"Each batch must be a dict of model inputs (input_ids, attention_mask, labels, ...); got "
            f"{type(batch).__name__}. Use a DataLoader with a collator such as DataCollatorWithPadding."
        )
    return {k: (t.to(device) if isinstance(t, torch.Tensor) else t) for k, t in batch.items()}


def _batches(batches: Iterable | None, max_batches: int | None, progress: bool, desc: str):
    if batches is None:
        raise ValueError(
            "This scoring method needs data: pass an iterable of batches (dicts of model inputs)."
        )
    it = iter(batches)
    if max_batches is not None:
        it = itertools.islice(it, max_batches)
    count = 0
    for batch in tqdm(it, desc=desc, disable=not progress, leave=False):
        count += 1
        yield batch
    if count == 0:
        raise ValueError("The batch iterable is empty; scoring needs at least one batch of examples.")


def _own_prediction_loss(out) -> torch.Tensor:
    """Sum over examples of the cross-entropy to the model's own predicted labels (label-free)."""
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


def _gate_grads(model, v: ModelView, batches, *, label_free: bool, max_batches, progress, reduce):
    """Per-example gate gradients of the loss, reduced per batch by ``reduce`` and summed over batches."""
    s = v.structure
    head_acc, ffn_acc = _zeros(v)
    device = next(model.parameters()).device
    for raw in _batches(batches, max_batches, progress, "scoring"):
        batch = _to_device(raw, device)
        has_labels = any(batch.get(k) is not None for k in LABEL_KEYS)
        if not has_labels and not label_free:
            raise ValueError(
                "A batch has no 'labels' (or start/end_positions); gradient scoring needs them. Add a 'labels' column, or pass "
                "label_free=True to score against the model's own predictions."
            )
        if label_free:
            for k in LABEL_KEYS:
                batch.pop(k, None)
        bsz = next(t for t in batch.values() if isinstance(t, torch.Tensor)).shape[0]
        head = torch.ones(bsz, s.num_layers, s.num_heads, device=device, requires_grad=True)
        ffn = torch.ones(bsz, s.num_layers, s.intermediate_size, device=device, requires_grad=True)
        with Gates(head, ffn).attach(model):
            out = model(**batch)
            if label_free:
                loss = _own_prediction_loss(out)  # sum of per-example losses
            else:
                if getattr(out, "loss", None) is None:
                    raise ValueError("The model returned no loss for a batch with labels; use a task model.")
                loss = out.loss * bsz  # batch mean -> sum, so each gate gets its own example's gradient
        g_head, g_ffn = torch.autograd.grad(loss, (head, ffn))
        head_acc += reduce(g_head.detach().float()).cpu()
        ffn_acc += reduce(g_ffn.detach().float()).cpu()
    return _only_alive(v, head_acc, ffn_acc)


def _only_alive(v: ModelView, head: torch.Tensor, ffn: torch.Tensor):
    from ..mask import Mask

    alive = Mask.full(v.model)
    return head * alive.head, ffn * alive.ffn


def _taylor(model, v, batches, *, label_free=False, max_batches=None, progress=True):
    return _gate_grads(
        model, v, batches, label_free=label_free, max_batches=max_batches, progress=progress,
        reduce=fn.taylor_from_gate_grads,
    )  # fmt: skip


def _fisher(model, v, batches, *, label_free=False, max_batches=None, progress=True):
    return _gate_grads(
        model, v, batches, label_free=label_free, max_batches=max_batches, progress=progress,
        reduce=fn.fisher_from_gate_grads,
    )  # fmt: skip


def _magnitude(model, v, batches=None, *, norm: str = "l2", **_unused):
    p = {"l1": 1.0, "l2": 2.0}.get(norm)
    if p is None:
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}.")
    head, ffn = _zeros(v)
    dh = v.structure.head_size
    for lv in v.layers:
        if lv.heads:
            w = [m.weight.detach().float().cpu() for m in (lv.q, lv.k, lv.v, lv.o)]
            head[lv.orig, lv.heads] = fn.head_weight_norms(*w, head_size=dh, p=p)
        if lv.ffn:
            ffn[lv.orig, lv.ffn] = fn.neuron_weight_norms(
                lv.up.weight.detach().float().cpu(), lv.down.weight.detach().float().cpu(), p=p
            )
    return head, ffn


def _activation(model, v, batches, *, max_batches=None, progress=True, **_unused):
    head, ffn = _zeros(v)
    device = next(model.parameters()).device
    dh = v.structure.head_size
    current: dict = {}

    def observe(kind, lv, x):
        mask = current.get("attention_mask")
        x = x.detach().float()
        if kind == "o" and lv.heads:
            head[lv.orig, lv.heads] += fn.head_output_norms(x, lv.o.weight.detach().float(), dh, mask).cpu()
        elif kind == "down" and lv.ffn:
            ffn[lv.orig, lv.ffn] += fn.neuron_output_norms(x, lv.down.weight.detach().float(), mask).cpu()

    with torch.no_grad(), Gates(observer=observe).attach(model):
        for raw in _batches(batches, max_batches, progress, "scoring"):
            batch = _to_device(raw, device)
            for k in LABEL_KEYS:
                batch.pop(k, None)
            current["attention_mask"] = batch.get("attention_mask")
            model(**batch)
    return head, ffn


def _random(model, v, batches=None, *, seed: int = 0, **_unused):
    g = torch.Generator().manual_seed(seed)
    head, ffn = _zeros(v)
    head = torch.rand(head.shape, generator=g)
    ffn = torch.rand(ffn.shape, generator=g)
    return _only_alive(v, head, ffn)


register_scorer("taylor", _taylor)
register_scorer("fisher", _fisher)
register_scorer("activation", _activation)
register_scorer("magnitude", _magnitude, needs_data=False)
register_scorer("random", _random, needs_data=False)


def score(
    model: nn.Module, batches: Iterable[Mapping] | None = None, method: str = "taylor", **options
) -> Scores:
    """Importance of every head and FFN neuron of ``model`` (original coordinates).

    Methods: ``magnitude`` (``norm="l1"|"l2"``), ``taylor`` (|gradient of the loss w.r.t. a
    multiplicative gate|), ``fisher`` (squared per-example gate gradients), ``activation`` (output
    statistics, no labels), ``random`` (``seed=``). Gradient methods read ``labels`` from the batches,
    or use the model's own predictions with ``label_free=True``. ``max_batches`` caps the data used.

    Example::

        scores = sp.score(model, dataloader, method="fisher")
        scores.head.shape    # [layers, heads]
    """
    if method not in _SCORERS:
        raise ValueError(
            f"Unknown scoring method {method!r}; choose one of {', '.join(available_scorers())}."
        )
    scorer, needs_data = _SCORERS[method]
    v = view(model)
    if needs_data and batches is None:
        raise ValueError(
            f"method={method!r} needs data: pass batches (an iterable of dicts of model inputs)."
        )
    options.setdefault("progress", True)
    with _scoring_state(model):
        try:
            head, ffn = scorer(model, v, batches, **options)
        except TypeError as err:
            if "unexpected keyword" in str(err) and "forward" not in str(err):
                raise TypeError(f"method={method!r} got an option it does not take: {err}") from None
            raise
    return Scores(head, ffn, method=method, meta={k: o for k, o in options.items() if k != "progress"})
