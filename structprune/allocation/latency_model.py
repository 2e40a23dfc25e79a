"""A latency model: the predicted milliseconds of a (pruned) model on one device, from tables measured there.

Kwon et al. (2022, "A Fast Post-Training Pruning Framework for Transformers") time an attention block for
every number of heads and an FFN for every number of neurons on the target device, and search masks under
that lookup table. :class:`LatencyModel` does the same with the real model:

- a kept layer costs ``attention(h) + ffn(n)``. ``attention(h)`` is the time of a layer with ``h`` heads
  and no FFN neuron, so it also holds what a kept layer always costs (LayerNorms, residuals, the emptied
  FFN's bias); ``ffn(n)`` is the extra time of ``n`` neurons, ``ffn(0) = 0``. Both are piecewise linear
  through measured points (every head count; ~17 neuron counts), made non-decreasing;
- a dropped layer costs 0;
- ``outside``: embeddings, the task head and the rest of the forward outside the layers.

:meth:`LatencyModel.measure` prunes copies of the model with structprune's own surgery so that each layer
holds one grid point, and times every layer inside the model's forward (forward hooks; L grid points per
pass). :meth:`LatencyModel.cached` measures once per setting (device, threads, batch, sequence length,
dtype, torch version, attention implementation) and model shape, and keeps the result as JSON under
``$STRUCTPRUNE_CACHE/latency``. Budgets: ``sp.allocate(scores, model, latency=0.5)``, ``sp.search(...,
latency=0.5)``, ``sp.compress(model, data, latency=0.5)``.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from ..arch import Structure, view
from ..atomic import atomic_write_text
from ..mask import Mask
from .latency import time_plans
from .latency_setting import FORMAT, LatencySetting, ModelDims, cache_path

logger = logging.getLogger(__name__)

_KEYS = ("format", "setting", "dims", "heads", "attention_ms", "neurons", "ffn_ms", "outside_ms", "meta")
NEURON_STEPS = 16
"""The default FFN grid: 0, 1 and every 1/16 of the intermediate size."""


@dataclass(frozen=True)
class LinearLatency:
    """The latency model as linear prices (what the budget search spends): ``outside + layers * per_layer +
    heads * head + neurons * neuron``, exact for the unpruned model and for one head per layer."""

    outside: float
    per_layer: float
    head: float
    neuron: float


def _monotone(values: list[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, c2), (m1, c1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [m for m, c in blocks for _ in range(c)]


def _interp(grid: tuple[int, ...], values: tuple[float, ...], x: int) -> float:
    """Piecewise-linear interpolation of ``values`` at ``x`` (``grid[0] <= x <= grid[-1]``)."""
    i = bisect.bisect_left(grid, x)
    if grid[i] == x:
        return values[i]
    x0, x1, y0, y1 = grid[i - 1], grid[i], values[i - 1], values[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def default_neuron_grid(intermediate: int, steps: int = NEURON_STEPS) -> list[int]:
    """0, 1 and every ``1/steps`` of ``intermediate`` (the FFN counts :meth:`LatencyModel.measure` times)."""
    return sorted({0, 1, *(round(intermediate * k / steps) for k in range(1, steps + 1))})


def _grid(name: str, values, low: int, high: int) -> tuple[int, ...]:
    if not isinstance(values, list | tuple) or not values:
        raise ValueError(f"{name} must be a non-empty list of integers, got {values!r}.")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must hold integers, got {v!r}.")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"{name} must be strictly increasing, got {list(values)}.")
    if values[0] != low or values[-1] != high:
        raise ValueError(f"{name} must run from {low} to {high}, got {values[0]}..{values[-1]}.")
    return tuple(values)


def _times(name: str, values, n: int, *, positive: bool) -> tuple[float, ...]:
    if not isinstance(values, list | tuple) or len(values) != n:
        raise ValueError(
            f"{name} must be a list of {n} times in milliseconds (one per grid point), got {values!r}."
        )
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{name} must hold finite numbers of milliseconds, got {v!r}.")
        if v < 0 or (positive and v == 0):
            raise ValueError(
                f"{name} must hold {'positive' if positive else 'non-negative'} times, got {v!r}."
            )
        out.append(float(v))
    if any(b < a for a, b in zip(out, out[1:], strict=False)):
        raise ValueError(f"{name} must not decrease as structures are added, got {out}.")
    return tuple(out)


@dataclass(frozen=True)
class LatencyModel:
    """Predicted latency (ms) of a model on the device it was measured on, for any heads/neurons kept.

    ``heads`` (``1..H``) and ``attention_ms``: a kept layer with that many heads and no FFN neuron;
    ``neurons`` (``0..I``) and ``ffn_ms``: the extra time of that many FFN neurons (``ffn_ms[0] == 0``);
    ``outside_ms``: the forward outside the layers. Between grid points times are linear; a dropped layer
    costs nothing. Budgets are fractions of :attr:`dense_ms`, the unpruned model's prediction.

    Example::

        lm = sp.LatencyModel.cached(model, batch_size=32, seq_len=128)   # measured here once, then cached
        mask = sp.search(scores, model, latency=0.5, latency_model=lm)
        lm.fraction(mask), lm.predict(mask), lm.setting.describe()
        lm.save("latency.json"); sp.LatencyModel.load("latency.json", model)
    """

    setting: LatencySetting
    dims: ModelDims
    heads: tuple[int, ...]
    attention_ms: tuple[float, ...]
    neurons: tuple[int, ...]
    ffn_ms: tuple[float, ...]
    outside_ms: float
    meta: dict = field(default_factory=dict, compare=False)
    """How it was measured (warm-up, repeats, the measured dense latency, date); informational."""

    def __post_init__(self):
        if not isinstance(self.setting, LatencySetting) or not isinstance(self.dims, ModelDims):
            raise TypeError(
                "LatencyModel needs a LatencySetting and a ModelDims (see LatencyModel.from_dict)."
            )
        heads = _grid("heads", self.heads, 1, self.dims.num_heads)
        neurons = _grid("neurons", self.neurons, 0, self.dims.intermediate_size)
        attention = _times("attention_ms", self.attention_ms, len(heads), positive=True)
        ffn = _times("ffn_ms", self.ffn_ms, len(neurons), positive=False)
        if ffn[0] != 0:
            raise ValueError(f"ffn_ms[0] is the time of no FFN neuron and must be 0, got {ffn[0]!r}.")
        outside = _times("outside_ms", [self.outside_ms], 1, positive=False)[0]
        if not isinstance(self.meta, dict):
            raise ValueError(f"meta must be a mapping, got {type(self.meta).__name__}.")
        for name, value in (("heads", heads), ("neurons", neurons), ("attention_ms", attention),
                            ("ffn_ms", ffn), ("outside_ms", outside)):  # fmt: skip
            object.__setattr__(self, name, value)

    # --- prediction ---------------------------------------------------------------------------------
    def attention_at(self, heads: int) -> float:
        """Milliseconds of a kept layer with ``heads`` heads (at least 1) and no FFN neuron."""
        return _interp(self.heads, self.attention_ms, min(max(int(heads), 1), self.dims.num_heads))

    def ffn_at(self, neurons: int) -> float:
        """Extra milliseconds of ``neurons`` FFN neurons in a kept layer."""
        return _interp(self.neurons, self.ffn_ms, min(max(int(neurons), 0), self.dims.intermediate_size))

    def layer_ms(self, heads: int, neurons: int) -> float:
        """Milliseconds of one layer keeping ``heads`` heads and ``neurons`` neurons (0 when it keeps neither)."""
        if heads <= 0 and neurons <= 0:
            return 0.0
        return self.attention_at(heads) + self.ffn_at(neurons)

    @property
    def dense_ms(self) -> float:
        """The unpruned model's predicted latency: what a latency budget is a fraction of."""
        d = self.dims
        return self.outside_ms + d.num_layers * self.layer_ms(d.num_heads, d.intermediate_size)

    def _counts(self, target) -> list[tuple[int, int]]:
        if isinstance(target, nn.Module):
            self.check_model(target)
            target = view(target).structure
        if isinstance(target, dict):
            target = Structure.from_dict(target)
        if isinstance(target, Structure):
            target = Mask.from_structure(target)
        if not isinstance(target, Mask):
            raise TypeError(
                f"predict takes a Mask, a Structure (or its dict) or a model, got {type(target).__name__}."
            )
        d = self.dims
        if (
            tuple(target.head.shape) != (d.num_layers, d.num_heads)
            or target.ffn.shape[1] != d.intermediate_size
        ):
            raise ValueError(
                f"A mask of head {tuple(target.head.shape)} / ffn {tuple(target.ffn.shape)} does not fit this "
                f"latency model's {d.num_layers} layers x {d.num_heads} heads x {d.intermediate_size} neurons."
            )
        if target.hidden is not None and not bool(target.hidden.all()):
            raise ValueError(
                f"This latency model was measured at the full hidden size ({d.hidden_size}); it cannot predict "
                "a model whose hidden dimensions are pruned."
            )
        return list(zip(target.heads_per_layer(), target.ffn_per_layer(), strict=True))

    def predict(self, target) -> float:
        """Predicted milliseconds of ``target``: a :class:`~structprune.Mask` (original coordinates), a
        ``Structure`` (or the dict in ``config.structprune``) or a model of this shape."""
        return self.outside_ms + sum(self.layer_ms(h, n) for h, n in self._counts(target))

    def fraction(self, target) -> float:
        """``predict(target) / dense_ms``: the share of the unpruned model's latency ``target`` keeps."""
        return self.predict(target) / self.dense_ms

    def linear(self) -> LinearLatency:
        """Linear prices through the one-head and the unpruned layer: ``per_layer + h * head`` is exact at
        1 and H heads, ``n * neuron`` at 0 and I neurons."""
        d = self.dims
        first, full = self.attention_at(1), self.attention_at(d.num_heads)
        head = (full - first) / (d.num_heads - 1) if d.num_heads > 1 else 0.0
        neuron = self.ffn_at(d.intermediate_size) / d.intermediate_size
        return LinearLatency(self.outside_ms, first - head, head, neuron)

    def check_model(self, model: nn.Module) -> None:
        """Raise ``ValueError`` unless ``model`` has (or was pruned from) the shape this model describes."""
        dims = ModelDims.of(model)
        if dims != self.dims:
            diff = {k: (v, getattr(dims, k)) for k, v in asdict(self.dims).items() if getattr(dims, k) != v}
            raise ValueError(
                "This latency model was measured for another model: "
                + ", ".join(f"{k} {a!r} here vs {b!r} in the model" for k, (a, b) in diff.items())
                + ". Measure one for this model: structprune.LatencyModel.cached(model)."
            )

    # --- serialization ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "setting": asdict(self.setting),
            "dims": asdict(self.dims),
            "heads": list(self.heads),
            "attention_ms": list(self.attention_ms),
            "neurons": list(self.neurons),
            "ffn_ms": list(self.ffn_ms),
            "outside_ms": self.outside_ms,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data, where: str = "latency model") -> LatencyModel:
        """Validate and build from :meth:`to_dict` data (e.g. read from a file): every field is checked
        (types, monotone grids, positive times, grids that match the dims); errors name ``where``."""
        try:
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            if data.get("format") != FORMAT:
                raise ValueError(f"format must be {FORMAT!r}, got {data.get('format')!r}")
            keys = set(_KEYS)
            if unknown := sorted(set(data) - keys):
                raise ValueError(f"unknown fields {unknown}")
            if missing := sorted(keys - {"meta"} - set(data)):
                raise ValueError(f"missing fields {missing}")
            parts = {}
            for name, part in (("setting", LatencySetting), ("dims", ModelDims)):
                value = data[name]
                names = {f.name for f in dataclasses.fields(part)}
                if not isinstance(value, dict) or set(value) != names:
                    raise ValueError(f"{name} must be an object with exactly the fields {sorted(names)}")
                parts[name] = part(**value)
            return cls(
                parts["setting"],
                parts["dims"],
                data["heads"],
                data["attention_ms"],
                data["neurons"],
                data["ffn_ms"],
                data["outside_ms"],
                data.get("meta", {}),
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where} is not a valid structprune latency model: {err}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as JSON, atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> LatencyModel:
        """Read a saved latency model (validated); with ``model``, also check that it describes that model."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No latency model file at {path}.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a valid structprune latency model: {err}") from None
        lm = cls.from_dict(data, str(path))
        if model is not None:
            lm.check_model(model)
        return lm

    @classmethod
    def from_card(cls, folder: str | os.PathLike) -> LatencyModel:
        """The latency model a saved checkpoint's card (README.md) records, when it was pruned to a latency
        budget (:func:`structprune.compress` notes it; :func:`structprune.save_pretrained` writes it)."""
        readme = Path(folder) / "README.md" if Path(folder).is_dir() else Path(folder)
        text = readme.read_text(encoding="utf-8")
        for block in re.findall(r"^```json\n(.*?)^```", text, re.S | re.M):
            if f'"format": "{FORMAT}"' in block:
                try:
                    data = json.loads(block)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{readme}: the latency model block is not valid JSON: {err}") from None
                return cls.from_dict(data, f"the latency model in {readme}")
        raise ValueError(f"{readme} records no latency model (the model was not pruned to a latency budget).")

    # --- measurement and cache ----------------------------------------------------------------------
    @classmethod
    def measure(
        cls,
        model: nn.Module,
        *,
        batch_size: int = 32,
        seq_len: int = 128,
        device=None,
        heads: list[int] | None = None,
        neurons: list[int] | None = None,
        warmup: int = 2,
        repeats: int = 10,
    ) -> LatencyModel:
        """Measure the tables on this machine: ``model`` (unpruned; left unchanged) is copied and pruned so
        that every layer holds one grid point (``heads``: default all of ``1..H`` with no neuron; ``neurons``:
        default :func:`default_neuron_grid`, with all heads), and each layer is timed inside the forward on
        random ``batch_size x seq_len`` tokens (``warmup`` untimed passes, then the median of ``repeats``).
        ``device``: where to run (default: the model's device). Takes about ``(H + 17) / L + 1`` models x
        ``warmup + repeats`` forward passes."""
        st = view(model).structure
        if st.is_pruned:
            raise ValueError(
                "Measure the latency model on the unpruned model (the one budgets are fractions of); this "
                "model is already pruned."
            )
        L, H, inter = st.num_layers, st.num_heads, st.intermediate_size
        head_grid = sorted({1, H, *(heads or range(1, H + 1))})
        neuron_grid = sorted({0, inter, *(neurons if neurons is not None else default_neuron_grid(inter))})
        if head_grid[0] < 1 or head_grid[-1] > H or neuron_grid[0] < 0 or neuron_grid[-1] > inter:
            raise ValueError(f"Grid points must lie in 1..{H} heads and 0..{inter} neurons.")
        setting = LatencySetting.current(model, batch_size, seq_len, device)
        dims = ModelDims.of(model)
        configs = [(h, 0) for h in head_grid] + [(H, n) for n in neuron_grid if n > 0]
        plans = [[(H, inter)] * L]  # the unpruned model first
        for i in range(0, len(configs), L):
            chunk = configs[i : i + L]
            plans.append(chunk + [(H, inter)] * (L - len(chunk)))
        logger.info(
            "measuring a latency model (%s): %d models x %d passes",
            setting.describe(),
            len(plans),
            warmup + repeats,
        )
        timed = time_plans(model, plans, batch_size=batch_size, seq_len=seq_len, device=device, warmup=warmup,
                           repeats=repeats)  # fmt: skip
        samples: dict[tuple[int, int], list[float]] = {}
        for plan, (layers_ms, _, _) in zip(plans, timed, strict=True):
            for config, ms in zip(plan, layers_ms, strict=True):
                samples.setdefault(config, []).append(ms)
        t = {config: _median(v) for config, v in samples.items()}
        attention = [max(v, 1e-6) for v in _monotone([t[(h, 0)] for h in head_grid])]
        ffn = [max(v, 0.0) for v in _monotone([0.0] + [t[(H, n)] - t[(H, 0)] for n in neuron_grid[1:]])]
        ffn[0] = 0.0
        meta = {
            "warmup": warmup,
            "repeats": repeats,
            "dense_measured_ms": timed[0][2],
            "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        outside = max(_median([o for _, o, _ in timed]), 0.0)
        return cls(
            setting, dims, tuple(head_grid), tuple(attention), tuple(neuron_grid), tuple(ffn), outside, meta
        )

    @classmethod
    def cached(
        cls,
        model: nn.Module,
        *,
        batch_size: int = 32,
        seq_len: int = 128,
        device=None,
        cache_dir: str | os.PathLike | None = None,
        **measure_options,
    ) -> LatencyModel:
        """The latency model of ``model`` in this setting from the cache (``cache_dir``, default
        ``$STRUCTPRUNE_CACHE/latency``), else :meth:`measure` it (``measure_options``: its grid, warm-up and
        repeats) and cache it. A pruned model finds the entry of the model it was pruned from; a damaged
        entry is measured again."""
        setting = LatencySetting.current(model, batch_size, seq_len, device)
        dims = ModelDims.of(model)
        path = cache_path(setting, dims, cache_dir)
        if path.is_file():
            try:
                lm = cls.load(path)
                if lm.setting == setting and lm.dims == dims:
                    return lm
                logger.warning("the cached latency model %s is for another setting; measuring again", path)
            except ValueError as err:
                logger.warning("ignoring a damaged cached latency model (%s); measuring again", err)
        if view(model).structure.is_pruned:
            raise ValueError(
                f"No latency model is cached for this pruned model's setting ({setting.describe()}). Measure it "
                "on the unpruned model first: structprune.LatencyModel.cached(unpruned_model, "
                f"batch_size={batch_size}, seq_len={seq_len}), or pass latency_model=."
            )
        lm = cls.measure(model, batch_size=batch_size, seq_len=seq_len, device=device, **measure_options)
        lm.save(path)
        logger.info("latency model cached at %s", path)
        return lm


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def resolve_latency_model(
    model: nn.Module, latency_model, *, seq_len: int = 128, batch_size: int = 32
) -> LatencyModel:
    """What a latency budget is measured with: ``latency_model`` (a :class:`LatencyModel`, or the path of
    a saved one) checked against ``model``, else the cached (or newly measured) model at ``batch_size`` x
    ``seq_len`` on ``model``'s device."""
    if latency_model is None:
        return LatencyModel.cached(model, batch_size=batch_size, seq_len=seq_len)
    if isinstance(latency_model, str | os.PathLike):
        return LatencyModel.load(latency_model, model)
    if not isinstance(latency_model, LatencyModel):
        raise TypeError(
            f"latency_model must be a structprune.LatencyModel or the path of a saved one, got "
            f"{type(latency_model).__name__}."
        )
    latency_model.check_model(model)
    return latency_model
