"""`Mask` and `Scores`: the small typed values exchanged between scoring, allocation and surgery.

Both are in the *original* model's coordinates (``[layers, heads]``, ``[layers, intermediate]``,
``[layers]`` and ``[hidden]``), so they keep their meaning when a model is pruned more than once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .arch import Structure, view
from .atomic import atomic_write_text


@dataclass
class Scores:
    """Importance of every head (``head: [L, H]``) and FFN neuron (``ffn: [L, I]``); higher = keep.

    Optional: whole layers (``layer: [L]``, see :func:`structprune.score_layers`) and residual-stream
    dimensions (``hidden: [D]``, see :func:`structprune.score_hidden`), needed by ``allocate(layers=...)``
    (else layers are ranked by their summed head and neuron scores) and ``allocate(hidden=...)``.
    Structures a model no longer has score 0 and are never selected by :func:`structprune.allocate`.
    """

    head: torch.Tensor
    ffn: torch.Tensor
    method: str = ""
    meta: dict = field(default_factory=dict)
    hidden: torch.Tensor | None = None
    layer: torch.Tensor | None = None

    def __post_init__(self):
        if self.head.dim() != 2 or self.ffn.dim() != 2 or self.head.shape[0] != self.ffn.shape[0]:
            raise ValueError(
                f"Scores need head [L, H] and ffn [L, I] with the same L; got {tuple(self.head.shape)} "
                f"and {tuple(self.ffn.shape)}."
            )
        if self.layer is not None and tuple(self.layer.shape) != (self.head.shape[0],):
            raise ValueError(
                f"Scores.layer needs one score per layer [{self.head.shape[0]}], got {tuple(self.layer.shape)}."
            )
        if self.hidden is not None and self.hidden.dim() != 1:
            raise ValueError(
                f"Scores.hidden needs one score per hidden dimension [D], got {tuple(self.hidden.shape)}."
            )


def _bools(name: str, value) -> torch.Tensor:
    """``value`` as a bool tensor; numbers must be exactly 0 or 1 (a 0.5 or a NaN is an error, not True)."""
    t = torch.as_tensor(value).cpu()
    if t.dtype == torch.bool:
        return t
    if t.numel() and not ((t == 0) | (t == 1)).all():
        raise ValueError(
            f"Mask.{name} must hold booleans (or 0/1); it holds other values such as "
            f"{t[(t != 0) & (t != 1)].flatten()[:3].tolist()}."
        )
    return t.to(torch.bool)


@dataclass
class Mask:
    """Which heads (``head: bool[L, H]``), FFN neurons (``ffn: bool[L, I]``) and residual-stream
    dimensions (``hidden: bool[D]``; ``None`` keeps them all) to keep.

    A layer with no head and no neuron kept is dropped from the model.

    Example::

        mask = sp.Mask.full(model)          # keeps everything the model has now
        mask.head[0, :6] = False            # drop the first six heads of layer 0
        mask.save("mask.json"); sp.Mask.load("mask.json")
    """

    head: torch.Tensor
    ffn: torch.Tensor
    hidden: torch.Tensor | None = None

    def __post_init__(self):
        self.head = _bools("head", self.head)
        self.ffn = _bools("ffn", self.ffn)
        if self.head.dim() != 2 or self.ffn.dim() != 2 or self.head.shape[0] != self.ffn.shape[0]:
            raise ValueError(
                f"A Mask needs head bool[L, H] and ffn bool[L, I] with the same L; got "
                f"{tuple(self.head.shape)} and {tuple(self.ffn.shape)}."
            )
        if self.hidden is not None:
            self.hidden = _bools("hidden", self.hidden)
            if self.hidden.dim() != 1:
                raise ValueError(f"Mask.hidden must be bool[D], got shape {tuple(self.hidden.shape)}.")
            if not self.hidden.any():
                raise ValueError("Mask.hidden keeps no hidden dimension; keep at least one.")

    @classmethod
    def full(cls, model) -> Mask:
        """The mask of everything ``model`` currently holds (original coordinates)."""
        return cls.from_structure(view(model).structure)

    @classmethod
    def from_structure(cls, structure) -> Mask:
        """The mask of what a recorded ``Structure`` (or its dict, as in ``config.structprune``) keeps."""
        s = Structure.from_dict(structure) if isinstance(structure, dict) else structure
        head = torch.zeros(s.num_layers, s.num_heads, dtype=torch.bool)
        ffn = torch.zeros(s.num_layers, s.intermediate_size, dtype=torch.bool)
        for orig, heads, neurons in zip(s.layers, s.heads, s.ffn, strict=True):
            head[orig, heads] = True
            ffn[orig, neurons] = True
        hidden = None
        if s.hidden is not None:
            hidden = torch.zeros(s.hidden_size, dtype=torch.bool)
            hidden[s.hidden] = True
        return cls(head, ffn, hidden)

    def hidden_or_full(self, size: int) -> torch.Tensor:
        """``hidden`` as a ``bool[size]`` tensor (all True when ``None``)."""
        return torch.ones(size, dtype=torch.bool) if self.hidden is None else self.hidden

    @property
    def num_layers(self) -> int:
        return self.head.shape[0]

    @property
    def kept_layers(self) -> list[int]:
        """Original indices of the layers that survive (any head or neuron kept)."""
        return [i for i in range(self.num_layers) if self.head[i].any() or self.ffn[i].any()]

    def heads_per_layer(self) -> list[int]:
        return self.head.sum(1).tolist()

    def ffn_per_layer(self) -> list[int]:
        return self.ffn.sum(1).tolist()

    def summary(self) -> dict:
        return {
            "layers_kept": len(self.kept_layers),
            "layers": self.num_layers,
            "heads_kept": int(self.head.sum()),
            "heads": self.head.numel(),
            "ffn_kept": int(self.ffn.sum()),
            "ffn": self.ffn.numel(),
            "heads_per_layer": self.heads_per_layer(),
            "ffn_per_layer": self.ffn_per_layer(),
            **(
                {}
                if self.hidden is None
                else {"hidden_kept": int(self.hidden.sum()), "hidden": self.hidden.numel()}
            ),
        }

    def __and__(self, other: Mask) -> Mask:
        if self.hidden is None or other.hidden is None:
            hidden = other.hidden if self.hidden is None else self.hidden
        else:
            hidden = self.hidden & other.hidden
        return Mask(self.head & other.head, self.ffn & other.ffn, hidden)

    def __eq__(self, other) -> bool:
        if not (
            isinstance(other, Mask)
            and torch.equal(self.head, other.head)
            and torch.equal(self.ffn, other.ffn)
        ):
            return False
        a, b = self.hidden, other.hidden
        if a is None or b is None:  # None means "keep every dimension"
            return bool((b if a is None else a).all()) if (a is not None or b is not None) else True
        return torch.equal(a, b)

    def check_compatible(self, model) -> None:
        """Raise ``ValueError`` unless this mask fits ``model`` and keeps only what it still has."""
        full = Mask.full(model)
        if self.head.shape != full.head.shape or self.ffn.shape != full.ffn.shape:
            raise ValueError(
                f"Mask shape head {tuple(self.head.shape)} / ffn {tuple(self.ffn.shape)} does not match the "
                f"model's head {tuple(full.head.shape)} / ffn {tuple(full.ffn.shape)} (original layers x "
                "heads and layers x intermediate size). Build the mask from this model's scores."
            )
        extra_h = self.head & ~full.head
        extra_f = self.ffn & ~full.ffn
        if extra_h.any() or extra_f.any():
            raise ValueError(
                f"The mask keeps {int(extra_h.sum())} heads and {int(extra_f.sum())} FFN neurons that the model "
                "no longer has (pruned earlier); pruning can only remove structure. Intersect it with "
                "Mask.full(model) first."
            )
        size = view(model).structure.hidden_size
        if self.hidden is not None:
            if self.hidden.numel() != size:
                raise ValueError(
                    f"Mask.hidden has {self.hidden.numel()} dimensions but the model's original hidden size "
                    f"is {size}. Build the mask from this model's scores."
                )
            gone = self.hidden & ~full.hidden_or_full(size)
            if gone.any():
                raise ValueError(
                    f"The mask keeps {int(gone.sum())} hidden dimensions that the model no longer has (pruned "
                    "earlier); intersect it with Mask.full(model) first."
                )

    # --- serialization (JSON or safetensors; never pickle) -------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if path.suffix == ".json":
            data = {
                "format": "structprune.mask/1",
                "head": self.head.int().tolist(),
                "ffn": self.ffn.int().tolist(),
            }
            if self.hidden is not None:
                data["hidden"] = self.hidden.int().tolist()
            return atomic_write_text(path, json.dumps(data))
        if path.suffix == ".safetensors":
            tensors = {"head": self.head.to(torch.uint8), "ffn": self.ffn.to(torch.uint8)}
            if self.hidden is not None:
                tensors["hidden"] = self.hidden.to(torch.uint8)
            tmp = path.with_name(f".{path.name}.tmp")
            save_file(tensors, str(tmp))
            os.replace(tmp, path)
            return path
        raise ValueError(f"Save a Mask as .json or .safetensors, not {path.suffix or 'no suffix'!r}.")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Mask:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No mask file at {path}.")
        try:
            if path.suffix == ".json":
                data = json.loads(path.read_text())
                hidden = torch.tensor(data["hidden"]) if "hidden" in data else None
                return cls(torch.tensor(data["head"]), torch.tensor(data["ffn"]), hidden)
            if path.suffix == ".safetensors":
                t = load_file(str(path))
                return cls(t["head"], t["ffn"], t.get("hidden"))
        except Exception as err:  # json/safetensors/shape errors all mean a damaged file
            raise ValueError(f"{path} is not a valid structprune mask file: {err}") from None
        raise ValueError(f"Load a Mask from .json or .safetensors, not {path.suffix or 'no suffix'!r}.")
