"""The model card: README.md with Hub metadata, per-layer table and a PNG heatmap, all from the model.

Every number in the card is computed here from the model itself (``config.structprune`` and
:func:`structprune.cost`) or passed in by the code that produced it (:class:`CardInfo`); the table and the
heatmap are drawn from the same :class:`LayerRow` list.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from torch import nn

from ..allocation.cost import cost, dense_cost
from ..arch import view
from ..errors import install_command
from .registry import base_model_type, is_stock

logger = logging.getLogger(__name__)

HEATMAP_FILE = "structure.png"
CARD_EXTRA_HINT = install_command("matplotlib")  # pip install 'structprune[card]'
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class CardInfo:
    """What the model card says beyond what the model itself records. All fields are optional.

    Example::

        sp.CardInfo(base_model="sentence-transformers/all-MiniLM-L6-v2", method="taylor scores, global allocation",
                    budget="50% encoder FLOPs", datasets=["nyu-mll/glue"], task="text-classification",
                    metrics_before={"accuracy": 0.8635}, metrics_after={"accuracy": 0.85})
    """

    base_model: str | None = field(default=None, metadata={"help": "Hub id of the model that was pruned."})
    teacher: str | None = field(
        default=None, metadata={"help": "Teacher used for recovery (None: the card says there was none)."}
    )
    method: str | None = field(
        default=None, metadata={"help": "How heads/neurons were scored, chosen, recovered."}
    )
    budget: str | None = field(
        default=None, metadata={"help": "The budget pruned to, e.g. '50% encoder FLOPs'."}
    )
    datasets: list[str] = field(default_factory=list, metadata={"help": "Hub ids of the data used."})
    task: str | None = field(default=None, metadata={"help": "Hub pipeline tag, e.g. 'text-classification'."})
    eval_dataset: str | None = field(
        default=None, metadata={"help": "Name of the evaluation set of the metrics."}
    )
    metrics_before: dict[str, float] = field(
        default_factory=dict, metadata={"help": "Metrics of the unpruned model."}
    )
    metrics_after: dict[str, float] = field(default_factory=dict, metadata={"help": "Metrics of this model."})
    seq_len: int = field(default=128, metadata={"help": "Sequence length the FLOPs are counted at."})
    license: str | None = field(default=None, metadata={"help": "License id for the Hub metadata."})
    tags: list[str] = field(default_factory=list, metadata={"help": "Extra Hub tags."})
    model_name: str | None = field(default=None, metadata={"help": "Title of the card (default: derived)."})
    notes: str = field(default="", metadata={"help": "Free text appended to the card."})
    vocabulary: str | None = field(
        default=None,
        metadata={"help": "What vocabulary pruning kept (structprune.prune_vocab notes it), e.g. '11,575 of "
                  "30,522 tokens (...)'."},
    )  # fmt: skip
    library_name: str = field(
        default="transformers",
        metadata={"help": "Hub library the model loads with (sentence-transformers, ...)."},
    )
    usage: str | None = field(
        default=None,
        metadata={
            "help": "Markdown of the card's 'How to load' section (None: the transformers instructions)."
        },
    )
    latency: dict = field(
        default_factory=dict,
        metadata={"help": "The latency model a latency budget was measured with (LatencyModel.to_dict()); the card "
                  "shows its setting and the predicted latency before and after, and records it."},
    )  # fmt: skip

    def __post_init__(self):
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise ValueError(
                f"seq_len={self.seq_len!r}: give the positive number of tokens FLOPs are counted at."
            )
        for name in ("vocabulary", "usage"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name}={value!r}: give a string (or None).")
        if not isinstance(self.library_name, str) or not self.library_name:
            raise ValueError(
                f"library_name={self.library_name!r}: give the Hub library name, e.g. 'transformers'."
            )
        for name in ("datasets", "tags"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name}={value!r}: give a list of strings, e.g. ['nyu-mll/glue'].")
            setattr(self, name, list(value))
        if not isinstance(self.latency, dict):
            raise ValueError(
                f"latency={self.latency!r}: give a LatencyModel's to_dict() (or nothing), not "
                f"{type(self.latency).__name__}."
            )
        if self.latency:
            from ..allocation.latency_model import LatencyModel

            LatencyModel.from_dict(
                self.latency, "CardInfo.latency"
            )  # checked now, not when the card is written
        for name in ("metrics_before", "metrics_after"):
            metrics = getattr(self, name)
            if not isinstance(metrics, dict) or not all(
                isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
                for k, v in metrics.items()
            ):
                raise ValueError(
                    f"{name}={metrics!r}: give a dict of metric name -> number, e.g. {{'accuracy': 0.9}}."
                )


_NOTES = "_structprune_card_notes"
CARD_FILE = "structprune_card.json"
"""Beside the model card: the card's information as data (the fields that differ from the defaults), so a
model loaded with :func:`structprune.from_pretrained` keeps what its card says when it is saved or pushed
again, and later steps add to it."""
_TEXT_FIELDS = ("base_model", "teacher", "method", "budget", "task", "eval_dataset", "license", "model_name",
                "notes", "vocabulary", "library_name", "usage")  # fmt: skip
_GLUE = "nyu-mll/glue"


def note_card(model: nn.Module, **fields) -> None:
    """Remember on ``model`` (in memory; config.json is not touched) what a structprune step did, so that
    the card :func:`structprune.save_pretrained` writes by default says it: :func:`structprune.compress`
    notes its method and budget, :func:`structprune.distill` its teacher, data and metrics. ``method``
    accumulates over steps, ``datasets`` are merged, other fields replace; ``None`` values are ignored.

    Example::

        note_card(model, method="magnitude scores, global allocation", budget=budget_text(flops=0.5))
    """
    names = {f.name for f in dataclasses.fields(CardInfo)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ValueError(f"Unknown CardInfo field(s) {unknown}; valid: {sorted(names)}.")
    notes = dict(getattr(model, _NOTES, None) or {})
    for name, value in fields.items():
        if value is None:
            continue
        if name == "method" and notes.get("method"):
            value = f"{notes['method']}; then {value}"
        elif name == "datasets":
            value = list(dict.fromkeys([*notes.get("datasets", []), *value]))
        notes[name] = value
    CardInfo(**notes)  # checked now, not when the card is written
    model.__dict__[_NOTES] = notes  # a plain attribute: survives copy.deepcopy, never reaches config.json


def card_record(info: CardInfo) -> dict:
    """The fields of ``info`` that differ from :class:`CardInfo`'s defaults (what :data:`CARD_FILE` holds);
    models named by a local path are named as the card names them (:func:`public_name`)."""
    default = CardInfo()
    record = {
        f.name: getattr(info, f.name)
        for f in dataclasses.fields(CardInfo)
        if getattr(info, f.name) != getattr(default, f.name)
    }
    for name in ("base_model", "teacher"):
        if record.get(name):
            record[name] = public_name(record[name])
    return record


def read_card_record(folder: str | os.PathLike) -> dict | None:
    """The card fields saved in ``folder``'s :data:`CARD_FILE`, validated; None when there is no such file.

    Unknown fields (a newer structprune's) are skipped with a warning; anything else that is not a valid
    :class:`CardInfo` is an error naming the file."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return None
    fix = "fix it, or delete it (only what the model card says is lost) and save the model again"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {fix}.") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds {type(record).__name__}, not a mapping of card fields; {fix}.")
    names = {f.name for f in dataclasses.fields(CardInfo)}
    unknown = sorted(set(record) - names)
    if unknown:
        logger.warning(
            "%s: skipping unknown card field(s) %s (written by another structprune?)", path, unknown
        )
        record = {k: v for k, v in record.items() if k in names}
    for name in _TEXT_FIELDS:
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{path}: {name}={value!r} is not a string; {fix}.")
    try:
        CardInfo(**record)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}; {fix}.") from None
    return record


