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
    embedding space, so they shrink too when that space is the residual stream. ``decoder`` may be ``""``
    (DeBERTa multiplies by the word embeddings themselves)."""

    # --- layouts beyond BERT's (ModernBERT, DeBERTa-v2/v3); the defaults describe BERT -----------------
    # Fused projections need no field: when q, k and v name the same module (ModernBERT's ``attn.Wqkv``),
    # that module's output is their blocks in that order, and head j owns rows j*d..(j+1)*d of each block.
    up_blocks: int = 1
    """Equal blocks of ``up``'s output. A gated (GLU) MLP computes ``act(input) * gate`` from one Linear
    (ModernBERT's ``mlp.Wi``): 2 blocks, and FFN neuron j owns row j of each (rows j and I + j)."""
    head_projections: tuple[str, ...] = ()
    """More Linears (relative to the layer) whose output rows are laid out by head like q/k/v, sliced with
    them; paths a model lacks are skipped (DeBERTa's ``pos_key_proj``/``pos_query_proj``, which exist when
    ``share_att_key`` is false). They read ``rel_table`` (or the residual stream): hidden pruning slices
    their input columns."""
    rel_table: str | None = None
    """A relative-position table in the hidden space shared by all layers (relative to the base model;
    DeBERTa's ``encoder.rel_embeddings``): each layer projects it per head (through q/k or
    ``head_projections``), so head pruning leaves it whole and hidden pruning slices its columns."""
    attn_rel_terms_attr: str | None = None
    """Attribute on ``attn`` listing the relative-position score terms each head computes against
    ``rel_table`` (DeBERTa's ``pos_att_type``: ``"c2p"``, ``"p2c"``); the cost model counts them."""
    hidden_norms: tuple[str, ...] = ()
    """LayerNorms over the hidden space outside the layers, relative to the base model (ModernBERT's
    ``final_norm``, DeBERTa's LayerNorm of ``rel_table``); paths a model lacks are skipped."""
    pre_norm: bool = False
    """Layers normalize their input (``x + attn(norm(x))``) instead of their output (BERT's
    ``norm(x + attn(x))``); reconstruction then matches the un-normalized residual sums."""
    first_layer_identity: tuple[tuple[str, str], ...] = ()
    """``(path, template)`` pairs, relative to the layer: a module that is ``nn.Identity`` in the first layer
    only and built like ``template`` in the others (ModernBERT's ``attn_norm``, like ``mlp_norm``). A pruned
    model whose first layer was another layer keeps it, so it needs a structprune checkpoint."""
    config_per_layer: tuple[str, ...] = ()
    """Config keys holding one entry per layer (ModernBERT's ``layer_types``: global or sliding-window
    attention); dropping layers keeps the kept layers' entries."""
    vocab_params: tuple[str, ...] = ()
    """Parameters over the vocabulary besides the input embeddings and a decoder Linear, relative to the
    model (DeBERTa's ``lm_predictions.lm_head.bias``, added after multiplying by the word embeddings);
    vocabulary pruning slices them too. Paths a model lacks are skipped."""
    sliding_window: bool = False
    """Some layers attend within a window of tokens (ModernBERT's local layers): a padding token's window
    may hold no real token, and such fully masked rows (padding either way) come out differently from
    SDPA, eager attention and ONNX Runtime. ONNX export traces and checks these families in eager attention."""
    after_first_layer: tuple[str, ...] = ()
    """Modules (relative to the base model) that the encoder applies to the first layer's output (DeBERTa-v2
    xlarge's ``encoder.conv``). Where a model has one, surgery refuses to drop the first layer or prune
    hidden dimensions (neither can be represented)."""

    def __post_init__(self):
        if isinstance(self.up_blocks, bool) or not isinstance(self.up_blocks, int) or self.up_blocks < 1:
            raise ValueError(f"ArchSpec.up_blocks must be a positive integer, got {self.up_blocks!r}.")
        if len({self.q, self.k, self.v}) == 2 and self.q == self.v != self.k:
            raise ValueError(
                "ArchSpec: q and v name the same module but k another; a fused projection holds adjacent "
                "blocks (q and k, k and v, or all three)."
            )

    @property
    def projections(self) -> dict[str, str]:
        return {"q": self.q, "k": self.k, "v": self.v, "o": self.o, "up": self.up, "down": self.down}

    @property
    def qkv_blocks(self) -> list[tuple[str, int]]:
        """The distinct q/k/v modules in order, each with how many of q/k/v it holds (fused: 3)."""
        out: dict[str, int] = {}
        for path in (self.q, self.k, self.v):
            out[path] = out.get(path, 0) + 1
        return list(out.items())


_REGISTRY: dict[str, ArchSpec] = {}


def register_architecture(spec: ArchSpec, *, overwrite: bool = False) -> ArchSpec:
    """Register ``spec`` for each of its ``model_types`` (or its ``name``).

    A family is described, never coded: the path to the layer list (relative to ``model.base_model``), the
    per-layer paths of the q/k/v/o and FFN up/down Linears, the module whose attributes hold the head count
    (``attn``, ``attn_head_count_attrs``, ``attn_head_size_attr``, ``attn_all_head_size_attrs``; empty
    tuples when its forward reshapes with ``-1``) and, for hidden-size pruning, the modules that touch the
    residual stream. Layouts beyond BERT's:

    - **fused q/k/v** (one Linear whose output is the q, k and v blocks): give the same path for ``q``,
      ``k`` and ``v``; head j is rows ``j*d:(j+1)*d`` of every block.
    - **gated MLP** (GLU: one Linear computing the input and gate halves): ``up_blocks=2``; neuron j owns
      rows j and I + j.
    - **per-head position projections** (DeBERTa's ``pos_key_proj``): ``head_projections``; a position
      table in the hidden space shared by all layers: ``rel_table`` (and its LayerNorm in ``hidden_norms``).
    - **pre-norm layers**: ``pre_norm=True``; a final norm: ``hidden_norms``; a module that is an Identity
      in the first layer only: ``first_layer_identity``; config lists with one entry per layer:
      ``config_per_layer``.

    Example (a ModernBERT-like family)::

        import structprune as sp
        sp.register_architecture(sp.ArchSpec(
            name="my_modernbert", model_types=("my_modernbert",), layers="layers",
            q="attn.Wqkv", k="attn.Wqkv", v="attn.Wqkv", o="attn.Wo",   # fused: 3 blocks
            up="mlp.Wi", down="mlp.Wo", up_blocks=2,                    # gated: 2 blocks
            attn="attn", attn_head_count_attrs=(), attn_head_size_attr="head_dim",
            attn_all_head_size_attrs=(), pre_norm=True,
        ))

    Check a new row with the conformance tests (``tests/test_surgery.py``): pruned == masked reference.
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


def spec_for(model_type: str | None) -> ArchSpec | None:
    """The registered spec of ``model_type`` (``None`` if there is none)."""
    return _REGISTRY.get(model_type) if model_type else None


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
