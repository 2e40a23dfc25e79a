"""Resolve a Hugging Face model into a family-independent view of its encoder layers.

Everything structprune does is expressed in the *original* model's coordinates: layer ``l`` of the
unpruned model, head ``h`` of that layer, FFN neuron ``i``. A pruned model records, in
``config.structprune``, which original layers/heads/neurons each of its current modules holds, so that
scores and masks keep one meaning across repeated pruning, distillation maps and checkpoint loading.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from torch import nn

from .record import validate_structure
from .spec import ArchSpec, get_spec, resolve

CONFIG_KEY = "structprune"


@dataclass
class Structure:
    """What a (possibly pruned) model keeps, in the original model's coordinates.

    ``layers[i]`` is the original index of current layer ``i``; ``heads[i]`` and ``ffn[i]`` are the
    original head and neuron indices it keeps (sorted). ``hidden`` lists the original residual-stream
    dimensions kept (``None``: all ``hidden_size`` of them). The size fields (``num_layers``, ``num_heads``,
    ``head_size``, ``intermediate_size``, ``hidden_size``) always describe the *original* model: a loader
    builds those shapes and then applies the record. The head size never shrinks.
    """

    num_layers: int
    num_heads: int
    head_size: int
    intermediate_size: int
    hidden_size: int
    layers: list[int]
    heads: list[list[int]]
    ffn: list[list[int]]
    hidden: list[int] | None = None

    @property
    def is_pruned(self) -> bool:
        return (
            len(self.layers) != self.num_layers
            or any(len(h) != self.num_heads for h in self.heads)
            or any(len(f) != self.intermediate_size for f in self.ffn)
            or self.hidden_width != self.hidden_size
        )

    @property
    def hidden_width(self) -> int:
        """Current width of the residual stream (``hidden_size`` unless hidden dimensions were pruned)."""
        return self.hidden_size if self.hidden is None else len(self.hidden)

    @property
    def hidden_dims(self) -> list[int]:
        """Original indices of the residual-stream dimensions kept."""
        return list(range(self.hidden_size)) if self.hidden is None else list(self.hidden)

    @property
    def heads_per_layer(self) -> list[int]:
        return [len(h) for h in self.heads]

    @property
    def ffn_per_layer(self) -> list[int]:
        return [len(f) for f in self.ffn]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "") -> Structure:
        """Read a record, validating every field (types, ranges, order, uniqueness, lengths); an error names
        the field (and ``where`` it came from, e.g. the config file). Fields added later (``hidden``)
        take their defaults in older records."""
        d = validate_structure(data, where)
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class LayerView:
    """One current encoder layer: its modules and which original structures it holds."""

    index: int
    orig: int
    module: nn.Module
    attn: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    up: nn.Linear
    down: nn.Linear
    heads: list[int]
    ffn: list[int]
    norms: list[nn.LayerNorm] = field(default_factory=list)
    """LayerNorms over the residual stream in this layer (``ArchSpec.layer_norms``)."""
    head_rows: list[tuple[nn.Linear, int]] = field(default_factory=list)
    """Every distinct Linear whose output rows are laid out by head, with its number of equal blocks:
    q, k, v (one entry of 3 blocks when fused) and the spec's ``head_projections`` this model has."""
    up_blocks: int = 1
    """Equal blocks of ``up``'s output (2 for a gated MLP: neuron j owns row j of each)."""
    rel_terms: int = 0
    """Relative-position score terms each head computes against the shared table (DeBERTa: c2p, p2c)."""

    def readers(self) -> list[nn.Linear]:
        """The distinct Linears of this layer that read the residual stream (q/k/v, up, head projections)."""
        out: list[nn.Linear] = []
        for lin in [m for m, _ in self.head_rows] + [self.up]:
            if all(lin is not m for m in out):
                out.append(lin)
        return out

    def head_row_weights(self) -> list:
        """Each head-laid-out block of weights ``[heads * head_size, in]`` (q, k, v, head projections)."""
        return [w for lin, blocks in self.head_rows for w in lin.weight.chunk(blocks, dim=0)]

    def up_row_weights(self) -> list:
        """Each block of ``up``'s weights ``[neurons, in]`` (input and gate halves of a gated MLP)."""
        return list(self.up.weight.chunk(self.up_blocks, dim=0))


