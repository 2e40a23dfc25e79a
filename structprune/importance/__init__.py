"""Importance scoring of heads and FFN neurons."""

from .score import available_scorers, register_scorer, score

__all__ = ["available_scorers", "register_scorer", "score"]
