"""`DistillConfig`: every option of the training loop (fine-tuning, distillation, gradual pruning)."""

from __future__ import annotations

import math
import os
from dataclasses import InitVar, asdict, dataclass, field
from typing import ClassVar

from accelerate.utils import LoggerType

from ...options import FromDict
from ...scoring import available_scorers
from ...scoring.embedding import EMBEDDING_LOSSES

MIXED_PRECISION = ("no", "bf16", "fp16")

TRACKERS = tuple(t.value for t in LoggerType if t is not LoggerType.ALL)
"""The trackers ``report_to`` may name: Accelerate's (tensorboard, wandb, mlflow, comet_ml, ...)."""


def report_targets(report_to) -> list[str]:
    """``report_to`` as a list of words: ``['auto']``, ``['all']``, ``[]`` (none) or tracker names.

    Takes a string (``'wandb'``, or ``'tensorboard,wandb'`` as the command line gives it) or a list of
    strings; anything else, or a name that is not a tracker, is a ValueError listing the valid names.
    """
    if isinstance(report_to, str):
        words = [w.strip() for w in report_to.split(",") if w.strip()]
    elif isinstance(report_to, list | tuple) and all(isinstance(w, str) for w in report_to):
        words = [w.strip() for w in report_to]
    else:
        raise ValueError(f"report_to must be a string or a list of tracker names, got {report_to!r}.")
    words = list(dict.fromkeys(words))
    valid = f"'auto', 'all', 'none', or tracker names among {', '.join(TRACKERS)}"
    unknown = [w for w in words if w not in (*TRACKERS, "auto", "all", "none")]
    if unknown:
        raise ValueError(f"report_to: unknown tracker(s) {unknown}; use {valid}.")
    for word in ("auto", "all", "none"):
        if word in words and len(words) > 1:
            raise ValueError(f"report_to: {word!r} stands alone, got {words}; use {valid}.")
    return [] if words == ["none"] else words


@dataclass
class DistillStage(FromDict):
    """One stage of a staged (TinyBERT-style) distillation: how long it runs and which loss terms it uses.

    The default two stages are TinyBERT's: an *intermediate* stage that matches hidden states (embedding
    output included, through the layer map) and attention maps on the kept heads, then a *prediction*
    stage on the logits (and the task loss). Each stage restarts the learning-rate schedule (warmup, then
    linear decay to 0 at its end); the best checkpoint is only kept in the last stage.

    Example::

        cfg = DistillConfig(task="mrpc", stages=[
            DistillStage("intermediate", num_epochs=10, hidden_weight=1.0, attention_weight=1.0),
            DistillStage("prediction", num_epochs=3, logit_weight=1.0, task_weight=0.0),
        ])
    """

    options_name: ClassVar[str] = "stage"

    name: str = field(default="stage", metadata={"help": "Name shown in the logs."})
    num_epochs: float = field(default=1.0, metadata={"help": "Epochs over train_data in this stage."})
    task_weight: float = field(default=0.0, metadata={"help": "Weight of the task loss (labels)."})
    logit_weight: float = field(default=0.0, metadata={"help": "Weight of logit KD."})
    hidden_weight: float = field(
        default=0.0, metadata={"help": "Weight of hidden-state MSE (embeddings included)."}
    )
    attention_weight: float = field(default=0.0, metadata={"help": "Weight of attention KD (kept heads)."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate (None: the config's)."}
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps in this stage; overrides num_epochs when set."}
    )

    def __post_init__(self):
        if not (
            isinstance(self.num_epochs, int | float)
            and math.isfinite(self.num_epochs)
            and self.num_epochs > 0
        ):
            raise ValueError(f"stage {self.name!r}: num_epochs must be > 0, got {self.num_epochs!r}.")
        if self.max_steps is not None and (
            isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1
        ):
            raise ValueError(
                f"stage {self.name!r}: max_steps must be an integer >= 1, got {self.max_steps!r}."
            )
        weights = ("task_weight", "logit_weight", "hidden_weight", "attention_weight")
        for w in weights:
            v = getattr(self, w)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"stage {self.name!r}: {w} must be a finite number >= 0, got {v!r}.")
        if not any(getattr(self, w) > 0 for w in weights):
            raise ValueError(f"stage {self.name!r} has every loss weight at 0; give it at least one term.")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"stage {self.name!r}: learning_rate must be > 0, got {self.learning_rate!r}.")

    def steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps this stage runs: ``max_steps``, else ``num_epochs`` epochs (at least one step)."""
        return self.max_steps or max(1, math.ceil(self.num_epochs * steps_per_epoch))

    @property
    def uses_hidden(self) -> bool:
        return self.hidden_weight > 0

    @property
    def uses_attention(self) -> bool:
        return self.attention_weight > 0


def tinybert_stages(intermediate_epochs: float, prediction_epochs: float, *, task_weight: float = 0.0,
                    attention: bool = True) -> list[DistillStage]:  # fmt: skip
    """TinyBERT's two stages: hidden states (+ attention) first, then the logits (+ ``task_weight`` x task)."""
    return [
        DistillStage(
            "intermediate", intermediate_epochs, hidden_weight=1.0, attention_weight=1.0 if attention else 0.0
        ),
        DistillStage("prediction", prediction_epochs, logit_weight=1.0, task_weight=task_weight),
    ]


