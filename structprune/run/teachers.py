"""Task teachers: a base model fine-tuned on a task by a recipe, cached by content.

One documented cache holds every fine-tuned teacher: ``$STRUCTPRUNE_CACHE/teachers`` (default
``~/.cache/structprune/teachers``, or ``$XDG_CACHE_HOME/structprune/teachers``); a recipe's
``teacher.cache_dir`` overrides it. An entry is keyed by the *content* of the base model (its config and
weight files, not its path), the task, the training options and the data options, so the same recipe
always finds the same teacher and a different model at the same path never does.

Each entry holds the saved teacher and ``teacher.json``: the recipe's training options and the validation
curve (one record per evaluation), so the benchmarks can show how the teacher converged.

    structprune teacher recipes/glue/mrpc.yaml          # fine-tune (or find) the MRPC teacher, print its curve
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from ..atomic import atomic_write_json
from ..cache import cache_root
from ..recovery.distill.runstate import latest_checkpoint

logger = logging.getLogger(__name__)

TEACHER_FILE = "teacher.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# The training options that change what a fine-tune produces (bookkeeping options such as save_every,
# log_every or progress do not: a resumed run replays an uninterrupted one exactly).
TRAIN_KEY_FIELDS = (
    "num_epochs", "max_steps", "learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm",
    "gradient_accumulation_steps", "mixed_precision", "seed", "task_weight", "eval_every", "load_best_at_end",
)  # fmt: skip


def teacher_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of cached teachers (``cache_dir`` when given, else ``cache_root() / "teachers"``)."""
    return Path(cache_dir).expanduser() if cache_dir else cache_root() / "teachers"


def content_fingerprint(source: str | os.PathLike) -> str:
    """A hash of a local model's config and weight files (contents, not paths); a Hub id is its own key."""
    path = Path(source)
    if not path.is_dir():
        return str(source)
    h = hashlib.sha256()
    files = sorted(
        p for p in path.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix in _WEIGHT_SUFFIXES)
    )
    if not files:
        raise ValueError(f"{path} holds no config.json or weight files; it is not a model folder.")
    for p in files:
        h.update(p.name.encode() + b"\0")
        with p.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def teacher_key(source: str, task: str, train: dict, data: dict) -> str:
    """The cache key of a fine-tuned teacher: model content, task, training and data options."""
    key = {"model": content_fingerprint(source), "task": task, "train": train, "data": data}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_teacher_record(path: str | os.PathLike) -> dict | None:
    """``teacher.json`` of a cached teacher (its options and validation curve), or None."""
    f = Path(path) / TEACHER_FILE
    if not f.is_file():
        return None
    try:
        record = json.loads(f.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{f} is not valid JSON ({err}); delete it to rebuild the record.") from None
    if not isinstance(record, dict) or not isinstance(record.get("curve", []), list):
        raise ValueError(f"{f} is not a teacher record (a mapping with a 'curve' list).")
    return record


def eval_curve(history: list[dict]) -> list[dict]:
    """The evaluation records of a training history (``step``, ``epoch`` and ``eval_*`` values)."""
    curve = []
    for h in history:
        values = {k: v for k, v in h.items() if k.startswith("eval_")}
        if values:
            curve.append({"step": h["step"], "epoch": h.get("epoch"), **values})
    return curve


def write_teacher_record(path: Path, record: dict) -> None:
    atomic_write_json(path / TEACHER_FILE, record)


def finetune_teacher(recipe, source: str, *, data_dir, loaders, has_head: bool) -> Path:
    """Fine-tune ``source`` on the recipe's task (or find it in the cache) and return the teacher folder.

    ``loaders(tokenizer)`` returns ``(train_loader, {split: eval_loader})``. Training checkpoints live in
    ``<entry>.run/`` beside the entry, so an interrupted fine-tune resumes; they are removed once the
    teacher is saved (the run's ``metrics.jsonl`` stays).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..checkpoint import CardInfo, save_pretrained
    from ..data import get_task
    from ..recovery.distill import finetune

    t, d = recipe.teacher, recipe.data
    task = get_task(d.task)
    train_options = {name: getattr(t.train, name) for name in TRAIN_KEY_FIELDS}
    data_options = {
        "train_examples": d.train_examples,
        "max_length": d.max_length,
        "seed": d.seed,
        "batch_size": d.batch_size,
        "data": "glue",  # the task's data; its location is not part of the key
    }
    digest = teacher_key(source, task.name, train_options, data_options)
    cache = teacher_cache(t.cache_dir)
    # the name is for people; the digest is the key (the same model under another path is found too)
    for found in sorted(cache.glob(f"*-{task.name}-{digest}")):
        if (found / "config.json").is_file():
            logger.info("using the cached fine-tuned teacher %s", found)
            return found
    final = cache / f"{Path(str(t.model)).name}-{task.name}-{digest}"
    if not has_head:
        logger.warning(
            "%s has no classifier for %s: adding a %d-label head and fine-tuning it first.",
            source, task.name, task.num_labels,
        )  # fmt: skip
    tok = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=task.num_labels, **task.label_maps()
    )
    train, evals = loaders(tok)
    run_dir = cache / f"{final.name}.run"
    resume = latest_checkpoint(run_dir) is not None
    cfg = dataclasses.replace(
        t.train, output_dir=str(run_dir), task=task.name,
        resume_from="latest" if resume else None, overwrite=not resume,
    )  # fmt: skip
    t0 = time.perf_counter()
    model, history = finetune(model, train, next(iter(evals.values())), cfg)
    seconds = time.perf_counter() - t0
    curve = eval_curve(history)
    main = f"eval_{task.main_metric}"
    best = max((c for c in curve if main in c), key=lambda c: c[main], default=None)
    save_pretrained(
        model,
        final,
        tokenizer=tok,
        card=CardInfo(method="fine-tuned teacher", task="text-classification"),
    )
    write_teacher_record(
        final,
        {
            "base_model": Path(str(source)).name if Path(str(source)).exists() else str(source),
            "base_model_fingerprint": content_fingerprint(source),
            "task": task.name,
            "main_metric": task.main_metric,
            "train": train_options,
            "data": data_options,
            "curve": curve,
            "best": best,
            "kept": "best" if cfg.load_best_at_end else "last",
            "train_seconds_this_process": round(seconds, 1),
        },
    )
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # ours; the teacher is saved
    return final
