"""Resolve a Hugging Face model into a family-independent view of its encoder layers.

Everything structprune does is expressed in the *original* model's coordinates: layer ``l`` of the
unpruned model, head ``h`` of that layer, FFN neuron ``i``. A pruned model records, in
``config.structprune``, which original layers/heads/neurons each of its current modules holds, so that
scores and masks keep one meaning across repeated pruning, distillation maps and checkpoint loading.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from .spec import ArchSpec, get_spec, resolve

CONFIG_KEY = "structprune"


@dataclass
class Structure:
    """What a (possibly pruned) model keeps, in the original model's coordinates.

    ``layers[i]`` is the original index of current layer ``i``; ``heads[i]`` and ``ffn[i]`` are the
    original head and neuron indices it keeps (sorted).
    """

    num_layers: int
    num_heads: int
    head_size: int
    intermediate_size: int
    hidden_size: int
    layers: list[int]
    heads: list[list[int]]
    ffn: list[list[int]]

    @property
    def is_pruned(self) -> bool:
        return (
            len(self.layers) != self.num_layers
            or any(len(h) != self.num_heads for h in self.heads)
            or any(len(f) != self.intermediate_size for f in self.ffn)
        )

    @property
    def heads_per_layer(self) -> list[int]:
        return [len(h) for h in self.heads]

    @property
    def ffn_per_layer(self) -> list[int]:
        return [len(f) for f in self.ffn]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Structure:
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except KeyError as err:
            raise ValueError(
                f"config.{CONFIG_KEY} is missing the key {err}; the checkpoint is damaged."
            ) from None


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

    @property
    def head_bias(self) -> nn.Embedding | None:
        return resolve(self.base, self.spec.head_bias) if self.spec.head_bias else None

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
        lv = LayerView(
            index=i,
            orig=st.layers[i],
            module=module,
            attn=resolve(module, s.attn),
            heads=st.heads[i],
            ffn=st.ffn[i],
            **{name: resolve(module, path) for name, path in s.projections.items()},
        )
        if lv.q.out_features != len(lv.heads) * st.head_size or lv.up.out_features != len(lv.ffn):
            raise ValueError(
                f"Layer {i}: weights hold {lv.q.out_features // st.head_size} heads and {lv.up.out_features} "
                f"FFN neurons but config.{CONFIG_KEY} records {len(lv.heads)} and {len(lv.ffn)}."
            )
        return lv

    def write_structure(self, structure: Structure) -> None:
        """Record ``structure`` in the config (``config.structprune`` plus the stock size keys)."""
        s = self.spec
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