@dataclass
class PruneSchedule(FromDict):
    """Gradual pruning inside the training loop: ``steps`` pruning events between ``start`` and ``end``
    (fractions of training), on a cubic schedule from the student's current size down to ``to`` of the
    unpruned model's encoder FLOPs; at each event the student is re-scored on ``batches`` training
    batches with ``method`` and physically pruned, and the optimizer is rebuilt. With ``layers`` and/or
    ``hidden`` the depth and the residual width shrink on the same schedule (CoFi-style), reaching
    exactly those sizes at the last event; the layer map follows the kept layers.

    Example::

        cfg = DistillConfig(output_dir="runs/sst2-25", task="sst2", prune=PruneSchedule(to=0.25, steps=4))
        cfg = DistillConfig(prune={"to": 0.25, "steps": 4})      # the same, as a recipe writes it
    """

    options_name: ClassVar[str] = "prune"

    to: float = field(default=0.5, metadata={"help": "Target fraction of the unpruned encoder FLOPs."})
    steps: int = field(default=4, metadata={"help": "Number of pruning events."})
    start: float = field(default=0.0, metadata={"help": "Fraction of training at the first event."})
    end: float = field(default=0.5, metadata={"help": "Fraction of training at the last event."})
    method: str = field(default="taylor", metadata={"help": "Importance scorer between events."})
    batches: int = field(default=8, metadata={"help": "Training batches used to score at each event."})
    seq_len: int = field(default=128, metadata={"help": "Sequence length of the FLOPs budget."})
    multiple_of: int = field(default=1, metadata={"help": "Round FFN widths to this multiple."})
    min_heads: int = field(default=1, metadata={"help": "Heads every kept layer keeps."})
    layers: int | None = field(
        default=None, metadata={"help": "Target depth, reached gradually (None: keep every layer)."}
    )
    hidden: int | None = field(
        default=None, metadata={"help": "Target hidden size, reached gradually (None: keep it)."}
    )

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(msg)

        for name in ("layers", "hidden"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                 f"prune.{name} must be a positive integer or None, got {v!r}.")  # fmt: skip
        need(0 < self.to < 1, f"prune.to is a FLOPs fraction in (0, 1), got {self.to}.")
        need(self.steps >= 1, f"prune.steps must be >= 1, got {self.steps}.")
        need(
            0 <= self.start <= self.end <= 1,
            f"Need 0 <= prune.start <= prune.end <= 1, got {self.start} and {self.end}.",
        )
        need(
            self.method in available_scorers(),
            f"prune.method must be one of {available_scorers()}, got {self.method!r}.",
        )
        need(self.batches >= 1, f"prune.batches must be >= 1, got {self.batches}.")
        need(self.seq_len >= 1, f"prune.seq_len must be >= 1, got {self.seq_len}.")
        need(self.multiple_of >= 1, f"prune.multiple_of must be >= 1, got {self.multiple_of}.")
        need(self.min_heads >= 0, f"prune.min_heads must be >= 0, got {self.min_heads}.")


