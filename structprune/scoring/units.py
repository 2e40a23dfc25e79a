"""Importance scoring: ``score(model, batches, method=...) -> Scores``.

Scorers are registered by name (``register_scorer``) and return head and neuron scores in original
coordinates. Scoring leaves the model as it found it: no hooks, no gradients, same ``requires_grad``
flags and train/eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import view
from ..batches import check_task, iterate, model_inputs
from ..gates import Gates
from ..mask import Scores
from . import functional as fn
from .passes import gate_grads, only_alive, scoring_state, zeros

Scorer = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ScorerInfo:
    """A registered scorer and what it needs: callers ask this instead of listing method names.

    ``needs_data``: it reads batches; ``gradients``: it back-propagates a loss, so it reads labels (or
    takes ``label_free=True`` to use the model's own predictions).
    """

    name: str
    fn: Scorer
    needs_data: bool = True
    gradients: bool = False


_SCORERS: dict[str, ScorerInfo] = {}


def register_scorer(name: str, scorer: Scorer, *, needs_data: bool = True, gradients: bool = False) -> None:
    """Register ``scorer(model, view, batches, **options) -> (head [L, H], ffn [L, I])`` under ``name``.

    Example::

        def first_heads(model, v, batches=None, **_):
            head, ffn = torch.zeros(...), torch.zeros(...)
            return head, ffn

        sp.register_scorer("first-heads", first_heads, needs_data=False)
        sp.score(model, method="first-heads")
    """
    _SCORERS[name] = ScorerInfo(name, scorer, needs_data=needs_data, gradients=gradients)


def available_scorers() -> list[str]:
    return sorted(_SCORERS)


def scorer_info(method: str) -> ScorerInfo:
    """What scorer ``method`` needs (data, gradients/labels); an unknown name lists the known ones."""
    if method not in _SCORERS:
        raise ValueError(
            f"Unknown scoring method {method!r}; choose one of {', '.join(available_scorers())}."
        )
    return _SCORERS[method]


def scorer_options(method: str, batches, *, label_free: bool = False) -> dict:
    """The call arguments of ``score`` for ``method``: batches only if it reads data, ``label_free``
    only if it takes gradients."""
    info = scorer_info(method)
    options = {"batches": batches if info.needs_data else None}
    if info.gradients:
        options["label_free"] = label_free
    return options


def _taylor(model, v, batches, *, label_free=False, max_batches=None, progress=True):
    return gate_grads(
        model, v, batches, label_free=label_free, max_batches=max_batches, progress=progress,
        reduce=fn.taylor_from_gate_grads,
    )  # fmt: skip


def _fisher(model, v, batches, *, label_free=False, max_batches=None, progress=True):
    return gate_grads(
        model, v, batches, label_free=label_free, max_batches=max_batches, progress=progress,
        reduce=fn.fisher_from_gate_grads,
    )  # fmt: skip


def _magnitude(model, v, batches=None, *, norm: str = "l2", **_unused):
    p = {"l1": 1.0, "l2": 2.0}.get(norm)
    if p is None:
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}.")
    head, ffn = zeros(v)
    dh = v.structure.head_size
    for lv in v.layers:
        if lv.heads:
            rows = [
                w.detach().float().cpu() for w in lv.head_row_weights()
            ]  # q, k, v (+ position projections)
            o = lv.o.weight.detach().float().cpu()
            head[lv.orig, lv.heads] = fn.head_weight_norms(*rows[:3], o, head_size=dh, p=p, extra=rows[3:])
        if lv.ffn:
            up = torch.cat([w.detach().float().cpu() for w in lv.up_row_weights()], dim=1)  # [I, blocks * D]
            ffn[lv.orig, lv.ffn] = fn.neuron_weight_norms(up, lv.down.weight.detach().float().cpu(), p=p)
    return head, ffn


def _activation(model, v, batches, *, max_batches=None, progress=True, **_unused):
    head, ffn = zeros(v)
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
        for raw in iterate(batches, max_batches, progress=progress, desc="scoring", what="Scoring"):
            batch = model_inputs(raw, device)
            current["attention_mask"] = batch.get("attention_mask")
            model(**batch)
    return head, ffn


def _random(model, v, batches=None, *, seed: int = 0, **_unused):
    g = torch.Generator().manual_seed(seed)
    head, ffn = zeros(v)
    head = torch.rand(head.shape, generator=g)
    ffn = torch.rand(ffn.shape, generator=g)
    return only_alive(v, head, ffn)


register_scorer("taylor", _taylor, gradients=True)
register_scorer("fisher", _fisher, gradients=True)
register_scorer("activation", _activation)
register_scorer("magnitude", _magnitude, needs_data=False)
register_scorer("random", _random, needs_data=False)


def _checked(model, batches, *, labels: bool):
    """``batches`` as they stream, each checked against the model (token ids, labels) before use."""
    for batch in batches:
        if isinstance(batch, Mapping):
            check_task(model, [batch], labels=labels)
        yield batch


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
    info = scorer_info(method)
    v = view(model)
    if info.needs_data and batches is None:
        raise ValueError(
            f"method={method!r} needs data: pass batches (an iterable of dicts of model inputs)."
        )
    options.setdefault("progress", True)
    if batches is not None and info.needs_data:
        batches = _checked(model, batches, labels=info.gradients and not options.get("label_free", False))
    with scoring_state(model):
        try:
            head, ffn = info.fn(model, v, batches, **options)
        except TypeError as err:
            if "unexpected keyword" in str(err) and "forward" not in str(err):
                raise TypeError(f"method={method!r} got an option it does not take: {err}") from None
            raise
    return Scores(head, ffn, method=method, meta={k: o for k, o in options.items() if k != "progress"})
