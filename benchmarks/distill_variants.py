"""Distillation variants vs no-teacher fine-tuning of the same pruned student, at 25% and 10% of encoder FLOPs.

Per task (SST-2, MRPC, RTE) the teacher is the best one in the teachers' cache (``_common.best_cached_teacher``:
the highest validation main metric of every entry a recipe or a ``benchmarks/teachers.py`` sweep left in
``$STRUCTPRUNE_CACHE/teachers``); a task without one is skipped (``--train-teachers``: fine-tune the recipe's).
Per budget the teacher is compressed once (``sp.compress(flops=b)``, ``--calibration-examples`` random train
examples; at ``--shape-budget`` cut to ``--shape-layers`` x ``--shape-hidden`` first) and saved under ``--work``,
so every variant starts from the same weights, and trains for the same optimizer steps (``--epochs`` of the
non-augmented train set), learning rate, warmup and seed:

- ``finetune``: no teacher, task loss only (``sp.finetune``), the baseline;
- ``logit``: logit KD + ``--task-weight`` x task; ``+hidden``: + hidden-state MSE; ``+attention``: + attention KD;
- ``staged``: TinyBERT's stages (hidden + attention, then logit + task), the same steps split ``--stage-split``;
- ``staged+aug``: the same on the teacher-labelled augmented set (``augment_dataset``, cached under ``--work``);
- ``gradual``: from the dense teacher, pruned while distilled (``PruneSchedule(to=b)``), ``+attention`` terms.

The final weights are evaluated on the whole validation split. Finished rows are kept in ``<work>/rows.json``
and skipped by a rerun with the same settings; the Markdown is rewritten after every row. Two processes (say one
budget each, each with its own ``--work``) are folded into one table with ``--merge <other work>/rows.json
--render``, allowed when both measured with the same task settings and teacher.

    .venv/bin/python benchmarks/distill_variants.py                                 # full run (hours, see README)
    .venv/bin/python benchmarks/distill_variants.py --tasks mrpc --quick --threads 1   # real teacher, minutes
    .venv/bin/python benchmarks/distill_variants.py --smoke --out /tmp/dv           # tiny random BERT, seconds
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import structprune as sp  # noqa: E402
from structprune.cache import cache_root  # noqa: E402
from structprune.data import get_task, load_split, make_dataloader, subset, tokenize  # noqa: E402
from structprune.recovery.distill import flops_fraction, tinybert_stages  # noqa: E402
from structprune.recovery.distill.augment import AugmentConfig, augment_dataset  # noqa: E402
from structprune.report import markdown_table  # noqa: E402
from structprune.run.teachers import content_fingerprint, teacher_cache  # noqa: E402

logger = logging.getLogger("distill_variants")
TITLE = "Distillation variants vs no-teacher fine-tuning of the same pruned student"
TASKS = ("sst2", "mrpc", "rte")
VARIANTS = ("finetune", "logit", "+hidden", "+attention", "staged", "staged+aug", "gradual")
TERMS = {"logit": {}, "+hidden": {"hidden_weight": 1.0}}  # else (+attention, gradual): hidden + attention
TARGET = 1.0  # points over `finetune` at the same budget
DEFAULT_OUT = C.RESULTS / "distill_variants.md"


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.set_defaults(out=DEFAULT_OUT)
    p.add_argument("--tasks", nargs="+", default=None, help=f"GLUE tasks (default: {' '.join(TASKS)})")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.10], help="encoder FLOPs fractions")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--train-size", type=int, default=8000, help="random train examples (all when fewer)")
    p.add_argument("--eval-size", type=int, default=None, help="validation examples (default: all)")
    p.add_argument("--epochs", type=float, default=3.0, help="of the non-augmented train set: the step count")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128, help="as the cached teachers were fine-tuned")
    p.add_argument("--calibration-examples", type=int, default=1024)
    p.add_argument("--task-weight", type=float, default=0.5, help="task loss weight when distilling")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--stage-split", type=float, default=0.5, help="share of the steps in stage 1 (staged)")
    p.add_argument("--augment-multiplier", type=int, default=4, help="with 3 epochs: no input is seen twice")
    p.add_argument("--prune-steps", type=int, default=4, help="pruning events of the gradual variant")
    p.add_argument("--shape-budget", type=float, default=0.1, help="budget cut to a TinyBERT shape first")
    p.add_argument("--shape-layers", type=int, default=4)
    p.add_argument("--shape-hidden", type=int, default=256)
    p.add_argument("--train-teachers", action="store_true", help="fine-tune a missing teacher (hours)")
    p.add_argument("--quick", action="store_true", help="real teachers, 64 examples, 2 steps per run")
    p.add_argument("--merge", type=Path, nargs="+", action="extend", default=[], help="another run's "
                   "<work>/rows.json to fold into this one's (rows measured by two processes with the same task "
                   "settings, e.g. one budget each)")  # fmt: skip
    p.add_argument("--render", action="store_true", help="only write the Markdown from <work>/rows.json (after "
                   "--merge), training nothing; give the options of the runs so the setup paragraph says them")  # fmt: skip
    p.add_argument("--work", type=Path, default=None, help="students, augmented data, rows.json (default: "
                   "$STRUCTPRUNE_CACHE/bench_distill_variants)")  # fmt: skip
    a = p.parse_args(argv)
    explicit_out, a.out = a.out != DEFAULT_OUT, a.out if a.out.suffix == ".md" else a.out / DEFAULT_OUT.name
    if a.smoke or a.quick:
        a.train_size, a.eval_size, a.epochs, a.calibration_examples = 64, 64, 1.0, 64
        a.augment_multiplier, a.prune_steps = 2, 2
    if a.smoke:
        a.tasks, a.shape_layers, a.shape_hidden = a.tasks or ["sst2"], 1, 16
        smoke_dir = a.out.parent if explicit_out else Path(tempfile.gettempdir()) / "dv-smoke"
        a.work = a.work or smoke_dir / "work"
    a.work = a.work or cache_root() / "bench_distill_variants" / ("quick" if a.quick else "")
    if (a.smoke or a.quick) and not explicit_out:  # never overwrite the real results with meaningless numbers
        a.out = a.work / DEFAULT_OUT.name
    a.tasks = [get_task(t).name for t in (a.tasks or TASKS)]
    return a


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M")


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def shape_of(model) -> str:
    s = sp.arch.view(model).structure
    return f"{len(s.layers)}L x {s.hidden_width}, {sum(s.heads_per_layer)} heads, {sum(s.ffn_per_layer)} FFN"


def find_teacher(task: str, args) -> tuple[Path | None, str]:
    path, record = C.best_cached_teacher(task)
    if path is None and args.train_teachers:
        from structprune.run.pipeline import prepare_teacher
        from structprune.run.recipe import load_recipe

        prepare_teacher(load_recipe(task))  # the task recipe's teacher, fine-tuned into the cache
        path, record = C.best_cached_teacher(task)
    if path is None:
        return None, (f"no fine-tuned {task} teacher in {teacher_cache()}; make one (`python benchmarks/teachers.py "
                      f"--tasks {task}` or `structprune teacher {task}`) or rerun with --train-teachers")  # fmt: skip
    kept = record["best"] if record.get("kept", "best") == "best" else record["curve"][-1]
    train = record.get("train", {})
    return path, (f"`{path}` (best in the teachers' cache: {record['main_metric']} "
                  f"{100 * kept['eval_' + record['main_metric']]:.2f} at epoch {kept.get('epoch')}, lr "
                  f"{train.get('learning_rate')}, {train.get('num_epochs')} epochs)")  # fmt: skip


class Task:
    """One task's teacher, data (tokenized once), step count, cached students and augmented set."""

    def __init__(self, name: str, args, state: dict):
        self.args, self.state, self.task, a, L = args, state, get_task(name), args, args.max_length
        if args.smoke:
            self.path, self.how, self.key = None, "tiny random BERT (smoke run: numbers mean nothing)", "tiny"
            self.teacher, self.tok = C.tiny_bert(num_labels=self.task.num_labels), C.tokenizer_for()
        else:
            self.path, self.how = find_teacher(name, args)
            if self.path is None:
                return
            self.teacher, self.tok = C.load_teacher(self.path), C.tokenizer_for(self.path)
            self.key = content_fingerprint(self.path)
        pool = load_split(self.task, "train", a.data_dir)
        self.train = subset(pool, a.train_size, mode="random", seed=a.seed)
        self.tokens = tokenize(self.train, self.tok, self.task, max_length=L)
        self.calib = list(make_dataloader(pool, self.tok, self.task, batch_size=32, max_length=L, bucket=False,
                                          limit=a.calibration_examples, limit_mode="random", seed=a.seed))  # fmt: skip
        split = self.task.validation_splits[0]
        val = subset(load_split(self.task, split, a.data_dir), a.eval_size)
        self.val = C.make_batches(val, self.tok, self.task, batch_size=64, max_length=L)
        self.validation = f"{split} ({len(val)})"
        self.steps = math.ceil(len(self.loader(self.tokens)) * a.epochs)
        self.settings = {"teacher": self.key, "seed": a.seed, "max_length": L, "validation": self.validation,
                         "train_examples": len(self.train), "steps": self.steps, "lr": a.lr, "batch_size":
                         a.batch_size, "task_weight": a.task_weight, "temperature": a.temperature,
                         "calibration_examples": a.calibration_examples}  # fmt: skip

    def loader(self, data):
        a = self.args
        return make_dataloader(data, self.tok, self.task, a.batch_size, shuffle=True, seed=a.seed)

    def shape(self, budget: float) -> dict:
        a = self.args
        at_shape = abs(budget - a.shape_budget) < 1e-9
        return {"layers": a.shape_layers, "hidden": a.shape_hidden} if at_shape else {}

    def variant_settings(self, budget: float, variant: str) -> dict:
        a, out = self.args, {**self.settings, "budget": budget, "variant": variant, **self.shape(budget)}
        if variant.startswith("staged"):
            out["stage_split"] = a.stage_split
        if variant == "staged+aug":
            out["augment_multiplier"] = a.augment_multiplier
        if variant == "gradual":
            out["prune_steps"] = a.prune_steps
        return out

    def student(self, budget: float):
        """The teacher compressed to ``budget`` once (saved under --work; a fresh copy per call), its record."""
        a, opts = self.args, self.shape(budget)
        key = digest([self.key, budget, a.calibration_examples, a.seed, a.max_length, opts])
        folder = a.work / "students" / f"{self.task.name}-{budget:g}-{key}"
        if not (folder / "student.json").is_file():
            torch.manual_seed(a.seed)
            t0 = time.perf_counter()
            model = copy.deepcopy(self.teacher)
            model, report = sp.compress(model, self.calib, budget, progress=False, **opts)
            info = {"choice": report.choice, "seconds": time.perf_counter() - t0, "flops": flops_fraction(model),
                    "shape": shape_of(model), "metrics": C.metrics(model.eval(), self.val, self.task.name)}  # fmt: skip
            sp.save_pretrained(model, folder, tokenizer=self.tok)
            C.write_atomic(folder / "student.json", json.dumps(info, indent=1))
        return sp.from_pretrained(folder).float(), json.loads((folder / "student.json").read_text())

    def augmented(self):
        """The teacher-labelled augmented train set (``augment_dataset``'s cache); its cost goes to the state."""
        a, n = self.args, len(self.train)
        cfg = AugmentConfig(multiplier=a.augment_multiplier, seed=a.seed, max_length=a.max_length)
        folder = a.work / "augment" / f"{self.task.name}-{digest([self.key, n, a.seed])}"
        before, t0 = set(folder.glob("augment-*.jsonl")), time.perf_counter()
        data = augment_dataset(self.train, self.task, self.tok, self.teacher, cfg, cache_dir=folder)
        seconds, new = time.perf_counter() - t0, set(folder.glob("augment-*.jsonl")) - before
        key = f"{self.task.name}|{digest([self.key, n, a.seed, a.augment_multiplier, a.max_length])}"
        if new or key not in self.state["augment"]:  # timed when generated, not when read from the cache
            files = sorted(new or folder.glob("augment-*.jsonl"), key=lambda f: f.stat().st_mtime)
            self.state["augment"][key] = {"task": self.task.name, "source": n, "multiplier": a.augment_multiplier,
                                          "examples": len(data), "seconds": seconds if new else None, "bytes":
                                          files[-1].stat().st_size, "threads": torch.get_num_threads()}  # fmt: skip
        return data

    def run(self, budget: float, variant: str) -> dict:
        a, steps, teacher = self.args, self.steps, self.teacher
        student, info = self.student(budget)
        common = dict(output_dir=None, task=self.task.name, learning_rate=a.lr, seed=a.seed, load_best_at_end=False,
                      progress=False, report_to="none", log_every=max(1, steps // 10), temperature=a.temperature)  # fmt: skip
        loader, note = self.loader(self.tokens), f"from {info['choice']}"
        if variant == "staged+aug":  # generated (or read from the cache) before the clock starts
            data = self.augmented()
            loader = self.loader(tokenize(data, self.tok, self.task, max_length=a.max_length))
            note = f"{len(self.train)} + {len(data) - len(self.train)} augmented examples; {note}"
        load0, t0 = os.getloadavg()[0], time.perf_counter()
        if variant == "finetune":
            cfg = sp.DistillConfig(max_steps=steps, **{**common, "task_weight": 1.0, "logit_weight": 0.0})
            student, history = sp.finetune(student, loader, None, cfg)
        elif variant.startswith("staged"):  # the same optimizer steps, split between the two stages
            first = min(max(1, round(steps * a.stage_split)), steps - 1)  # needs steps >= 2
            intermediate, prediction = tinybert_stages(1, 1, task_weight=a.task_weight)
            stages = [replace(intermediate, max_steps=first), replace(prediction, max_steps=steps - first)]
            cfg = sp.DistillConfig(stages=stages, **common)
            student, history = sp.distill(student, teacher, loader, None, cfg)
        else:
            terms = TERMS.get(variant, {"hidden_weight": 1.0, "attention_weight": 1.0})
            if variant == "gradual":
                terms = dict(terms, prune=sp.PruneSchedule(to=budget, steps=a.prune_steps, end=0.5, batches=8,
                                                           seq_len=128, **self.shape(budget)))  # fmt: skip
                student, note = copy.deepcopy(teacher), "from the dense teacher"
            kd = {"max_steps": steps, "task_weight": a.task_weight, "logit_weight": 1.0}
            cfg = sp.DistillConfig(**kd, **common, **terms)
            student, history = sp.distill(student, teacher, loader, None, cfg)
        return {"seconds": time.perf_counter() - t0, "load": [load0, os.getloadavg()[0]], "note": note,
                "threads": torch.get_num_threads(), "steps": max(h["step"] for h in history if "loss" in h),
                "metrics": C.metrics(student.eval(), self.val, self.task.name), "flops": flops_fraction(student),
                "shape": shape_of(student)}  # fmt: skip


VARIANT_KEYS = ("budget", "variant", "layers", "hidden", "stage_split", "augment_multiplier", "prune_steps")


def task_settings(entry: dict) -> list[str]:
    """The settings a task's current rows share (teacher, data, steps, ...), without the per-variant ones."""
    return sorted({json.dumps({k: v for k, v in s.items() if k not in VARIANT_KEYS}, sort_keys=True)
                   for s in entry.get("current", {}).values()})  # fmt: skip


def merge_state(state: dict, path: Path) -> None:
    """Fold another run's ``rows.json`` into ``state``: its current rows, students, augmentation costs and runs.

    A task both hold is folded when both runs measured it with the same task settings (teacher weights, data,
    steps, learning rate, ...) and no row is current in both with other results; otherwise nothing is folded
    and the run stops with a message saying why."""
    try:
        other = json.loads(Path(path).read_text())
        rows, tasks, runs, augment = other["rows"], other["tasks"], other["runs"], other["augment"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"--merge {path}: not a distill_variants rows.json ({err})") from None
    for name, theirs in tasks.items():  # every check before anything is folded in
        mine = state["tasks"].get(name, {})
        if not (mine.get("current") and theirs.get("current")):
            continue
        if task_settings(mine) != task_settings(theirs) or mine.get("teacher_metrics") != theirs.get(
            "teacher_metrics"
        ):
            raise SystemExit(
                f"--merge {path}: {name} was measured with other settings or another teacher there"
            )
        both = sorted(k for k in mine["current"].keys() & theirs["current"].keys()
                      if "metrics" in state["rows"].get(k, {}) and "metrics" in rows.get(k, {})
                      and state["rows"][k] != rows[k])  # fmt: skip
        if both:
            raise SystemExit(f"--merge {path}: {name} rows measured in both: {', '.join(both)}")
    for name, theirs in tasks.items():
        mine = state["tasks"].get(name, {})
        merged = (
            {**theirs, **mine} if mine.get("current") else {**mine, **theirs}
        )  # this run's description wins
        merged["current"] = {**mine.get("current", {}), **theirs.get("current", {})}
        merged["students"] = {**mine.get("students", {}), **theirs.get("students", {})}
        state["tasks"][name] = merged
        state["rows"].update({k: rows[k] for k in theirs.get("current", {}) if "metrics" in rows.get(k, {})})
    # a set read from the cache has no time: keep the record of the run that generated it
    for key, entry in augment.items():
        if state["augment"].get(key, {}).get("seconds") is None:
            state["augment"][key] = entry
    known = {(r["command"], r["date"]) for r in state["runs"]}
    new = [r for r in runs if (r["command"], r["date"]) not in known]
    state["runs"] = sorted(state["runs"] + new, key=lambda r: r["date"])


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    path = args.work / "rows.json"
    state = json.loads(path.read_text()) if path.is_file() else {}
    for k in ("rows", "tasks", "augment"):
        state.setdefault(k, {})
    state.setdefault("runs", [])
    for other in args.merge:
        merge_state(state, other)
    state["runs"].append({"command": C.command_line(), "date": now()})
    if args.render:
        return save(state, args)
    planned = [f"{t}|{b:g}|{v}" for t in args.tasks for b in args.budgets for v in args.variants]
    logger.info("%d training runs planned (%d tasks x %d budgets x %d variants; %d stored in %s, kept when their "
                "settings match) + %d compressions + one augmentation per task", len(planned), len(args.tasks),
                len(args.budgets), len(args.variants), sum(k in state["rows"] for k in planned), path,
                len(args.tasks) * len(args.budgets))  # fmt: skip
    save(state, args)
    for name in args.tasks:
        ctx = Task(name, args, state)
        entry = state["tasks"].setdefault(name, {})
        # rows of an earlier run with another teacher, seed or data are not comparable with this run's: the table
        # shows (and compares with fine-tuning) only rows sharing this run's settings
        current = entry.setdefault("current", {})
        for key in [k for k, s in current.items() if {n: s.get(n) for n in ctx.settings} != ctx.settings]:
            del current[key]
        entry.update(teacher=ctx.how, skipped=ctx.path is None and not args.smoke)
        if entry["skipped"]:
            logger.warning("%s skipped: %s", name, ctx.how)
            save(state, args)
            continue
        entry.update(steps=ctx.steps, train=len(ctx.train), validation=ctx.validation,
                     teacher_metrics=C.metrics(ctx.teacher, ctx.val, name))  # fmt: skip
        logger.info("%s: %d optimizer steps per run", name, ctx.steps)
        for budget in args.budgets:
            entry.setdefault("students", {})[f"{budget:g}"] = ctx.student(budget)[1]
            for variant in args.variants:
                settings, key = ctx.variant_settings(budget, variant), f"{name}|{budget:g}|{variant}"
                entry.setdefault("current", {})[key] = settings
                old = state["rows"].get(key)
                if old and old.get("settings") == settings and "metrics" in old:
                    logger.info("%s: measured %s, kept", key, old["measured"])
                    continue
                logger.info("%s: training (%d steps)", key, ctx.steps)
                torch.manual_seed(args.seed)
                try:
                    row = ctx.run(budget, variant)
                except Exception as err:  # noqa: BLE001 - a failing variant is a result; the table says why
                    logger.exception("%s failed", key)
                    row = {"note": f"FAILED: {type(err).__name__}: {err}"[:300]}
                state["rows"][key] = {**row, "settings": settings, "measured": now()}
                save(state, args)
    return save(state, args)


# --------------------------------------------------------------------------- Markdown


def save(state: dict, args) -> Path:
    """``<work>/rows.json``, then the Markdown."""
    C.write_atomic(args.work / "rows.json", json.dumps(state, indent=1, default=str))
    return write(state, args)


def current_rows(state: dict, name: str) -> dict[tuple[float, str], dict]:
    """The task's rows measured with the settings of its last run, by (budget, variant)."""
    cur = state["tasks"][name].get("current", {})
    return {(s["budget"], s["variant"]): state["rows"][k] for k, s in cur.items()
            if state["rows"].get(k, {}).get("settings") == s}  # fmt: skip


def diff(rows: dict, budget: float, variant: str, main: str) -> float | None:
    base, row = rows.get((budget, "finetune"), {}), rows.get((budget, variant), {})
    return row["metrics"][main] - base["metrics"][main] if "metrics" in base and "metrics" in row else None


def verdict(d: float | None) -> str:
    return "-" if d is None else f"{d:+.2f} {'met' if d >= TARGET else 'MISSED'}"


def write(state: dict, args) -> Path:
    a = args
    text = C.header(TITLE, note=a.note) + "".join(f"- Earlier run ({r['date']}): `{r['command']}`\n"
                                                  for r in state["runs"][:-1])  # fmt: skip
    text += (f"\nSetup (docstring of `benchmarks/distill_variants.py`): per task and budget one student, the teacher "
             f"compressed once (`sp.compress`, {a.calibration_examples} random train examples; at {a.shape_budget:.0%} "
             f"first cut to {a.shape_layers} layers x {a.shape_hidden} hidden); every variant trains it for the same "
             f"optimizer steps ({a.epochs:g} epochs of at most {a.train_size} random train examples, seed {a.seed}, "
             f"batch {a.batch_size}, max length {a.max_length}), AdamW lr {a.lr:g}, 10% warmup then linear decay, "
             f"KD temperature {a.temperature:g}, task weight {a.task_weight:g} when distilling (1 for `finetune`). "
             f"`staged`: hidden + attention for {a.stage_split:.0%} of the steps, then logits + task. `staged+aug`: "
             f"the same steps on the train set plus {a.augment_multiplier} teacher-labelled variants per example "
             "(`augment_dataset`, embedding-neighbour word replacement): the same source examples and steps but more "
             f"distinct inputs, so not the same data budget. `gradual`: from the dense teacher, {a.prune_steps} Taylor "
             "pruning events over the first half of the steps, `+attention` terms. Metrics in % of the final weights "
             "(no checkpoint selection); diff = variant - `finetune` of the same student, in points; target >= "
             f"+{TARGET:.1f}. Wall s: training only; `(load x)`: timed while the 1-minute load average x exceeded "
             "the cores (times inflated, metrics unaffected).\n\n")  # fmt: skip
    tasks = [t for t, e in state["tasks"].items() if not e.get("skipped")]
    cells = [(t, b) for t in tasks for b in sorted({b for b, _ in current_rows(state, t)}, reverse=True)]
    diffs = {(t, b, v): diff(current_rows(state, t), b, v, get_task(t).main_metric)
             for t, b in cells for v in VARIANTS[1:]}  # fmt: skip
    text += "## Target: distillation - no-teacher fine-tuning, same student, data and steps (main metric, points)\n\n"
    if cells:
        table = [[v, *(verdict(diffs[t, b, v]) for t, b in cells)] for v in VARIANTS[1:]]
        text += markdown_table(["variant", *(f"{get_task(t).dir_name} {b:.0%}" for t, b in cells)], table)
        best = [
            max((d for v in VARIANTS[1:] if (d := diffs[t, b, v]) is not None), default=None)
            for t, b in cells
        ]
        met = sum(d is not None and d >= TARGET for d in best)
        text += f"\n\nThe best distillation variant meets the target in {met} of {len(cells)} task x budget cells.\n\n"
    for name, entry in state["tasks"].items():
        task = get_task(name)
        text += f"## {task.dir_name}\n\n- Teacher: {entry['teacher']}\n"
        if entry.get("skipped"):
            text += "- Skipped in the last run.\n\n"
            continue
        keys, tm, rows, table = task.metrics, entry["teacher_metrics"], current_rows(state, name), []
        text += f"- Teacher on {entry['validation']}: " + ", ".join(f"{k} {tm[k]:.2f}" for k in keys) + "\n"
        text += f"- {entry['train']} train examples, {entry['steps']} optimizer steps per run\n\n"
        for b in sorted({b for b, _ in rows}, reverse=True):
            s = entry.get("students", {}).get(f"{b:g}")
            if s:
                table.append([f"{b:.0%}", "one-shot, no training", f"{100 * s['flops']:.1f}% ({s['shape']})",
                              *(f"{s['metrics'][k]:.2f}" for k in keys), "-", "-", f"{s['seconds']:.0f} (compress)",
                              "-", s["choice"]])  # fmt: skip
            for v in (v for v in VARIANTS if (b, v) in rows):
                r, m = rows[b, v], rows[b, v].get("metrics")
                loaded = max(r.get("load") or [0]) > max(os.cpu_count() or 1, r.get("threads", 1)) + 0.5
                wall = "-" if not m else f"{r['seconds']:.0f}" + (f" (load {max(r['load']):.1f})" * loaded)
                table.append([f"{b:.0%}", v, f"{100 * r['flops']:.1f}% ({r['shape']})" if m else "-",
                              *(f"{m[k]:.2f}" if m else "-" for k in keys),
                              "-" if v == "finetune" else verdict(diff(rows, b, v, task.main_metric)),
                              r.get("steps", "-"), wall, r.get("threads", "-"), r.get("note", "")])  # fmt: skip
        text += markdown_table(["budget", "variant", "encoder FLOPs (shape)", *keys, "diff vs finetune", "steps",
                                "wall s", "threads", "note"], table) + "\n\n"  # fmt: skip
    aug = [e for e in state["augment"].values() if e["task"] in tasks]
    if aug:
        per_k = [[e["task"], e["source"], e["multiplier"], e["examples"], "-" if e["seconds"] is None else
                  f"{e['seconds']:.0f}", "-" if e["seconds"] is None else f"{1000 * e['seconds'] / e['source']:.1f}",
                  f"{1000 * e['examples'] / e['source']:.0f}", f"{1000 * e['bytes'] / e['source'] / 2**20:.2f}",
                  e["threads"]] for e in aug]  # fmt: skip
        text += "## Augmentation cost (word replacement + teacher labelling; per 1k source examples)\n\n"
        text += markdown_table(["task", "source examples", "multiplier", "examples (originals included)", "seconds",
                                "s / 1k", "examples / 1k", "cache MiB / 1k", "threads"], per_k) + "\n"  # fmt: skip
    return C.write_atomic(a.out, text)


if __name__ == "__main__":
    main()
