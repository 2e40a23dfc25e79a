"""The GLUE task table (text columns, label count, metrics) and custom tasks for a user's own data."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["GLUE_TASKS", "TaskInfo", "get_task", "glue_task_names"]

_METRIC_NAMES = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr", "combined_score")


@dataclass(frozen=True)
class TaskInfo:
    """What the data and metric code needs to know about a sentence(-pair) classification/regression task.

    Example::

        task = get_task("mrpc")
        task.text_keys  # ('sentence1', 'sentence2')
        task.metrics  # ('f1', 'accuracy')
    """

    name: str = field(metadata={"help": "Canonical task name, e.g. 'sst2' (the nyu-mll/glue config name)."})
    text_keys: tuple[str, ...] = field(metadata={"help": "One or two text column names."})
    num_labels: int = field(metadata={"help": "Number of classes; 1 means regression."})
    metrics: tuple[str, ...] = field(
        default=("accuracy",), metadata={"help": f"Metrics reported, from {_METRIC_NAMES}."}
    )
    main_metric: str = field(
        default="accuracy", metadata={"help": "Metric used to pick the best checkpoint."}
    )
    label_column: str = field(default="label", metadata={"help": "Column holding the label."})
    validation_splits: tuple[str, ...] = field(
        default=("validation",), metadata={"help": "Splits to evaluate on (MNLI has two)."}
    )
    dir_name: str | None = field(
        default=None,
        metadata={"help": "Folder name in the local GLUE layout (e.g. 'SST-2'); None for custom."},
    )
    hub_config: str | None = field(
        default=None, metadata={"help": "Config name of `nyu-mll/glue` on the Hub; None for custom tasks."}
    )
    label_names: tuple[str, ...] | None = field(
        default=None, metadata={"help": "Class names, index = label."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.text_keys, str):
            object.__setattr__(self, "text_keys", (self.text_keys,))
        object.__setattr__(self, "text_keys", tuple(self.text_keys))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "validation_splits", tuple(self.validation_splits))
        if not self.name:
            raise ValueError("TaskInfo.name must be a non-empty string, e.g. 'my-task'.")
        if len(self.text_keys) not in (1, 2) or not all(isinstance(k, str) and k for k in self.text_keys):
            raise ValueError(
                f"TaskInfo.text_keys must be one or two column names (single sentence or a pair), "
                f"got {self.text_keys!r}."
            )
        if not isinstance(self.num_labels, int) or self.num_labels < 1:
            raise ValueError(
                f"TaskInfo.num_labels must be an int >= 1 (1 = regression), got {self.num_labels!r}."
            )
        if self.num_labels == 1 and self.label_names is not None:
            raise ValueError("A regression task (num_labels=1) has no label_names; pass label_names=None.")
        if self.label_names is not None and len(self.label_names) != self.num_labels:
            raise ValueError(
                f"TaskInfo.label_names has {len(self.label_names)} names but num_labels={self.num_labels}."
            )
        unknown = [m for m in self.metrics if m not in _METRIC_NAMES]
        if unknown or not self.metrics:
            raise ValueError(
                f"TaskInfo.metrics {self.metrics!r} must be a non-empty subset of {_METRIC_NAMES}."
            )
        regression_only = {"pearson", "spearmanr"}
        if self.num_labels == 1 and not set(self.metrics) <= regression_only | {"combined_score"}:
            raise ValueError(
                f"Regression task {self.name!r} (num_labels=1) can only report pearson/spearmanr/combined_score, "
                f"got {self.metrics!r}."
            )
        if self.num_labels > 1 and set(self.metrics) & regression_only:
            raise ValueError(
                f"Classification task {self.name!r} cannot report {sorted(set(self.metrics) & regression_only)}; "
                "set num_labels=1 for a regression task."
            )
        if self.num_labels > 2 and "f1" in self.metrics:
            raise ValueError(f"Metric 'f1' (binary F1 of class 1) needs num_labels=2, got {self.num_labels}.")
        if self.main_metric not in self.metrics:
            raise ValueError(
                f"TaskInfo.main_metric {self.main_metric!r} must be one of its metrics {self.metrics!r}."
            )
        if not self.validation_splits:
            raise ValueError("TaskInfo.validation_splits must name at least one split, e.g. ('validation',).")

    @property
    def is_regression(self) -> bool:
        """True when the task predicts one real number (num_labels == 1), like STS-B."""
        return self.num_labels == 1

    @property
    def is_pair(self) -> bool:
        """True when each example is a pair of texts (e.g. MRPC, RTE)."""
        return len(self.text_keys) == 2

    def label_maps(self) -> dict:
        """``id2label``/``label2id`` from the task's label names (empty for regression or unnamed labels),
        as ``from_pretrained(..., **task.label_maps())`` takes them.

        Example::

            get_task("sst2").label_maps()  # {"id2label": {0: "negative", 1: "positive"}, "label2id": {...}}
        """
        if self.is_regression or not self.label_names:
            return {}
        names = list(self.label_names)
        return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}

    def name_labels(self, config) -> bool:
        """Give a model config the task's label names where it only has transformers' placeholders
        (``LABEL_0``, ``LABEL_1``, ...) for as many classes; names someone chose are left alone. Returns
        whether anything changed."""
        maps = self.label_maps()
        current = getattr(config, "id2label", None) or {}
        placeholders = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if not maps or {int(k): v for k, v in current.items()} != placeholders:
            return False
        config.id2label, config.label2id = maps["id2label"], maps["label2id"]
        return True

    def main_score(self, metrics: dict[str, float]) -> float:
        """The number that ranks checkpoints: `metrics[main_metric]`, or for per-split results (keys like
        "validation_matched/accuracy", as `evaluate` returns for a dict of loaders) that of the first
        validation split.

        Example::

            get_task("mrpc").main_score({"f1": 0.88, "accuracy": 0.84})  # 0.88
            get_task("mnli").main_score({"validation_matched/accuracy": 0.8, "validation_mismatched/accuracy": 0.81})
        """
        candidates = [self.main_metric] + [f"{s}/{self.main_metric}" for s in self.validation_splits]
        for key in candidates:
            if key in metrics:
                return float(metrics[key])
        prefixed = sorted(k for k in metrics if k.endswith(f"/{self.main_metric}"))
        if prefixed:
            return float(metrics[prefixed[0]])
        raise KeyError(
            f"Task {self.name!r} ranks by {self.main_metric!r}, which is not among the metrics {sorted(metrics)}."
        )

    @classmethod
    def custom(
        cls,
        name: str = "custom",
        text_keys: tuple[str, ...] | str = ("text",),
        num_labels: int = 2,
        label_column: str = "label",
        metrics: tuple[str, ...] | None = None,
        main_metric: str | None = None,
        label_names: tuple[str, ...] | None = None,
    ) -> TaskInfo:
        """A task for your own CSV/JSON data; metrics default to accuracy (+F1 for 2 classes) or Pearson/Spearman.

        Example::

            task = TaskInfo.custom("reviews", text_keys="review", num_labels=3, label_column="stars")
            ds = load_split(task, "data/reviews_train.csv")
        """
        if metrics is None:
            if num_labels == 1:
                metrics = ("pearson", "spearmanr")
            elif num_labels == 2:
                metrics = ("accuracy", "f1")
            else:
                metrics = ("accuracy",)
        return cls(
            name=name,
            text_keys=(text_keys,) if isinstance(text_keys, str) else tuple(text_keys),
            num_labels=num_labels,
            metrics=tuple(metrics),
            main_metric=main_metric or metrics[0],
            label_column=label_column,
            label_names=tuple(label_names) if label_names is not None else None,
        )


def _glue(name: str, dir_name: str, text_keys: tuple[str, ...], num_labels: int, metrics, main, labels, **kw):
    return TaskInfo(
        name=name,
        text_keys=text_keys,
        num_labels=num_labels,
        metrics=metrics,
        main_metric=main,
        dir_name=dir_name,
        hub_config=name,
        label_names=labels,
        **kw,
    )


# Label conventions of the HF `nyu-mll/glue` dataset. Official GLUE metrics (Wang et al., 2019).
GLUE_TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        _glue(
            "cola",
            "CoLA",
            ("sentence",),
            2,
            ("matthews_correlation",),
            "matthews_correlation",
            ("unacceptable", "acceptable"),
        ),
        _glue("sst2", "SST-2", ("sentence",), 2, ("accuracy",), "accuracy", ("negative", "positive")),
        _glue(
            "mrpc",
            "MRPC",
            ("sentence1", "sentence2"),
            2,
            ("f1", "accuracy"),
            "f1",
            ("not_equivalent", "equivalent"),
        ),
        _glue("stsb", "STS-B", ("sentence1", "sentence2"), 1, ("pearson", "spearmanr"), "pearson", None),
        _glue(
            "qqp",
            "QQP",
            ("question1", "question2"),
            2,
            ("f1", "accuracy"),
            "f1",
            ("not_duplicate", "duplicate"),
        ),
        _glue(
            "mnli",
            "MNLI",
            ("premise", "hypothesis"),
            3,
            ("accuracy",),
            "accuracy",
            ("entailment", "neutral", "contradiction"),
            validation_splits=("validation_matched", "validation_mismatched"),
        ),
        _glue(
            "qnli",
            "QNLI",
            ("question", "sentence"),
            2,
            ("accuracy",),
            "accuracy",
            ("entailment", "not_entailment"),
        ),
        _glue(
            "rte",
            "RTE",
            ("sentence1", "sentence2"),
            2,
            ("accuracy",),
            "accuracy",
            ("entailment", "not_entailment"),
        ),
        _glue(
            "wnli",
            "WNLI",
            ("sentence1", "sentence2"),
            2,
            ("accuracy",),
            "accuracy",
            ("not_entailment", "entailment"),
        ),
    )
}

_ALIASES = {"stsbenchmark": "stsb", "mnlim": "mnli", "mnlimm": "mnli"}


def _normalize(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def glue_task_names() -> list[str]:
    """Canonical names of the nine GLUE tasks.

    Example::

        glue_task_names()  # ['cola', 'sst2', 'mrpc', 'stsb', 'qqp', 'mnli', 'qnli', 'rte', 'wnli']
    """
    return list(GLUE_TASKS)


def get_task(name: str | TaskInfo | Mapping) -> TaskInfo:
    """Look up a GLUE task by name, case- and dash-insensitively ("SST-2", "sst2", "Sst_2" all work).

    A `TaskInfo` passes through unchanged, so functions can accept either; a dict is given to
    `TaskInfo.custom` (for your own data described in a recipe).

    Example::

        get_task("STS-B").is_regression  # True
        get_task("mnli").validation_splits  # ('validation_matched', 'validation_mismatched')
    """
    if isinstance(name, TaskInfo):
        return name
    if isinstance(name, Mapping):  # e.g. a recipe's `task: {text_keys: [review], num_labels: 3}`
        valid = set(inspect.signature(TaskInfo.custom).parameters) - {"cls"}
        unknown = sorted(set(name) - valid)
        if unknown:
            raise ValueError(f"Unknown task field(s) {unknown}; valid fields: {sorted(valid)}.")
        return TaskInfo.custom(**name)
    if not isinstance(name, str):
        raise TypeError(
            f"get_task expects a task name (str), a TaskInfo or a dict of TaskInfo.custom fields, "
            f"got {type(name).__name__}."
        )
    key = _normalize(name)
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ValueError(
            f"Unknown task {name!r}. GLUE tasks: {', '.join(GLUE_TASKS)} (case and dashes are ignored). "
            "For your own data use TaskInfo.custom(text_keys=..., num_labels=..., label_column=...)."
        )
    return GLUE_TASKS[key]
