"""Stage 3 — surgery: :func:`prune_` removes what a mask drops, weights and config in one step;
:func:`prune_vocab` keeps the vocabulary some text uses (embeddings and tokenizer together)."""

from .prune import prune_, slice_linear
from .vocab import VocabCoverage, prune_vocab, slice_vocab_, vocab_coverage

__all__ = ["VocabCoverage", "prune_", "prune_vocab", "slice_linear", "slice_vocab_", "vocab_coverage"]
