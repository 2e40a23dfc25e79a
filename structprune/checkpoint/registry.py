"""The pruned-model classes, registered with transformers' Auto classes, and :func:`adopt`.

``import structprune`` registers one config class per supported family under the model type
``structprune-<family>`` (as soon as transformers' Auto classes are imported: :mod:`structprune._autoconfig`).
The model classes of a family are built and registered the first time transformers parses such a config,
so that after ``import structprune`` ``AutoModelForSequenceClassification.from_pretrained(folder)`` builds the per-layer shapes itself and
never runs the modeling file that the checkpoint carries for users without structprune.
"""

from __future__ import annotations

import dataclasses
import logging

import transformers
from torch import nn
from transformers.models.auto import configuration_auto

from .. import _autoconfig
from ..arch import ArchSpec, ModelView, Structure, supported_families, view
from . import remote_modeling as rm

logger = logging.getLogger(__name__)

_MODELS: dict[str, dict[str, type]] = {}


def base_model_type(config) -> str:
    """The stock transformers model type of ``config`` (``"bert"`` for ``"structprune-bert"``)."""
    return getattr(config, "structprune_base_model_type", None) or config.model_type


def config_class(base: str) -> type:
    """The registered config class of pruned ``base`` models (``StructPruneBertConfig`` for ``"bert"``)."""
    cls = _autoconfig.config_class(base)
    vars(rm).setdefault(cls.__name__, cls)  # also importable from this package's modeling module, as before
    return cls


def model_classes(base: str) -> dict[str, type]:
    """The registered pruned-model classes of ``base``, by class name."""
    if base not in _MODELS:
        classes = rm.make_model_classes(base, config_class(base))
        for auto_name, model_name in rm.auto_map(base).items():
            if auto_name == "AutoConfig":
                continue
            cls = classes[model_name.rpartition(".")[2]]
            getattr(transformers, auto_name).register(config_class(base), cls, exist_ok=True)
        vars(rm).update(classes)
        _MODELS[base] = classes
    return _MODELS[base]


def model_types() -> list[str]:
    """Supported families that transformers provides (a pruned checkpoint can be built for these)."""
    return [t for t in supported_families() if t in configuration_auto.CONFIG_MAPPING_NAMES]


def register_builtin() -> None:
    """Register the config classes of every supported family transformers provides."""
    for model_type in model_types():
        config_class(model_type)


_REMOTE_SPEC_KEYS = (
    "layers", "q", "k", "v", "o", "up", "down", "attn",
    "attn_head_count_attrs", "attn_all_head_size_attrs", "head_bias", "head_bias_arg",
    "up_blocks", "head_projections", "first_layer_identity",
)  # fmt: skip


def _as_json(value):
    """Tuples (nested too: ``first_layer_identity``) as the lists JSON gives back."""
    return [_as_json(x) for x in value] if isinstance(value, tuple) else value


def arch_record(v: ModelView) -> dict:
    """Where ``v``'s model keeps what pruning resized, for the checkpoint's modeling file (JSON).

    Per-layer module paths come from the family's :class:`ArchSpec`; modules outside the layers that hidden
    pruning resized (``view.hidden_sites()``) are recorded as ``[root, path]`` with root ``"base"`` (the base
    model) or ``"model"`` (a task head), so the file never needs family knowledge of its own.
    """
    spec = dataclasses.asdict(v.spec)
    record = {key: _as_json(spec[key]) for key in _REMOTE_SPEC_KEYS}
    names = {}  # every layer's (the first may lack one: ModernBERT's attn_norm)
    for lv in v.layers:
        norms = getattr(lv, "norms", [])
        names.update((name, None) for name, m in lv.module.named_modules() if any(m is n for n in norms))
    record["layer_norms"] = list(names)
    if getattr(v.structure, "hidden", None) is not None:
        base_names = {id(m): n for n, m in v.base.named_modules()}
        model_names = {id(m): n for n, m in v.model.named_modules()}

        def where(module: nn.Module) -> list[str]:
            if id(module) in base_names:
                return ["base", base_names[id(module)]]
            return ["model", model_names[id(module)]]

        sites = v.hidden_sites()
        record["hidden_sites"] = {
            kind: [where(m) for m in getattr(sites, kind)]
            for kind in ("embeddings", "norms", "readers", "writers")
        }
    return record