def restore_card(model: nn.Module, folder: str | os.PathLike) -> None:
    """Put the card fields saved in ``folder`` back on ``model`` (:func:`note_card`'s memory), if any."""
    record = read_card_record(folder)
    if record:
        model.__dict__[_NOTES] = record


def recorded_card(model: nn.Module, explicit: CardInfo | None = None) -> CardInfo:
    """The card information noted on ``model`` by the steps that produced it, with every field that
    ``explicit`` sets (differs from the default) taking precedence."""
    info = CardInfo(**(getattr(model, _NOTES, None) or {}))
    if explicit is None:
        return info
    default = CardInfo()
    given = {
        f.name: getattr(explicit, f.name)
        for f in dataclasses.fields(CardInfo)
        if getattr(explicit, f.name) != getattr(default, f.name)
    }
    return dataclasses.replace(info, **given)


def budget_text(
    flops: float | None = None,
    params: float | None = None,
    seq_len: int = 128,
    *,
    layers: int | None = None,
    hidden: int | None = None,
    latency: float | None = None,
    latency_setting: str | None = None,
) -> str:
    """The budget as a card states it, e.g. ``"50% of encoder FLOPs (seq 128), 4 layers"`` or ``"50% of
    predicted latency (cpu:<processor>, 2 threads, batch 32 x seq 128, ...)"`` (``latency_setting``: the
    latency model's ``setting.describe()``)."""
    parts = []
    if flops is not None:
        parts.append(f"{flops:.0%} of encoder FLOPs (seq {seq_len})")
    if params is not None:
        parts.append(f"{params:.0%} of encoder parameters")
    if latency is not None:
        parts.append(
            f"{latency:.0%} of predicted latency" + (f" ({latency_setting})" if latency_setting else "")
        )
    if layers is not None:
        parts.append(f"{layers} layers")
    if hidden is not None:
        parts.append(f"hidden size {hidden}")
    return ", ".join(parts) or "not recorded"