@dataclass
class HiddenSites:
    """Every module outside the encoder layers that touches the residual stream (``view(m).hidden_sites()``).

    Surgery, the cost model, the masked reference (:class:`structprune.Gates`) and hidden scoring all read
    this one list. Per-layer sites are on :class:`LayerView` (q/k/v/up read, o/down write, ``norms``).
    """

    embeddings: list[nn.Embedding]
    """Embeddings whose vectors are residual-stream vectors (the input embeddings unless a projection
    separates the spaces; a relative-position table in the hidden space, ``ArchSpec.rel_table``)."""
    norms: list[nn.LayerNorm]
    """LayerNorms over residual-stream coordinates (the embedding LayerNorm, MLM transform LayerNorms)."""
    writers: list[nn.Linear]
    """Linears whose output rows are residual-stream coordinates (ELECTRA's projection, MLM transforms)."""
    readers: list[nn.Linear]
    """Linears whose input columns are residual-stream coordinates (pooler, classifier, QA, MLM layers)."""


def _find(roots: list[nn.Module], path: str | None) -> nn.Module | None:
    """The module at ``path`` under the first of ``roots`` that has it, else ``None``."""
    if not path:
        return None
    for root in roots:
        try:
            module = resolve(root, path)
        except AttributeError:
            continue
        if module is not None:
            return module
    return None


