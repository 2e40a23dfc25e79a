"""One switch for every progress bar structprune draws, and warnings that point at the caller's code.

Progress bars are on by default (each function's ``progress=`` option can turn its own off). Turn all of
them off (with transformers' bars while structprune saves or loads a model) with ``STRUCTPRUNE_PROGRESS=0``
in the environment, or from Python::

    import structprune as sp
    sp.set_progress(False)      # True: back on; None: follow $STRUCTPRUNE_PROGRESS again
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

ENV = "STRUCTPRUNE_PROGRESS"
_OFF = ("0", "false", "no", "off")
_enabled: bool | None = None


def set_progress(enabled: bool | None) -> None:
    """Show (``True``) or hide (``False``) every structprune progress bar; ``None``: follow
    ``$STRUCTPRUNE_PROGRESS`` (``0``/``false``/``no``/``off`` hide them)."""
    global _enabled
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_progress expects True, False or None, got {enabled!r}.")
    _enabled = enabled


def progress_enabled() -> bool:
    """Whether progress bars are allowed (:func:`set_progress`, else ``$STRUCTPRUNE_PROGRESS``)."""
    if _enabled is not None:
        return _enabled
    return os.environ.get(ENV, "1").strip().lower() not in _OFF


def bar(iterable=None, *, enabled: bool = True, **kwargs):
    """A tqdm bar, shown when ``enabled`` and the global switch allow it (tqdm is imported on first use)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not (enabled and progress_enabled()), **kwargs)


@contextlib.contextmanager
def hf_bars():
    """Inside, transformers' and huggingface_hub's progress bars (loading and writing weights, downloads)
    follow structprune's switch: structprune's own calls into them draw no bar when the switch is off."""
    if progress_enabled():
        yield
        return
    import huggingface_hub.utils
    import transformers.utils.logging as tlog

    was_tf, was_hub = tlog.is_progress_bar_enabled(), not huggingface_hub.utils.are_progress_bars_disabled()
    tlog.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    try:
        yield
    finally:
        if was_tf:
            tlog.enable_progress_bar()
        if was_hub:
            huggingface_hub.utils.enable_progress_bars()


_PACKAGE = str(Path(__file__).resolve().parent) + os.sep
_WRAPPERS = ("contextlib", "functools", "torch.utils._contextlib")  # decorators around our functions


def _ours(frame) -> bool:
    return (
        os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE)
        or frame.f_globals.get("__name__") in _WRAPPERS
    )


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside structprune (and the decorators around its
    functions, such as ``torch.no_grad``): the user's line that called into the library, however deep
    inside it the warning is raised."""
    frame, level = sys._getframe(0), 1
    while frame is not None and _ours(frame):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
