"""The one-call paths over the stages: :func:`compress` (retraining-free, one call), the recipe
pipeline (teacher -> score -> prune -> reconstruct -> distill -> evaluate -> save), its teachers'
cache, and the demo."""