class ModelView:
    """A family-independent view of a transformers encoder.

    Example::

        v = view(model)
        v.layers[0].q.weight.shape       # [heads_kept * head_size, hidden]
        v.structure.heads[0]             # original head ids kept in layer 0
    """

    def __init__(self, model: nn.Module, spec: ArchSpec):
        self.model = model
        self.spec = spec
        self.base = getattr(model, "base_model", model)
        self.config = model.config
        self.layer_list: nn.ModuleList = resolve(self.base, spec.layers)
        self.structure = self._read_structure()
        if len(self.structure.layers) != len(self.layer_list):
            raise ValueError(
                f"config.{CONFIG_KEY} lists {len(self.structure.layers)} layers but the model has "
                f"{len(self.layer_list)}; the config and the weights are out of step."
            )
        self.layers = [self._layer(i, m) for i, m in enumerate(self.layer_list)]

    def hidden_sites(self) -> HiddenSites:
        """Resolve the spec's residual-stream modules in this model (see :class:`HiddenSites`)."""
        s, roots = self.spec, [self.model, self.base]
        project = _find([self.base], s.embedding_project)
        shared = project is None  # no projection: the embedding space is the residual stream
        embeddings = [m for p in s.embeddings if isinstance(m := _find([self.base], p), nn.Embedding)]
        norms: list[nn.LayerNorm] = []
        writers: list[nn.Linear] = [project] if isinstance(project, nn.Linear) else []
        readers: list[nn.Linear] = []
        if shared and isinstance(norm := _find([self.base], s.embedding_norm), nn.LayerNorm):
            norms.append(norm)
        norms += [m for p in s.hidden_norms if isinstance(m := _find([self.base], p), nn.LayerNorm)]
        tables = [] if self.rel_table is None else [self.rel_table]  # hidden space whatever the embeddings
        pooled = any(_find(roots, p) is not None for p in s.poolers)
        for path in s.residual_readers + (() if pooled else s.pooled_readers):
            if isinstance(m := _find(roots, path), nn.Linear) and m not in readers:
                readers.append(m)
        for dense_path, norm_path, decoder_path in s.lm_heads:
            dense = _find([self.model], dense_path)
            if not isinstance(dense, nn.Linear) or dense in readers:
                continue
            readers.append(dense)
            if shared:
                writers.append(dense)
                if isinstance(norm := _find([self.model], norm_path), nn.LayerNorm):
                    norms.append(norm)
                if isinstance(decoder := _find([self.model], decoder_path), nn.Linear):
                    readers.append(decoder)
        return HiddenSites((embeddings if shared else []) + tables, norms, writers, readers)

    @property
    def head_bias(self) -> nn.Embedding | None:
        return resolve(self.base, self.spec.head_bias) if self.spec.head_bias else None

    @property
    def rel_table(self) -> nn.Embedding | None:
        """The relative-position table shared by all layers (``ArchSpec.rel_table``), if this model has one."""
        table = _find([self.base], self.spec.rel_table)
        return table if isinstance(table, nn.Embedding) else None

    def first_layer_pinned(self) -> bool:
        """Whether the encoder applies a module to its first layer's output (``ArchSpec.after_first_layer``)."""
        return any(_find([self.base], p) is not None for p in self.spec.after_first_layer)

    def _read_structure(self) -> Structure:
        recorded = getattr(self.config, CONFIG_KEY, None)
        if recorded:
            return Structure.from_dict(recorded)
        attn = resolve(self.layer_list[0], self.spec.attn)
        num_layers = len(self.layer_list)
        num_heads = int(getattr(self.config, self.spec.config_heads))
        ffn = int(getattr(self.config, self.spec.config_ffn))
        return Structure(
            num_layers=num_layers,
            num_heads=num_heads,
            head_size=int(getattr(attn, self.spec.attn_head_size_attr)),
            intermediate_size=ffn,
            hidden_size=int(getattr(self.config, self.spec.config_hidden)),
            layers=list(range(num_layers)),
            heads=[list(range(num_heads)) for _ in range(num_layers)],
            ffn=[list(range(ffn)) for _ in range(num_layers)],
        )

    def _layer(self, i: int, module: nn.Module) -> LayerView:
        s, st = self.spec, self.structure
        attn = resolve(module, s.attn)
        head_rows = [(resolve(module, path), blocks) for path, blocks in s.qkv_blocks]
        head_rows += [(m, 1) for p in s.head_projections if isinstance(m := _find([module], p), nn.Linear)]
        rel_terms = 0
        if s.attn_rel_terms_attr and self.rel_table is not None:
            rel_terms = len(getattr(attn, s.attn_rel_terms_attr, None) or ())
        lv = LayerView(
            index=i,
            orig=st.layers[i],
            module=module,
            attn=attn,
            heads=st.heads[i],
            ffn=st.ffn[i],
            norms=[m for p in s.layer_norms if isinstance(m := _find([module], p), nn.LayerNorm)],
            head_rows=head_rows,
            up_blocks=s.up_blocks,
            rel_terms=rel_terms,
            **{name: resolve(module, path) for name, path in s.projections.items()},
        )
        inner = len(lv.heads) * st.head_size
        held = [lin.out_features // blocks for lin, blocks in head_rows]
        if any(h != inner for h in held) or lv.up.out_features != s.up_blocks * len(lv.ffn):
            raise ValueError(
                f"Layer {i}: weights hold {held[0] // st.head_size} heads and {lv.up.out_features // s.up_blocks} "
                f"FFN neurons but config.{CONFIG_KEY} records {len(lv.heads)} and {len(lv.ffn)}."
            )
        if lv.q.in_features != st.hidden_width:
            raise ValueError(
                f"Layer {i}: weights read a residual stream of width {lv.q.in_features} but "
                f"config.{CONFIG_KEY} records {st.hidden_width} hidden dimensions."
            )
        return lv

    def write_structure(self, structure: Structure, kept: list[int] | None = None) -> None:
        """Record ``structure`` in the config (``config.structprune`` plus the stock size keys).

        ``config.hidden_size`` keeps the original width even when hidden dimensions are pruned: families
        derive the head size from it at init, so a loader builds the original shapes and then applies the
        record (whose ``hidden`` lists the dimensions kept). ``kept``: the current indices of the layers
        kept, when layers were dropped (per-layer config lists keep those entries).
        """
        s = self.spec
        if kept is not None:
            for key in s.config_per_layer:
                values = getattr(self.config, key, None)
                if isinstance(values, list | tuple) and len(values) == len(self.layers):  # before the drop
                    setattr(self.config, key, [values[i] for i in kept])
        setattr(self.config, CONFIG_KEY, structure.to_dict())
        setattr(self.config, s.config_layers, len(structure.layers))
        widths = set(structure.ffn_per_layer)
        # A uniform FFN width is a stock config value; otherwise the largest one (per-layer sizes are in
        # config.structprune).
        setattr(self.config, s.config_ffn, max(widths) if widths else 0)
        self.structure = structure


def view(model: nn.Module) -> ModelView:
    """Resolve ``model`` (any registered family, any task head) into a :class:`ModelView`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected a transformers model (torch.nn.Module), got {type(model).__name__}.")
    return ModelView(model, get_spec(model))