@dataclass
class DistillConfig(FromDict):
    """Options of :func:`structprune.distill` and :func:`structprune.finetune` (one loop for both).

    The loss is ``task_weight * task + logit_weight * KD(T) + hidden_weight * hidden MSE +
    attention_weight * attention KL``; any weight may be 0 (with no teacher only the task term runs). For an
    embedding model (:class:`structprune.sentence.SentenceEncoder`) the output term compares sentence
    embeddings by ``embedding_loss`` instead of logits.
    Setting ``prune`` (a :class:`PruneSchedule`) turns on gradual pruning while the student learns.

    Example::

        cfg = DistillConfig(output_dir="runs/sst2", task="sst2", num_epochs=3, hidden_weight=1.0)
        student, history = sp.distill(student, teacher, train_dl, eval_dl, config=cfg)

    The names of :class:`transformers.TrainingArguments` are taken too, as keywords and in
    :meth:`from_dict`; the config records (``to_dict``, ``run.json``, the command line) only its own:

    ==============================  ==========================================================
    TrainingArguments               DistillConfig
    ==============================  ==========================================================
    ``num_train_epochs``            ``num_epochs``
    ``save_steps``                  ``save_every``
    ``eval_steps``                  ``eval_every``
    ``logging_steps``               ``log_every``
    ``resume_from_checkpoint``      ``resume_from`` (a path; ``True`` means ``'latest'``)
    ``load_best_model_at_end``      ``load_best_at_end``
    ``bf16=True`` / ``fp16=True``   ``mixed_precision='bf16'`` / ``'fp16'`` (``False``: no-op)
    ==============================  ==========================================================

    A name and its alias given together must agree (``num_train_epochs=2, num_epochs=3`` is a
    ValueError; ``dataclasses.replace`` takes the names on the right). Some TrainingArguments have no
    counterpart here on purpose (``per_device_train_batch_size``: the batch size is the DataLoader's);
    passing one says why.

    ``report_to`` works as TrainingArguments' does: ``'none'``, ``'all'`` (every installed tracker), a
    tracker name of Accelerate (``'tensorboard'``, ``'wandb'``, ``'mlflow'``, ``'comet_ml'``, ...) or a
    list of them; the default ``'auto'`` is tensorboard when it is installed, else nothing. A named
    tracker that is not installed stops the run before it starts, naming the ``pip install``; tensorboard
    (and aim) write under ``output_dir`` and need one (``'auto'`` and ``'all'`` skip them without it).
    ``metrics.jsonl`` is written in the run folder whatever ``report_to`` says.
    """

    options_name: ClassVar[str] = "DistillConfig"
    aliases: ClassVar[dict[str, str]] = {
        "num_train_epochs": "num_epochs",
        "save_steps": "save_every",
        "eval_steps": "eval_every",
        "logging_steps": "log_every",
        "resume_from_checkpoint": "resume_from",
        "load_best_model_at_end": "load_best_at_end",
        "bf16": "mixed_precision",
        "fp16": "mixed_precision",
    }
    not_taken: ClassVar[dict[str, str]] = {
        "per_device_train_batch_size": "the batch size is the DataLoader's (DataLoader(data, batch_size=N)).",
        "per_device_eval_batch_size": "the batch size is the DataLoader's (DataLoader(data, batch_size=N)).",
        "eval_strategy": "evaluation runs every eval_every steps (None: at the end of each epoch).",
        "evaluation_strategy": "evaluation runs every eval_every steps (None: at the end of each epoch).",
        "save_strategy": "checkpoints are saved every save_every steps (None: none).",
        "logging_strategy": "training losses are logged every log_every steps.",
        "lr_scheduler_type": "the schedule is linear warmup (warmup_ratio) then linear decay to 0.",
        "warmup_steps": "warmup is warmup_ratio, a fraction of the optimizer steps.",
        "optim": "the optimizer is AdamW (learning_rate, weight_decay).",
        "metric_for_best_model": "the best model is the one with the best main metric of the task.",
        "disable_tqdm": "use progress=False.",
        "overwrite_output_dir": "use overwrite=True.",
    }

    # --- run folder, checkpoints, logging ---------------------------------------------------------
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Run folder: metrics.jsonl, checkpoints/, best/. None keeps everything in memory."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace a previous run in output_dir."})
    resume_from: str | None = field(
        default=None,
        metadata={"help": "Checkpoint folder to continue from, or 'latest' (newest one in output_dir)."},
    )
    save_every: int | None = field(
        default=None, metadata={"help": "Save an accelerate checkpoint every N optimizer steps."}
    )
    save_total_limit: int = field(default=2, metadata={"help": "Number of step checkpoints kept."})
    log_every: int = field(default=10, metadata={"help": "Log training losses every N optimizer steps."})
    report_to: str | list[str] = field(
        default="auto",
        metadata={
            "help": "Trackers: 'auto' (tensorboard if installed), 'all' (every installed one), 'none', or "
            f"names among {', '.join(TRACKERS)} (comma-separated); metrics.jsonl is always written."
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (main process only)."})

    # --- task and evaluation ----------------------------------------------------------------------
    task: str | None = field(
        default=None, metadata={"help": "GLUE task name (metrics of eval_data, e.g. 'sst2')."}
    )
    eval_every: int | None = field(
        default=None, metadata={"help": "Evaluate every N optimizer steps (default: end of each epoch)."}
    )
    load_best_at_end: bool = field(
        default=True, metadata={"help": "Return the weights with the best eval main metric."}
    )

    # --- optimisation -----------------------------------------------------------------------------
    num_epochs: float = field(default=3.0, metadata={"help": "Epochs over train_data."})
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps (overrides num_epochs)."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases/norms)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of steps of linear warmup."})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Gradient clipping; None = off."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    mixed_precision: str = field(
        default="no", metadata={"help": "'no', 'bf16' or 'fp16' (fp16/bf16 need hardware support)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of weights init, dropout and data order."})

    # --- distillation terms -----------------------------------------------------------------------
    task_weight: float = field(default=1.0, metadata={"help": "Weight of the task loss (labels)."})
    logit_weight: float = field(default=1.0, metadata={"help": "Weight of logit KD (KL at T, x T^2)."})
    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of logit KD."})
    embedding_loss: str = field(
        default="mse",
        metadata={
            "help": "For an embedding model (a SentenceTransformer), how the output term (logit_weight) matches the "
            "teacher's sentence embeddings: 'mse' (the sentence-transformers distillation recipe) or 'cosine' (1 - cos)."
        },
    )
    hidden_weight: float = field(default=0.0, metadata={"help": "Weight of hidden-state MSE."})
    attention_weight: float = field(default=0.0, metadata={"help": "Weight of attention KD (kept heads)."})
    layer_map: list[int] | None = field(
        default=None,
        metadata={
            "help": "Teacher layer of each student layer (0-based). None: read from the pruned student's "
            "config.structprune."
        },
    )

    stages: list[DistillStage] | None = field(
        default=None,
        metadata={
            "help": "Staged distillation (TinyBERT): DistillStage objects or dicts, run in order; their epochs "
            "replace num_epochs and their weights the loss weights above. None = one stage."
        },
    )

    # --- gradual pruning --------------------------------------------------------------------------
    prune: PruneSchedule | None = field(
        default=None,
        metadata={
            "help": "Gradual pruning while training (a PruneSchedule, or a dict of its options); None = off."
        },
    )

    # --- TrainingArguments spellings (aliases above): they set the field and are never stored; read on a
    # config they give None (dataclasses.replace relies on that), so read the field instead. --------------
    num_train_epochs: InitVar[float | None] = None
    save_steps: InitVar[int | None] = None
    eval_steps: InitVar[int | None] = None
    logging_steps: InitVar[int | None] = None
    resume_from_checkpoint: InitVar[str | bool | None] = None
    load_best_model_at_end: InitVar[bool | None] = None
    bf16: InitVar[bool | None] = None
    fp16: InitVar[bool | None] = None

    @classmethod
    def alias_value(cls, alias: str, value):
        if alias in ("bf16", "fp16"):
            if not isinstance(value, bool):
                raise ValueError(f"{alias} must be True or False, got {value!r}.")
            return alias if value else None
        if alias == "resume_from_checkpoint":
            if value is True:
                return "latest"
            if value is False:
                return None
            if not isinstance(value, str | os.PathLike):
                raise ValueError(f"resume_from_checkpoint must be a path or True ('latest'), got {value!r}.")
            return os.fspath(value)
        return value

    def __post_init__(self, *spellings):
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(msg)

        self.take_aliases(spellings)
        need(self.num_epochs > 0, f"num_epochs must be > 0, got {self.num_epochs}.")
        need(
            self.max_steps is None or self.max_steps > 0,
            f"max_steps must be a positive step count or None, got {self.max_steps}.",
        )
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}.")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}.")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        need(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            f"max_grad_norm must be > 0 or None (no clipping), got {self.max_grad_norm}.",
        )
        need(
            self.gradient_accumulation_steps >= 1,
            f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}.",
        )
        need(
            self.mixed_precision in MIXED_PRECISION,
            f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}.",
        )
        report_targets(self.report_to)
        if isinstance(self.report_to, tuple):
            self.report_to = list(self.report_to)
        for name in ("task_weight", "logit_weight", "hidden_weight", "attention_weight"):
            value = getattr(self, name)
            need(
                math.isfinite(value) and value >= 0,
                f"{name} must be a finite number >= 0 (0 turns the term off), got {value}.",
            )
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}.")
        need(
            self.embedding_loss in EMBEDDING_LOSSES,
            f"embedding_loss must be one of {EMBEDDING_LOSSES}, got {self.embedding_loss!r}.",
        )
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}.")
        for name in ("save_every", "eval_every"):
            value = getattr(self, name)
            need(value is None or value >= 1, f"{name} must be >= 1 or None, got {value}.")
        need(self.save_total_limit >= 1, f"save_total_limit must be >= 1, got {self.save_total_limit}.")
        need(
            self.resume_from is None or self.output_dir is not None,
            "resume_from needs the run's output_dir (metrics and new checkpoints go there).",
        )
        need(
            not (self.overwrite and self.resume_from),
            "overwrite=True would delete the run that resume_from continues; set only one of them.",
        )
        if self.layer_map is not None:
            need(
                all(isinstance(i, int) and i >= 0 for i in self.layer_map),
                f"layer_map must list a teacher layer index (int >= 0) per student layer, got {self.layer_map}.",
            )
        if self.stages is not None:
            need(isinstance(self.stages, list | tuple) and len(self.stages) > 0,
                 f"stages must be a non-empty list of DistillStage (or dicts), got {self.stages!r}.")  # fmt: skip
            self.stages = [DistillStage.from_dict(x) if isinstance(x, dict) else x for x in self.stages]
            need(all(isinstance(x, DistillStage) for x in self.stages),
                 "stages must hold DistillStage objects or dicts of their options.")  # fmt: skip
            need(
                self.max_steps is None,
                "stages set their own lengths (num_epochs or max_steps each); drop max_steps.",
            )
        if isinstance(self.prune, dict):
            self.prune = PruneSchedule.from_dict(self.prune)
        need(
            self.prune is None or isinstance(self.prune, PruneSchedule),
            f"prune must be a PruneSchedule, a dict of its options or None, got {type(self.prune).__name__}.",
        )

    @property
    def uses_hidden(self) -> bool:
        """Whether any stage (or the one-stage run) matches hidden states."""
        return any(t.hidden_weight > 0 for t in self.term_sets)

    @property
    def uses_attention(self) -> bool:
        return any(t.attention_weight > 0 for t in self.term_sets)

    @property
    def term_sets(self) -> list:
        """The loss weights of each stage (the config itself when it has no stages)."""
        return list(self.stages) if self.stages else [self]

    def to_dict(self) -> dict:
        return asdict(self)
