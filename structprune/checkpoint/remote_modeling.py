"""Load checkpoints pruned with structprune, with nothing but torch and transformers installed.

A pruned encoder keeps a different number of attention heads and FFN neurons in every layer, which a
stock transformers class cannot build from its config. A structprune checkpoint therefore records in
config.json what each kept layer holds (``structprune``: original layer, head and neuron ids) and where
the family keeps those modules (``structprune_arch``: module paths and attribute names, written by
structprune from its architecture spec). The classes below subclass the stock transformers classes:
they build the stock model, resize every layer to the recorded sizes, and let ``from_pretrained`` load
the weights.

structprune imports this module for its own loading path, and copies it into every pruned checkpoint as
``modeling_structprune.py`` (with ``BASE_MODEL_TYPES`` filled in), so that::

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)

works where structprune is not installed. Keep it self-contained: torch, transformers and the standard
library only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers.models.auto import configuration_auto, modeling_auto

# isort: off
# --- inline: structprune/arch/head_bias.py (copied here when this file is written into a checkpoint) ---
from ..arch.head_bias import HEAD_BIAS_INDEX, install_head_bias_selector  # noqa: E402

# --- end inline ---
# --- inline: structprune/arch/record.py (likewise) ---
from ..arch.record import encode_structure, validate_arch, validate_structure  # noqa: E402

# --- end inline ---
# --- inline: structprune/_pruned_config.py (likewise) ---
from .._pruned_config import MODEL_TYPE_PREFIX, pruned_config_class  # noqa: E402, F401 (io.py reads the prefix here)
# --- end inline ---
# isort: on

CONFIG_KEY = "structprune"
ARCH_KEY = "structprune_arch"
MODELING_FILE = "modeling_structprune.py"
AUTO_CLASSES = {
    "AutoModel": "MODEL_MAPPING_NAMES",
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForTokenClassification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "AutoModelForQuestionAnswering": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "AutoModelForMaskedLM": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "AutoModelForMultipleChoice": "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES",
}

# The families this copy defines classes for. Empty in structprune's own copy (structprune builds the
# classes with make_classes); a checkpoint's copy names its family, e.g. ("bert",).
BASE_MODEL_TYPES: tuple[str, ...] = ()


# --- resizing a stock model to the recorded structure ------------------------------------------------
# Everything below reads config.json, which is data: module paths may only name registered submodules
# (never attributes of a class), and attribute names may only name existing integer attributes.
_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9][A-Za-z0-9_]*)*$")
_ATTR = re.compile(r"^[a-z][a-z0-9_]*$")


def _check_path(path) -> str:
    if not isinstance(path, str) or not _PATH.match(path) or "__" in path:
        raise ValueError(
            f"config.{ARCH_KEY} holds the module path {path!r}, which is not a plain dotted module path; the "
            "checkpoint's config.json was damaged or edited."
        )
    return path


def _get(root: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path``, following registered submodules only (``Module._modules``)."""
    for part in _check_path(path).split("."):
        child = root._modules.get(part)
        if child is None:
            raise AttributeError(f"{type(root).__name__} has no submodule {part!r} (path {path!r})")
        root = child
    return root


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = _check_path(path).rpartition(".")
    parent = _get(root, parent_path) if parent_path else root
    if name not in parent._modules:
        raise ValueError(
            f"config.{ARCH_KEY}: {path!r} is not a submodule of the model; the config was edited."
        )
    parent._modules[name] = module


def _set_count(module: nn.Module, attr, value: int) -> None:
    """Set an existing integer attribute of a module instance (a head count or an inner size)."""
    current = module.__dict__.get(attr) if isinstance(attr, str) and _ATTR.match(attr) else None
    if isinstance(current, bool) or not isinstance(current, int):
        raise ValueError(
            f"config.{ARCH_KEY} names the attribute {attr!r}, which {type(module).__name__} does not hold as a "
            "count; the checkpoint's config.json was damaged or edited."
        )
    setattr(module, attr, value)