def dataset_of(task_name: str | None) -> list[str]:
    """Hub dataset ids of a task name: GLUE tasks are ``nyu-mll/glue``; others are not named."""
    from ..data.tasks import GLUE_TASKS

    return [_GLUE] if task_name in GLUE_TASKS else []


@dataclass
class LayerRow:
    """One original encoder layer in the card: what it keeps (nothing when dropped) and what it costs."""

    layer: int
    heads: list[int]
    num_heads: int
    ffn: int
    intermediate_size: int
    params: int
    flops: int

    @property
    def dropped(self) -> bool:
        return not self.heads and self.ffn == 0


def layer_rows(model: nn.Module, seq_len: int = 128) -> list[LayerRow]:
    """One :class:`LayerRow` per original layer, read from ``config.structprune`` and :func:`structprune.cost`."""
    s = view(model).structure
    costs = {lc.layer: lc for lc in cost(model, seq_len).layers}
    kept = dict(zip(s.layers, zip(s.heads, s.ffn, strict=True), strict=True))
    rows = []
    for layer in range(s.num_layers):
        heads, ffn = kept.get(layer, ([], []))
        lc = costs.get(layer)
        rows.append(
            LayerRow(
                layer,
                list(heads),
                s.num_heads,
                len(ffn),
                s.intermediate_size,
                lc.params if lc else 0,
                lc.flops if lc else 0,
            )
        )
    return rows


def kept_heads_matrix(rows: list[LayerRow]) -> torch.Tensor:
    """``bool[layers, heads]``: which original heads each original layer keeps (the heatmap's left panel)."""
    out = torch.zeros(len(rows), rows[0].num_heads if rows else 0, dtype=torch.bool)
    for i, row in enumerate(rows):
        out[i, row.heads] = True
    return out


