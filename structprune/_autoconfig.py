"""structprune's config classes in transformers' ``AutoConfig``, registered without importing torch early.

``import structprune`` imports neither torch nor transformers (see ``structprune/__init__.py``), yet after
it ``AutoModelForSequenceClassification.from_pretrained(pruned_folder)`` must build the per-layer shapes
with structprune's classes. transformers' config classes import torch, so the registration waits for
transformers: a one-shot import hook runs right after ``transformers.models.auto.configuration_auto`` is
imported (which every ``Auto*`` class does first) and makes its ``CONFIG_MAPPING`` know the model types
``structprune-<family>`` of the built-in families. Their config classes are built on the first lookup
(building them while transformers is still importing its Auto modules would be a circular import), and
the model classes the first time such a config is parsed (:func:`structprune.checkpoint.registry.model_classes`).

Standard library only at import; this module imports nothing from structprune but
:mod:`structprune._pruned_config` (standard library only too, imported with it), so the hook cannot run
into a partly imported structprune module.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading

from ._pruned_config import MODEL_TYPE_PREFIX, pruned_config_class

BUILTIN_FAMILIES = (
    "bert", "camembert", "deberta-v2", "distilbert", "electra", "modernbert", "mpnet", "roberta", "xlm-roberta",
)  # fmt: skip
"""The model types of ``structprune/arch/families.py`` (a test keeps the two equal)."""

_TARGET = "transformers.models.auto.configuration_auto"
_CONFIGS: dict[str, type] = {}
_LOCK = threading.RLock()


def config_class(base: str) -> type:
    """The config class of pruned ``base`` models (``StructPruneBertConfig`` for ``"bert"``), registered with
    ``AutoConfig`` under ``structprune-<base>``: the stock config class under its own model type."""
    with _LOCK:
        if base not in _CONFIGS:
            _CONFIGS[base] = _make(base)
        return _CONFIGS[base]


def _make(base: str) -> type:
    from transformers.models.auto import configuration_auto

    def from_dict(klass, config_dict, **kwargs):
        from .checkpoint.registry import model_classes

        model_classes(base)  # transformers resolves the model class right after parsing the config
        return super(cls, klass).from_dict(config_dict, **kwargs)

    cls = pruned_config_class(base, __name__, from_dict=classmethod(from_dict))
    configuration_auto.AutoConfig.register(cls.model_type, cls, exist_ok=True)
    globals()[cls.__name__] = cls  # importable by name (pickle, copy)
    return cls


def register_builtin() -> None:
    """Build and register the config classes of the built-in families that this transformers provides."""
    from transformers.models.auto import configuration_auto

    for base in _provided(configuration_auto):
        config_class(base)


def _provided(configuration_auto) -> list[str]:
    return [b for b in BUILTIN_FAMILIES if b in configuration_auto.CONFIG_MAPPING_NAMES]


class _Pending(dict):
    """``CONFIG_MAPPING``'s registered config classes, plus structprune's, built when first looked up."""

    def __init__(self, registered: dict, bases: list[str]):
        super().__init__(registered)
        self.pending = {MODEL_TYPE_PREFIX + b: b for b in bases if MODEL_TYPE_PREFIX + b not in registered}

    def _build(self, key=None) -> None:
        for k in [key] if key is not None else list(self.pending):
            base = self.pending.pop(k, None)
            if base is not None:
                config_class(base)  # AutoConfig.register stores it here

    def __contains__(self, key) -> bool:
        return key in self.pending or super().__contains__(key)

    def __getitem__(self, key):
        self._build(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._build(key)
        return super().get(key, default)

    def keys(self):
        return [*super().keys(), *(k for k in self.pending if not super().__contains__(k))]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def values(self):
        self._build()
        return super().values()

    def items(self):
        self._build()
        return super().items()


def _announce(configuration_auto) -> None:
    """Make ``CONFIG_MAPPING`` know the built-in ``structprune-<family>`` types, without building anything."""
    mapping = configuration_auto.CONFIG_MAPPING
    if not isinstance(mapping._extra_content, _Pending):
        mapping._extra_content = _Pending(mapping._extra_content, _provided(configuration_auto))


class _Loader(importlib.abc.Loader):
    """The module's own loader, then :func:`register_builtin`."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _uninstall()
        _announce(module)

    def __getattr__(self, name):  # get_source, get_filename, ... of the wrapped loader
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds transformers' configuration_auto with the other finders and wraps its loader (one shot)."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


_FINDER = _Finder()


def _uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def install() -> None:
    """Announce the config classes now when transformers' Auto classes are loaded already; else once they are."""
    if _TARGET in sys.modules:
        _announce(sys.modules[_TARGET])
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