def _find(model: nn.Module, site: list[str]) -> tuple[nn.Module, str] | None:
    """Resolve a recorded ``[root, path]`` (root ``"base"`` or ``"model"``); ``None`` if this model lacks it
    (e.g. a task head of another class loading the same checkpoint)."""
    root = model.base_model if site[0] == "base" else model
    try:
        _get(root, site[1])
    except AttributeError:
        return None
    return root, site[1]


def _resize_linear(
    root: nn.Module, path: str, out_features: int | None = None, in_features: int | None = None
):
    """Replace the Linear at ``path`` by an uninitialized one of the recorded size (weights load later)."""
    old = _get(root, path)
    out_features = old.out_features if out_features is None else out_features
    in_features = old.in_features if in_features is None else in_features
    if (out_features, in_features) == (old.out_features, old.in_features):
        return
    new = nn.Linear(
        in_features,
        out_features,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    _set(root, path, new)


def _norm_like(old: nn.LayerNorm, width: int) -> nn.LayerNorm:
    return nn.LayerNorm(
        width,
        eps=old.eps,
        elementwise_affine=old.elementwise_affine,
        bias=getattr(old, "bias", None) is not None,
        device=old.weight.device if old.weight is not None else None,
        dtype=old.weight.dtype if old.weight is not None else None,
    )


def _resize_norm(root: nn.Module, path: str, width: int) -> None:
    old = _get(root, path)
    if not isinstance(old, nn.LayerNorm) or tuple(old.normalized_shape) == (width,):
        return  # (an Identity where only the first layer has none: ModernBERT's attn_norm)
    _set(root, path, _norm_like(old, width))


def _has(root: nn.Module, path: str) -> bool:
    try:
        _get(root, path)
    except AttributeError:
        return False
    return True


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.{ARCH_KEY}.{name} must be a positive integer; the checkpoint was edited.")
    return value


def _rebuild_like(layer: nn.Module, path: str, template: str) -> None:
    """Replace the module at ``path`` (an Identity in a stock first layer) by a fresh module built like
    the one at ``template`` (ModernBERT's ``attn_norm`` like ``mlp_norm``); weights load later."""
    like = _get(layer, template)
    if not isinstance(like, nn.LayerNorm):
        raise ValueError(
            f"config.{ARCH_KEY}.first_layer_identity names {template!r}, which is not a LayerNorm; the "
            "checkpoint's config.json was damaged or edited."
        )
    if isinstance(_get(layer, path), nn.Identity):
        _set(layer, path, _norm_like(like, like.normalized_shape[0]))


def _resize_embedding(root: nn.Module, path: str, dim: int) -> None:
    old = _get(root, path)
    if old.embedding_dim == dim:
        return
    new = nn.Embedding(
        old.num_embeddings, dim, padding_idx=old.padding_idx, device=old.weight.device, dtype=old.weight.dtype
    )
    _set(root, path, new)


def _head_union(heads: list[list[int]]) -> list[int]:
    return sorted({h for layer in heads for h in layer})


def _recorded(config) -> tuple[dict, dict]:
    """The validated records of ``config``; the structure with its kept indices as lists (config.json
    stores them as strings of ranges)."""
    structure, arch = getattr(config, CONFIG_KEY, None), getattr(config, ARCH_KEY, None)
    if not structure or not arch:
        raise ValueError(
            f"This config has no '{CONFIG_KEY}' / '{ARCH_KEY}' entries, so it does not describe a pruned model; "
            "load it with the stock transformers class instead."
        )
    where = getattr(config, "_name_or_path", "") or ""
    where = f"{where}/config.json" if where else ""
    structure = validate_structure(structure, where)
    validate_arch(arch, structure, where)
    return structure, arch


def save_compact(config, save):
    """Run ``save()`` (which writes ``config`` to config.json) with the ``structprune`` record in its compact
    form (kept indices as strings of ranges, :func:`encode_structure`), then put the record back as it was:
    in memory the kept indices stay lists."""
    record = getattr(config, CONFIG_KEY, None)
    if not record:
        return save()
    setattr(config, CONFIG_KEY, encode_structure(record))
    try:
        return save()
    finally:
        setattr(config, CONFIG_KEY, record)


def _head_bias_indices(structure: dict) -> list[torch.Tensor]:
    union = _head_union(structure["heads"])
    return [torch.tensor([union.index(h) for h in heads], dtype=torch.long) for heads in structure["heads"]]


def apply_structure(model: nn.Module) -> nn.Module:
    """Resize a freshly built stock ``model`` to the structure in its config, module by module. The config
    keeps the record with its kept indices as lists (as read from config.json, they are strings of ranges)."""
    structure, arch = _recorded(model.config)
    setattr(model.config, CONFIG_KEY, structure)
    base = model.base_model
    layers = _get(base, arch["layers"])
    if len(layers) != len(structure["layers"]):
        raise ValueError(
            f"config.{CONFIG_KEY} records {len(structure['layers'])} layers but the config builds {len(layers)}; "
            "the checkpoint's config.json is inconsistent."
        )
    head_size = structure["head_size"]
    hidden = structure.get("hidden")
    width = len(hidden) if hidden is not None else structure["hidden_size"]  # residual stream
    up_blocks = _count(arch.get("up_blocks", 1), "up_blocks")
    qkv = [arch["q"], arch["k"], arch["v"]]  # one path named n times: a fused Linear of n blocks
    if structure["layers"][0] != 0:  # the first layer was another one: build what only layer 0 lacks
        for path, template in arch.get("first_layer_identity", ()):
            _rebuild_like(layers[0], path, template)
    for layer, heads, ffn in zip(layers, structure["heads"], structure["ffn"], strict=True):
        inner = len(heads) * head_size
        for path in dict.fromkeys(qkv):
            _resize_linear(layer, path, out_features=qkv.count(path) * inner, in_features=width)
        for path in arch.get("head_projections", ()):
            if _has(layer, path):
                _resize_linear(layer, path, out_features=inner, in_features=width)
        _resize_linear(layer, arch["o"], out_features=width, in_features=inner)
        _resize_linear(layer, arch["up"], out_features=up_blocks * len(ffn), in_features=width)
        _resize_linear(layer, arch["down"], out_features=width, in_features=len(ffn))
        for path in arch.get("layer_norms", ()):
            _resize_norm(layer, path, width)
        attn = _get(layer, arch["attn"])
        for attr in arch["attn_head_count_attrs"]:
            _set_count(attn, attr, len(heads))
        for attr in arch["attn_all_head_size_attrs"]:
            _set_count(attn, attr, inner)
    if hidden is not None:
        sites = arch["hidden_sites"]
        resize = {
            "embeddings": lambda root, path: _resize_embedding(root, path, width),
            "norms": lambda root, path: _resize_norm(root, path, width),
            "readers": lambda root, path: _resize_linear(root, path, in_features=width),
            "writers": lambda root, path: _resize_linear(root, path, out_features=width),
        }
        for kind, fn in resize.items():
            for site in sites[kind]:
                found = _find(model, site)
                if found is not None:
                    fn(*found)
    if arch.get("head_bias"):
        old = _get(base, arch["head_bias"])
        union = _head_union(structure["heads"])
        if old.embedding_dim != len(union):
            _resize_embedding(base, arch["head_bias"], len(union))
        for layer, index in zip(layers, _head_bias_indices(structure), strict=True):
            install_head_bias_selector(_get(layer, arch["attn"]), index, tuple(arch["head_bias_arg"]))
    return model


def _restore_head_bias_indices(model: nn.Module) -> None:
    """from_pretrained leaves non-persistent buffers uninitialized: write the recorded indices back."""
    structure, arch = _recorded(model.config)
    if not arch.get("head_bias"):
        return
    layers = _get(model.base_model, arch["layers"])
    for layer, index in zip(layers, _head_bias_indices(structure), strict=True):
        buffer = getattr(_get(layer, arch["attn"]), HEAD_BIAS_INDEX)
        with torch.no_grad():
            buffer.copy_(index.to(buffer.device))


# --- the classes -------------------------------------------------------------------------------------
def auto_map(base_model_type: str) -> dict[str, str]:
    """The ``auto_map`` entry of config.json pointing transformers at this file's classes."""
    module = MODELING_FILE[: -len(".py")]
    out = {"AutoConfig": f"{module}.{config_class_name(base_model_type)}"}
    for auto, mapping in AUTO_CLASSES.items():
        name = getattr(modeling_auto, mapping).get(base_model_type)
        if isinstance(name, str):
            out[auto] = f"{module}.StructPrune{name}"
    return out


def config_class_name(base_model_type: str) -> str:
    return "StructPrune" + configuration_auto.CONFIG_MAPPING[base_model_type].__name__


class StructPruneMixin:
    """Shared behaviour of every pruned model class (mixed in before the stock transformers class)."""

    structprune_base_model_type: str = ""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_structure(self)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        _restore_head_bias_indices(model)
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as transformers does, plus this modeling file and the ``auto_map`` that points at it; the
        record's kept indices go into config.json as strings of ranges (:func:`save_compact`)."""
        self.config.auto_map = auto_map(self.structprune_base_model_type)
        if kwargs.get("is_main_process", True) and not os.path.isfile(save_directory):
            os.makedirs(save_directory, exist_ok=True)
            source = modeling_source((self.structprune_base_model_type,))
            Path(save_directory, MODELING_FILE).write_text(source, encoding="utf-8")
        parent = super()
        return save_compact(self.config, lambda: parent.save_pretrained(save_directory, *args, **kwargs))


def make_model_classes(base_model_type: str, config_cls: type) -> dict[str, type]:
    """One pruned-model class per task head transformers has for ``base_model_type``, by class name."""
    classes: dict[str, type] = {}
    for mapping in AUTO_CLASSES.values():
        name = getattr(modeling_auto, mapping).get(base_model_type)
        if not isinstance(name, str) or not hasattr(transformers, name):
            continue
        classes["StructPrune" + name] = type(
            "StructPrune" + name,
            (StructPruneMixin, getattr(transformers, name)),
            {
                "config_class": config_cls,
                "structprune_base_model_type": base_model_type,
                "__module__": __name__,
                "__doc__": f"{name} with per-layer head and FFN sizes read from the config.",
            },
        )
    return classes


def make_classes(base_model_type: str) -> dict[str, type]:
    """Config and model classes for pruned models of ``base_model_type`` (e.g. ``"bert"``), by name.

    Example::

        classes = make_classes("bert")
        classes["StructPruneBertForSequenceClassification"].from_pretrained(folder)
    """
    config_cls = pruned_config_class(base_model_type, __name__)
    return {config_cls.__name__: config_cls, **make_model_classes(base_model_type, config_cls)}


_INLINE = re.compile(r"^# --- inline: structprune/(\S+\.py).*?^# --- end inline ---\n", re.M | re.S)


def _inline(source: str) -> str:
    """Replace each marked import of a structprune module by that module's code (below its ``# --- code ---``
    line), so the copied file needs no structprune."""
    root = Path(__file__).resolve().parents[1]

    def code(match: re.Match) -> str:
        text = (root / match.group(1)).read_text(encoding="utf-8")
        return text[text.index("# --- code ---") + len("# --- code ---") :].strip("\n") + "\n"

    new, count = _INLINE.subn(code, source)
    if count < 3:
        raise RuntimeError(f"{__file__} lost its inline markers; it cannot be copied into a checkpoint.")
    return new


def modeling_source(base_model_types: tuple[str, ...]) -> str:
    """This file's source, defining classes for ``base_model_types`` when imported (for a checkpoint)."""
    source = _inline(Path(__file__).read_text(encoding="utf-8"))
    line = f"BASE_MODEL_TYPES: tuple[str, ...] = {tuple(base_model_types)!r}"
    new, count = re.subn(r"^BASE_MODEL_TYPES: tuple\[str, \.\.\.\] = .*$", line, source, count=1, flags=re.M)
    if count != 1:
        raise RuntimeError(
            f"{__file__} lost its BASE_MODEL_TYPES line; it cannot be copied into a checkpoint."
        )
    return new


for _model_type in BASE_MODEL_TYPES:
    globals().update(make_classes(_model_type))
