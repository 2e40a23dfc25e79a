"""Accuracy vs encoder FLOPs kept, for every scorer x recovery, on SST-2 and MRPC (one Pareto plot per task).

Scorers: random (mean over ``--random-seeds`` seeds), magnitude (L2), taylor, fisher - each followed by
``sp.allocate`` (global) and ``sp.prune_``. Recoveries are pluggable functions (``RECOVERIES``):

- ``none``: prune only.
- ``reconstruction``: layer-wise least-squares reconstruction on the calibration set
  (``structprune.reconstruct``), then surgery.
- ``search+reconstruction``: the one-call ``structprune.compress`` (Fisher scores, constrained search,
  rearrangement, reconstruction); it chooses its own mask, so it has one row per budget.
- ``distillation``: prune, then distil from the unpruned teacher (``structprune.distill``) for one pass
  over ``--train-examples`` training examples.
- ``gradual prune+distill``: distillation that prunes step by step while it trains
  (``DistillConfig(prune=PruneSchedule(to=...))``), starting from the unpruned teacher.

Distillation is expensive on 2 CPU cores, so it runs only for ``--distill-scorers`` at
``--distill-fractions`` (see ``--quick``).
Every task's rows are re-written after each method, so a long run leaves results even if stopped.

Run (from the repository root)::

    .venv/bin/python benchmarks/pareto.py --quick                 # retraining-free rows + a few distills
    .venv/bin/python benchmarks/pareto.py --tasks sst2 mrpc --train-examples 4000
    .venv/bin/python benchmarks/pareto.py --smoke --out /tmp/bench
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import structprune as sp  # noqa: E402
from structprune.data import make_dataloader, subset  # noqa: E402
from structprune.recovery.distill import flops_fraction  # noqa: E402

logger = logging.getLogger("pareto")
SCORERS = ["random", "magnitude", "taylor", "fisher"]
FRACTIONS = [0.7, 0.6, 0.5, 0.4, 0.25, 0.1]
TASKS = ("sst2", "mrpc")  # the tasks with a teacher flag


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["sst2", "mrpc"])
    p.add_argument("--fractions", type=float, nargs="+", default=FRACTIONS)
    p.add_argument("--scorers", nargs="+", default=None, help=f"default: {' '.join(SCORERS)}")
    p.add_argument("--recoveries", nargs="+", default=None, help="subset of recoveries (default: all)")
    p.add_argument("--calib-examples", type=int, default=512, help="scoring / reconstruction examples")
    p.add_argument("--eval-limit", type=int, default=None, help="validation examples (default: all)")
    p.add_argument("--random-seeds", type=int, default=3)
    p.add_argument("--train-examples", type=int, default=2000, help="distillation: examples per run")
    p.add_argument("--epochs", type=float, default=1.0, help="distillation: passes over them")
    p.add_argument("--distill-scorers", nargs="+", default=["taylor"])
    p.add_argument("--distill-fractions", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    p.add_argument("--hidden-weight", type=float, default=1.0, help="distillation: hidden-state MSE weight")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="stop starting new distillation runs after this many minutes (retraining-free rows always run)",
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer points: distill at 50%% only, 1000 train examples"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the points already in <out>/pareto_<task>.json and compute only the missing ones",
    )
    for task in TASKS:
        C.add_teacher_flag(p, task, f"--teacher-{task}")
    args = p.parse_args(argv)
    if args.quick:
        args.distill_fractions = [0.5]
        args.train_examples = min(args.train_examples, 1000)
        args.random_seeds = min(args.random_seeds, 2)
    if args.smoke:
        args.tasks = ["sst2"]
        args.fractions = [0.5]
        args.scorers = args.scorers or ["random", "taylor"]
        args.calib_examples = 16
        args.eval_limit = 16
        args.random_seeds = 1
        args.train_examples = 16
        args.distill_fractions = [0.5]
    args.scorers = args.scorers or SCORERS
    return args


# --------------------------------------------------------------------------- recoveries


class Context:
    """What a recovery may use: the unpruned teacher, calibration batches, a training loader, the task."""

    def __init__(self, task, teacher, calib, train_loader, args):
        self.task, self.teacher, self.calib, self.train_loader, self.args = (
            task,
            teacher,
            calib,
            train_loader,
            args,
        )


def _fresh(ctx: Context):
    model = copy.deepcopy(ctx.teacher)
    model.eval()
    return model


def recover_none(ctx: Context, scores, fraction: float):
    model = _fresh(ctx)
    sp.prune_(model, sp.allocate(scores, model, flops=fraction))
    return model


def recover_reconstruction(ctx: Context, scores, fraction: float):
    model = _fresh(ctx)
    mask = sp.allocate(scores, model, flops=fraction)
    sp.reconstruct(model, mask, ctx.calib, progress=False)  # fit on the masked unpruned model
    sp.prune_(model, mask)
    return model


def recover_compress(ctx: Context, scores, fraction: float):
    model, _report = sp.compress(_fresh(ctx), ctx.calib, flops=fraction, progress=False)
    return model


def _distill_config(ctx: Context, **extra):
    return sp.DistillConfig(
        task=ctx.task,
        num_epochs=ctx.args.epochs,
        hidden_weight=ctx.args.hidden_weight,
        progress=False,
        seed=ctx.args.seed,
        **extra,
    )


def recover_distill(ctx: Context, scores, fraction: float):
    student = recover_none(ctx, scores, fraction)
    student, _history = sp.distill(student, ctx.teacher, ctx.train_loader, None, config=_distill_config(ctx))
    return student


def recover_gradual(ctx: Context, scores, fraction: float):
    cfg = _distill_config(ctx, prune=sp.PruneSchedule(to=fraction, method=scores.method))
    student, _history = sp.distill(_fresh(ctx), ctx.teacher, ctx.train_loader, None, config=cfg)
    return student


# name -> (function, needs training, scorer-independent)
RECOVERIES: dict[str, tuple[Callable, bool, bool]] = {
    "none": (recover_none, False, False),
    "reconstruction": (recover_reconstruction, False, False),
    "search+reconstruction": (recover_compress, False, True),
    "distillation": (recover_distill, True, False),
    "gradual prune+distill": (recover_gradual, True, False),
}


# --------------------------------------------------------------------------- main loop


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    C.setup(args)
    start = time.perf_counter()
    written = []
    for task in args.tasks:
        if task not in TASKS:
            raise ValueError(f"pareto.py knows the tasks {list(TASKS)}, got {task!r}")
        teacher_path = getattr(args, f"teacher_{task}")
        if not args.smoke and not Path(teacher_path).exists():
            logger.warning("%s: no teacher at %s; skipped", task, teacher_path)
            written.append(_write(task, [], args, note=f"not run: no teacher at {teacher_path}"))
            continue
        written += [run_task(task, teacher_path, args, start)]
    return written


def run_task(task: str, teacher_path: Path, args, start: float) -> Path:
    teacher, tok = C.model_and_tokenizer(args, teacher_path)
    pool = C.load_examples(task, "train", args.data_dir, seed=args.seed)
    calib = C.make_batches(subset(pool, args.calib_examples), tok, task, batch_size=32)
    train_rows = range(args.calib_examples, min(args.calib_examples + args.train_examples, len(pool)))
    val_rows = C.load_examples(task, "validation", args.data_dir, limit=args.eval_limit)
    val = C.make_batches(val_rows, tok, task, batch_size=64)
    train_loader = None  # the rows after the calibration ones, when there are any
    if train_rows:
        train_loader = make_dataloader(
            pool.select(train_rows), tok, task, batch_size=32, shuffle=True, seed=0
        )
    ctx = Context(task, teacher, calib, train_loader, args)

    previous = _previous_rows(task, args) if args.resume else []
    dense_row = next((r for r in previous if r.get("recovery") == "dense teacher"), None)
    if dense_row is None:
        dense_row = {"scorer": "-", "recovery": "dense teacher", "target": "100%", "kept FLOPs": 100.0}
        dense_row.update(C.metrics(teacher, val, task))
    rows = [dense_row] + [r for r in previous if r is not dense_row and "accuracy" in r]
    done = {(r["scorer"], r["recovery"], r["target"]) for r in rows}
    _write(task, rows, args)
    scores_cache: dict[str, list] = {}

    def scores_for(scorer: str) -> list:
        if scorer not in scores_cache:  # scored on first use, once per run
            seeds = range(args.random_seeds) if scorer == "random" else [None]
            scores_cache[scorer] = [
                sp.score(
                    teacher, calib, method=scorer, progress=False, **({"seed": s} if s is not None else {})
                )
                for s in seeds
            ]
        return scores_cache[scorer]

    chosen = args.recoveries or list(RECOVERIES)
    for recovery in chosen:
        fn, trains, scorer_free = RECOVERIES[recovery]
        if trains and train_loader is None:
            rows.append(
                {
                    "scorer": "-",
                    "recovery": recovery,
                    "note": "not available (no train examples after calibration)",
                }
            )
            continue
        scorers = ["fisher"] if scorer_free else (args.distill_scorers if trains else args.scorers)
        fractions = args.distill_fractions if trains else args.fractions
        for scorer in scorers:
            for fraction in fractions:
                key = ("fisher+search" if scorer_free else scorer, recovery, f"{fraction:.0%}")
                if key in done:
                    continue
                if trains and args.budget is not None and (time.perf_counter() - start) / 60 > args.budget:
                    rows.append(
                        {
                            "scorer": scorer,
                            "recovery": recovery,
                            "target": f"{fraction:.0%}",
                            "note": "--budget spent",
                        }
                    )
                    continue
                scores_list = [None] if scorer_free else scores_for(scorer)
                rows.append(_point(ctx, fn, scorer, recovery, scores_list, fraction, val))
                _write(task, rows, args)
    return _write(task, rows, args)


def _point(ctx, fn, scorer, recovery, scores_list, fraction, val) -> dict:
    t0 = time.perf_counter()
    results, kept = [], 0.0
    try:
        for scores in scores_list:
            model = fn(ctx, scores, fraction)
            kept = 100 * flops_fraction(model)
            results.append(C.metrics(model, val, ctx.task))
            del model
    except Exception as err:  # noqa: BLE001 - one failing point is a result, the run goes on
        logger.exception("%s / %s at %s failed", scorer, recovery, fraction)
        return {
            "scorer": scorer,
            "recovery": recovery,
            "target": f"{fraction:.0%}",
            "note": f"failed: {err}"[:200],
        }
    row = {
        "scorer": "fisher+search" if recovery == "search+reconstruction" else scorer,
        "recovery": recovery,
        "target": f"{fraction:.0%}",
        "kept FLOPs": kept,
    }
    for key in results[0]:
        row[key] = statistics.mean(r[key] for r in results)
    if len(results) > 1:
        row["note"] = (
            f"mean of {len(results)} seeds (accuracy sd {statistics.stdev(r['accuracy'] for r in results):.2f})"
        )
    row["seconds"] = time.perf_counter() - t0
    logger.info("%s", row)
    return row


def _previous_rows(task: str, args) -> list[dict]:
    path = args.out / f"pareto_{task}.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    args.previous_commands = data.get("commands", [])
    return data["rows"]


_ORDER = ["dense teacher", *RECOVERIES]


def _write(task: str, rows: list[dict], args, note: str = "") -> Path:
    dense = next((r for r in rows if r["recovery"] == "dense teacher"), None)
    for r in rows:
        if dense is not None and "accuracy" in r and r is not dense:
            r["drop"] = dense["accuracy"] - r["accuracy"]
    command = C.command_line()
    commands = [c for c in getattr(args, "previous_commands", []) if c != command] + [command]
    text = C.header(f"Accuracy vs encoder FLOPs kept: {task.upper()}", note=note or args.note)
    if len(commands) > 1:
        text += "- Points accumulated with `--resume` over these commands (in order):\n"
        text += "".join(f"  - `{c}`\n" for c in commands)
    teacher = getattr(args, f"teacher_{task}")
    text += (
        f"\nTeacher: {'tiny random BERT (smoke run)' if args.smoke else teacher}. Calibration (scoring, "
        f"reconstruction): {args.calib_examples} {task.upper()} train examples (seed {args.seed}). Distillation: "
        f"{args.train_examples} other train examples, {args.epochs:g} epoch(s), logit KD + task loss"
        f"{f' + {args.hidden_weight:g} x hidden MSE' if args.hidden_weight else ''}, batch 32. Evaluation: "
        f"{'all' if args.eval_limit is None else args.eval_limit} validation examples, metrics in %. "
        "'kept FLOPs' = pruned / dense encoder FLOPs at seq 128 (%); 'drop' = teacher accuracy - accuracy; "
        "'seconds' = pruning + recovery + evaluation of the point.\n\n"
    )
    metric_cols = sorted(
        {k for r in rows for k in r} - {"scorer", "recovery", "target", "kept FLOPs", "note"}
    )
    metric_cols = [c for c in ("accuracy", "f1", "drop", "seconds") if c in metric_cols] + [
        c for c in metric_cols if c not in ("accuracy", "f1", "drop", "seconds")
    ]
    ordered = sorted(
        rows,
        key=lambda r: (
            _ORDER.index(r["recovery"]) if r["recovery"] in _ORDER else 99,
            str(r["scorer"]),
            -float(r.get("kept FLOPs") or 0),
        ),
    )
    text += C.md_table(ordered, ["scorer", "recovery", "target", "kept FLOPs", *metric_cols, "note"])
    out = C.write_atomic(args.out / f"pareto_{task}.md", text)
    data = {"commands": commands, "rows": rows}
    C.write_atomic(args.out / f"pareto_{task}.json", json.dumps(data, indent=1, default=str))
    if rows:
        _plot(task, rows, args.out / f"pareto_{task}.png")
    return out


def _plot(task, rows, path):
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    dense = next((r for r in rows if r["recovery"] == "dense teacher"), None)
    if dense is not None:
        ax.axhline(
            dense["accuracy"], color="k", ls="--", lw=0.8, label=f"dense teacher ({dense['accuracy']:.2f})"
        )
    styles = {"none": "-", "reconstruction": "--", "search+reconstruction": "-.", "distillation": ":"}
    for (scorer, recovery), pts in _groups(rows).items():
        pts = sorted(pts, key=lambda r: r["kept FLOPs"])
        ax.plot(
            [r["kept FLOPs"] for r in pts],
            [r["accuracy"] for r in pts],
            marker="o",
            ls=styles.get(recovery, (0, (3, 1, 1, 1))),
            label=f"{scorer} / {recovery}",
        )
    ax.set_xlabel("encoder FLOPs kept (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{task.upper()}: accuracy vs encoder FLOPs (MiniLM-L6 teacher)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    C.save_figure(fig, path)


def _groups(rows):
    out: dict = {}
    for r in rows:
        if r["recovery"] != "dense teacher" and "accuracy" in r:
            out.setdefault((r["scorer"], r["recovery"]), []).append(r)
    return out


if __name__ == "__main__":
    main()
