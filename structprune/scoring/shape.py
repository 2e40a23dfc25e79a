"""One call for all four structures: head, neuron, layer and hidden-dimension scores.

Example::

    scores = sp.score_shape(model, batches)                    # heads, neurons, layers, hidden dims
    mask = sp.allocate(scores, model, layers=4, hidden=192, flops=0.1)
    sp.prune_(model, mask)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from ..mask import Scores
from .hidden import score_hidden
from .layers import score_layers
from .units import score, scorer_options


def score_shape(
    model: nn.Module,
    batches: Iterable[Mapping],
    *,
    method: str = "taylor",
    hidden_method: str = "activation",
    max_batches: int | None = None,
    label_free: bool = False,
    progress: bool = True,
) -> Scores:
    """:func:`structprune.score` plus ``layer`` (:func:`structprune.score_layers`) and ``hidden``
    (:func:`structprune.score_hidden`) scores, so that ``allocate`` can also set the depth and width.

    ``batches`` is read three times (materialize a generator first, e.g. ``list(...)``).

    Example::

        scores = sp.score_shape(model, list(dataloader)[:8])
        scores.layer, scores.hidden      # [num_layers], [hidden_size]
    """
    batches = list(batches) if not isinstance(batches, list | tuple) else batches
    opts = {"max_batches": max_batches, "progress": progress}
    scores = score(model, method=method, **scorer_options(method, batches, label_free=label_free), **opts)
    scores.layer = score_layers(model, batches, label_free=label_free, **opts)
    hidden_opts = {"label_free": label_free} if hidden_method == "taylor" else {}
    scores.hidden = score_hidden(model, batches, method=hidden_method, **opts, **hidden_opts)
    return scores
