"""Stage 3 — surgery: :func:`prune_` removes what a mask drops, weights and config in one step."""

from .prune import prune_, slice_linear

__all__ = ["prune_", "slice_linear"]