def render_heatmap(rows: list[LayerRow], path: str | os.PathLike) -> Path:
    """Draw kept heads (grid) and kept FFN neurons (bars) per layer into a PNG at ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    grid = kept_heads_matrix(rows).float().numpy()
    ffn = [row.ffn / max(row.intermediate_size, 1) for row in rows]
    n = len(rows)
    fig = Figure(figsize=(9, 1.2 + 0.38 * n), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(grid.shape[1], 1), 6]}, sharey=True)
    left.imshow(grid, cmap=ListedColormap(["#e8e8e8", "#1f77b4"]), vmin=0, vmax=1, aspect="auto")
    left.set_xticks(range(grid.shape[1]))
    left.set_yticks(range(n), [f"layer {r.layer}" + (" (dropped)" if r.dropped else "") for r in rows])
    left.set_xlabel("attention head (blue = kept)")
    left.set_xticks([x - 0.5 for x in range(grid.shape[1] + 1)], minor=True)
    left.set_yticks([y - 0.5 for y in range(n + 1)], minor=True)
    left.grid(which="minor", color="white", linewidth=1)
    left.tick_params(which="minor", length=0)
    right.barh(range(n), ffn, color="#ff7f0e")
    right.set_xlim(0, 1)
    right.set_xlabel("FFN neurons kept (fraction)")
    for y, row in enumerate(rows):
        right.text(min(ffn[y], 0.98) + 0.01, y, f"{row.ffn}/{row.intermediate_size}", va="center", fontsize=8)
    fig.suptitle("What the pruned model keeps, per original layer")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


def _fmt(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:g}"


_LOCAL = "a local model ("


def _hub_id(name: str | None) -> str | None:
    return name if name and _HUB_ID.match(name) and not os.path.exists(name) else None


def public_name(name: str | None) -> str | None:
    """How a model is named on a card: a Hub id as it is; a local folder by its last component only (a
    card is published, an absolute path of the machine it was made on is not)."""
    if not name:
        return None
    if _hub_id(name) or (name.startswith(_LOCAL) and name.endswith(")")):  # already public
        return name
    return f"{_LOCAL}{Path(name).name or name})"


def card_data(model: nn.Module, info: CardInfo) -> ModelCardData:
    """The Hub metadata block of the card."""
    base = (
        _hub_id(info.base_model)
        or _hub_id(info.teacher)
        or _hub_id(getattr(model.config, "_name_or_path", None))
    )
    family = base_model_type(model.config)
    eval_results = None
    if info.metrics_after:
        dataset = info.datasets[0] if info.datasets else (info.eval_dataset or "unknown")  # a Hub dataset id
        eval_results = [
            EvalResult(
                task_type=info.task or "text-classification",
                dataset_type=dataset,
                dataset_name=info.eval_dataset or dataset,
                metric_type=name,
                metric_value=float(value),
            )
            for name, value in info.metrics_after.items()
        ]
    return ModelCardData(
        base_model=base,
        library_name=info.library_name,
        pipeline_tag=info.task,
        license=info.license,
        datasets=info.datasets or None,
        metrics=sorted(info.metrics_after) or None,
        tags=["structprune", "pruned", "structured-pruning", family, *info.tags],
        model_name=info.model_name or "pruned-model",
        eval_results=eval_results,
    )


def _how_to_load(stock: bool) -> str:
    if stock:
        return (
            "Every kept layer has all its heads and one FFN width, so this is a stock transformers checkpoint:\n\n"
            "```python\nfrom transformers import AutoModel  # or the AutoModelFor... of its task\n"
            'model = AutoModel.from_pretrained("<this folder or repo>")\n```\n'
        )
    return (
        "Layers keep different numbers of heads and FFN neurons, which config.json records under `structprune`.\n\n"
        "```python\n# with structprune installed (never runs code from the checkpoint)\nimport structprune\n"
        'model = structprune.from_pretrained("<this folder or repo>")\n\n'
        "# without structprune: transformers runs the bundled modeling_structprune.py (torch + transformers only)\n"
        "from transformers import AutoModelForSequenceClassification  # or the Auto class of its task\n"
        'model = AutoModelForSequenceClassification.from_pretrained("<this folder or repo>", trust_remote_code=True)\n'
        "```\n"
    )


def card_text(
    model: nn.Module, info: CardInfo, rows: list[LayerRow] | None = None, *, heatmap: bool = True
) -> str:
    """The README.md text (metadata block + body) for ``model``. ``heatmap=False``: the card says how to
    get the ``structure.png`` picture instead of showing it (matplotlib was not installed)."""
    rows = rows if rows is not None else layer_rows(model, info.seq_len)
    v = view(model)
    s = v.structure
    now, dense = cost(model, info.seq_len), dense_cost(model, info.seq_len)
    data = card_data(model, info)
    source = public_name(info.base_model or getattr(model.config, "_name_or_path", None) or None)
    teacher = public_name(info.teacher) or (f"none (pruned from {source})" if source else "not recorded")
    lines = [f"# {data.model_name}", ""]
    source = (
        f"[{data.base_model}](https://huggingface.co/{data.base_model})"
        if data.base_model
        else "its base model"
    )
    lines += [
        f"Structurally pruned from {source} with [structprune](https://github.com/structprune/structprune):",
        "",
    ]
    lines += [
        "| | |",
        "|---|---|",
        f"| Teacher | {teacher} |",
        f"| Method | {info.method or 'not recorded'} |",
        f"| Budget | {info.budget or 'not recorded'} |",
        *([f"| Vocabulary | {info.vocabulary} |"] if info.vocabulary else []),
        f"| Layers kept | {len(s.layers)} of {s.num_layers} |",
        f"| Heads kept | {sum(s.heads_per_layer)} of {s.num_layers * s.num_heads} |",
        f"| FFN neurons kept | {sum(s.ffn_per_layer)} of {s.num_layers * s.intermediate_size} |",
        *(
            [f"| Hidden size (residual stream) | {len(s.hidden)} of {s.hidden_size} |"]
            if getattr(s, "hidden", None) is not None
            else []
        ),
        "",
        "## Size",
        "",
        "| | before | after | after / before |",
        "|---|---:|---:|---:|",
        f"| Parameters (total) | {_fmt(dense.total_params)} | {_fmt(now.total_params)} | "
        f"{now.total_params / dense.total_params:.1%} |",
        f"| Encoder parameters | {_fmt(dense.encoder_params)} | {_fmt(now.encoder_params)} | "
        f"{now.encoder_params / dense.encoder_params:.1%} |",
        f"| Encoder FLOPs (one sequence of {info.seq_len} tokens) | {_fmt(dense.encoder_flops)} | "
        f"{_fmt(now.encoder_flops)} | {now.encoder_flops / dense.encoder_flops:.1%} |",
        "",
    ]
    lines += latency_lines(model, info.latency)
    if info.metrics_before or info.metrics_after:
        where = f" on {info.eval_dataset}" if info.eval_dataset else ""
        lines += [f"## Metrics{where}", "", "| metric | before | after |", "|---|---:|---:|"]
        for name in dict.fromkeys([*info.metrics_before, *info.metrics_after]):
            before, after = info.metrics_before.get(name), info.metrics_after.get(name)
            lines.append(
                f"| {name} | {'' if before is None else f'{before:.4g}'} | {'' if after is None else f'{after:.4g}'} |"
            )
        lines.append("")
    lines += [
        "## Kept per layer",
        "",
        f"![Heads and FFN neurons kept per layer]({HEATMAP_FILE})"
        if heatmap
        else f"(The heatmap `{HEATMAP_FILE}` of kept heads and neurons was not drawn: it needs matplotlib, "
        f"`{CARD_EXTRA_HINT}`.)",
        "",
        "| layer | heads kept | head ids | FFN neurons kept | parameters | FLOPs |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        if r.dropped:
            lines.append(f"| {r.layer} | 0/{r.num_heads} | dropped | 0/{r.intermediate_size} | 0 | 0 |")
        else:
            ids = ", ".join(map(str, r.heads)) or "none"
            lines.append(
                f"| {r.layer} | {len(r.heads)}/{r.num_heads} | {ids} | {r.ffn}/{r.intermediate_size} | "
                f"{_fmt(r.params)} | {_fmt(r.flops)} |"
            )
    lines += ["", "## How to load", "", info.usage or _how_to_load(is_stock(s, v.spec))]
    if info.notes:
        lines += ["## Notes", "", info.notes, ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def latency_lines(model: nn.Module, latency: dict) -> list[str]:
    """The card's "Latency" section: the predicted latency before and after under the recorded latency
    model, its setting, and the model itself as JSON (``structprune.LatencyModel.from_card`` reads it)."""
    if not latency:
        return []
    import json

    from ..allocation.latency_model import LatencyModel

    lm = LatencyModel.from_dict(latency, "the card's latency model")
    lines = ["## Latency", "", f"Predicted by a latency model measured on {lm.setting.describe()}:", ""]
    try:
        after = lm.predict(model)
        lines += [
            "| | before | after | after / before |",
            "|---|---:|---:|---:|",
            f"| Predicted latency (ms) | {lm.dense_ms:.2f} | {after:.2f} | {after / lm.dense_ms:.1%} |",
        ]
    except ValueError as err:  # e.g. hidden dimensions pruned after the latency budget was met
        lines.append(f"(not predicted for this model: {err})")
    return lines + [
        "",
        "<details><summary>Latency model (structprune.LatencyModel JSON)</summary>",
        "",
        "```json",
        json.dumps(lm.to_dict(), indent=1),
        "```",
        "",
        "</details>",
        "",
    ]


def write_model_card(model: nn.Module, folder: str | os.PathLike, info: CardInfo | None = None) -> Path:
    """Write ``README.md`` and ``structure.png`` for ``model`` into ``folder``; return the README path.

    The picture needs matplotlib (the ``card`` extra); without it the card is written without the picture
    and says how to get it.

    Example::

        sp.checkpoint.write_model_card(model, "out/pruned", sp.CardInfo(base_model="org/teacher", budget="50% FLOPs"))
    """
    info = info or CardInfo()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = layer_rows(model, info.seq_len)
    try:
        render_heatmap(rows, folder / HEATMAP_FILE)
        heatmap = True
    except ImportError:  # matplotlib is optional: saving never depends on it
        logger.info(
            "matplotlib is not installed: the model card has no %s (%s)", HEATMAP_FILE, CARD_EXTRA_HINT
        )
        heatmap = False
    card = ModelCard(card_text(model, info, rows, heatmap=heatmap))  # parses and checks the metadata block
    readme = folder / "README.md"
    card.save(readme)
    return readme