def is_stock(structure: Structure, spec: ArchSpec | None = None) -> bool:
    """True when a stock config describes the structure: every kept layer has all its heads, all layers
    the same FFN width and the residual stream its full width (only FFN pruned uniformly and/or whole
    layers dropped), and, in a family whose first layer differs from the others (``spec``'s
    ``first_layer_identity``: ModernBERT), the first layer is kept."""
    return (
        all(len(h) == structure.num_heads for h in structure.heads)
        and len(set(structure.ffn_per_layer)) <= 1
        and getattr(structure, "hidden", None) in (None, list(range(structure.hidden_size)))
        and not (spec is not None and spec.first_layer_identity and structure.layers[0] != 0)
    )


def _stock_model_class(cls: type) -> type:
    """The stock transformers class under a pruned-model class (also one loaded as remote code, whose
    mixin is another copy of ``StructPruneMixin``)."""
    return next(
        c
        for c in cls.__mro__
        if issubclass(c, nn.Module) and not any(b.__name__ == rm.StructPruneMixin.__name__ for b in c.__mro__)
    )


def _set_class(model: nn.Module, cls: type) -> None:
    """``model.__class__ = cls``, and what transformers keys on the class: the outputs it records
    (``output_hidden_states`` / ``output_attentions`` are gathered by hooks found through a registry filled at
    ``__init__``, keyed on the class name; without an entry for the new class a base model returns none)."""
    model.__class__ = cls
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # a transformers without output capturing: nothing to register
        return
    _CAN_RECORD_REGISTRY[model] = getattr(model, "_can_record_outputs", None)


def adopt(model: nn.Module, *, strict: bool = True) -> nn.Module:
    """Give a pruned ``model`` the classes its structure needs to save and load everywhere, in place.

    Non-uniform structures get the ``StructPrune<Class>`` model class and ``structprune-<family>`` config
    (still subclasses of the stock ones, so ``isinstance(model, BertForSequenceClassification)`` holds);
    structures a stock config can describe keep (or get back) the stock classes. Weights and outputs are
    unchanged. :func:`structprune.save_pretrained` calls it; call it before a plain ``model.save_pretrained``.
    With ``strict=False`` a model no checkpoint class can represent is left as it is (with a warning)
    instead of raising ``TypeError``.

    Example::

        sp.prune_(model, mask)
        sp.checkpoint.adopt(model).save_pretrained("out")
    """
    inner = getattr(model, "base_model", None)
    wrapped = isinstance(inner, transformers.PreTrainedModel) and inner is not model
    if wrapped and not isinstance(model, transformers.PreTrainedModel):
        # a wrapper around a transformers model (structprune.sentence.SentenceEncoder): adopt that model
        adopt(inner, strict=strict)
        return model
    v = view(model)
    config, base = model.config, base_model_type(model.config)
    stock_cls = _stock_model_class(type(model))
    if is_stock(v.structure, v.spec):
        _set_class(model, stock_cls)
        if base in configuration_auto.CONFIG_MAPPING_NAMES:
            config.__class__ = configuration_auto.CONFIG_MAPPING[base]
        if hasattr(config, "auto_map"):
            del config.auto_map
        if hasattr(config, rm.ARCH_KEY):
            delattr(config, rm.ARCH_KEY)
        return model
    problem = None
    if base not in configuration_auto.CONFIG_MAPPING_NAMES:
        problem = (
            f"Cannot save a pruned {type(model).__name__}: transformers has no model type {base!r}, so no "
            "checkpoint class can be built for it. Save the state dict and Mask instead."
        )
    elif "StructPrune" + stock_cls.__name__ not in model_classes(base):
        problem = (
            f"Pruned checkpoints support the task heads of the Auto classes ({', '.join(rm.AUTO_CLASSES)}); "
            f"{stock_cls.__name__} is not one of them."
        )
    if problem:
        if strict:
            raise TypeError(problem)
        logger.warning(problem)
        return model
    setattr(config, rm.ARCH_KEY, arch_record(v))
    config.auto_map = rm.auto_map(base)
    config.__class__ = config_class(base)
    _set_class(model, model_classes(base)["StructPrune" + stock_cls.__name__])
    return model
