"""Architecture specs: the only place that knows Hugging Face module names.

An :class:`ArchSpec` is plain data: where the layer list is, where each layer's q/k/v/o and FFN up/down
projections are, and which config keys and module attributes carry head counts and sizes. A registry
keyed by ``config.model_type`` maps families to specs; :func:`get_spec` resolves a model to its spec.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchSpec:
    """How one transformers family lays out an encoder layer.

    Paths are dotted attribute paths. ``layers`` is relative to ``model.base_model``; every other
    module path is relative to one layer, except ``head_bias`` (relative to the base model).

    Example (BERT)::

        ArchSpec(
            name="bert", layers="encoder.layer",
            q="attention.self.query", k="attention.self.key", v="attention.self.value",
            o="attention.output.dense", up="intermediate.dense", down="output.dense",
            attn="attention.self",
        )
    """

    name: str
    layers: str
    q: str
    k: str
    v: str
    o: str
    up: str
    down: str
    attn: str
    """Module holding the per-layer head-count attributes (the one whose forward reshapes into heads)."""
    attn_head_count_attrs: tuple[str, ...] = ("num_attention_heads",)
    """Attributes on ``attn`` set to the number of heads kept in that layer."""
    attn_head_size_attr: str = "attention_head_size"
    attn_all_head_size_attrs: tuple[str, ...] = ("all_head_size",)
    """Attributes on ``attn`` set to heads_kept * head_size."""
    config_layers: str = "num_hidden_layers"
    config_heads: str = "num_attention_heads"
    config_ffn: str = "intermediate_size"
    config_hidden: str = "hidden_size"
    head_bias: str | None = None
    """A per-head bias shared by all layers (MPNet's relative-position ``nn.Embedding(buckets, heads)``)."""
    head_bias_arg: tuple[str, int] | None = None
    """(keyword, positional index) under which ``attn`` receives the shared bias ``[B, heads, T, T]``."""
    model_types: tuple[str, ...] = field(default=())
    """``config.model_type`` values this spec serves (defaults to ``(name,)``)."""

    # --- the residual stream (hidden-size pruning); paths that do not resolve in a model are skipped ----
    embeddings: tuple[str, ...] = ()
    """``nn.Embedding`` modules of the embedding space (word/position/token-type), relative to the base model."""
    embedding_norm: str | None = None
    """LayerNorm over the embedding space, relative to the base model."""
    embedding_project: str | None = None
    """Linear from the embedding space to the hidden size (ELECTRA's ``embeddings_project``), relative to the
    base model. Where a model has it, the embedding space is separate and hidden pruning leaves it whole;
    where it has not, the embedding space *is* the residual stream."""
    layer_norms: tuple[str, ...] = ()
    """LayerNorms over the residual stream in each layer, relative to the layer."""
    residual_readers: tuple[str, ...] = ()
    """Task-head Linears reading the residual stream (their input columns shrink), relative to the model or,
    failing that, to its base model (e.g. ``pooler.dense``, ``qa_outputs``)."""
    pooled_readers: tuple[str, ...] = ()
    """Task-head Linears that read a pooled vector when a module of ``poolers`` exists (BERT's sequence
    ``classifier`` after the pooler), else the residual stream (a token ``classifier``)."""
    poolers: tuple[str, ...] = ()
    """Modules (relative to the model or its base model) whose presence makes ``pooled_readers`` read them."""
    lm_heads: tuple[tuple[str, str, str], ...] = ()
    """MLM heads as ``(dense, norm, decoder)`` paths relative to the model: ``dense`` reads the residual
    stream; its output, ``norm`` and the (usually word-embedding-tied) ``decoder`` input live in the
    embedding space, so they shrink too when that space is the residual stream."""

    @property
    def projections(self) -> dict[str, str]:
        return {"q": self.q, "k": self.k, "v": self.v, "o": self.o, "up": self.up, "down": self.down}


_REGISTRY: dict[str, ArchSpec] = {}


def register_architecture(spec: ArchSpec, *, overwrite: bool = False) -> ArchSpec:
    """Register ``spec`` for each of its ``model_types`` (or its ``name``).

    Example::

        import structprune as sp
        sp.register_architecture(sp.ArchSpec(name="my_bert", layers="encoder.layer", q=..., ...))
    """
    for model_type in spec.model_types or (spec.name,):
        if model_type in _REGISTRY and not overwrite and _REGISTRY[model_type] != spec:
            raise ValueError(
                f"An architecture spec for model_type {model_type!r} is already registered; "
                "pass overwrite=True to replace it."
            )
        _REGISTRY[model_type] = spec
    return spec


def supported_families() -> list[str]:
    return sorted(_REGISTRY)


def resolve(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _matches(spec: ArchSpec, model: nn.Module) -> bool:
    try:
        layers = resolve(_base(model), spec.layers)
        if len(layers) == 0:
            return False
        layer = layers[0]
        return all(isinstance(resolve(layer, p), nn.Linear) for p in spec.projections.values())
    except (AttributeError, TypeError):
        return False


def _base(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def get_spec(model: nn.Module) -> ArchSpec:
    """Return the :class:`ArchSpec` for ``model`` or raise a ``TypeError`` saying how to add one."""
    config = getattr(model, "config", None)
    # A pruned checkpoint's config is "structprune-<family>"; it records the family it came from.
    model_type = getattr(config, "structprune_base_model_type", None) or getattr(config, "model_type", None)
    if model_type is None:
        raise TypeError(
            f"{type(model).__name__} is not a Hugging Face PreTrainedModel (no config.model_type); "
            "structprune works on transformers models such as BertForSequenceClassification."
        )
    spec = _REGISTRY.get(model_type)
    if spec is not None:
        if not _matches(spec, model):
            raise TypeError(
                f"{type(model).__name__} (model_type {model_type!r}) has no encoder layers where the "
                f"{spec.name!r} spec expects them ({spec.layers!r} with q/k/v/o and FFN projections)."
            )
        return spec
    # Families that reuse BERT's layer layout (CamemBERT, ...) work without new code.
    for candidate in dict.fromkeys(_REGISTRY.values()):
        if _matches(candidate, model):
            logger.info(
                "model_type %r is not registered; it matches the %r layout", model_type, candidate.name
            )
            return candidate
    raise TypeError(
        f"structprune does not know the {model_type!r} architecture ({type(model).__name__}). "
        f"Supported families: {', '.join(supported_families())}. A family with another layer layout can be "
        "added by describing it: structprune.register_architecture(structprune.ArchSpec(name=..., "
        "layers='encoder.layer', q=..., k=..., v=..., o=..., up=..., down=..., attn=..., "
        "model_types=(...,)))."
    )
