"""structprune's cache folder, shared by every stage that keeps something between runs (fine-tuned
teachers, latency models, benchmark scratch)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "STRUCTPRUNE_CACHE"


def cache_root() -> Path:
    """structprune's cache folder: ``$STRUCTPRUNE_CACHE``, else ``$XDG_CACHE_HOME/structprune``, else
    ``~/.cache/structprune``.

    Example::

        cache_root() / "teachers"   # where fine-tuned teachers are kept (set $STRUCTPRUNE_CACHE to move it)
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "structprune"
