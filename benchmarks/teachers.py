"""Teachers that converged: a learning-rate sweep per GLUE task and each teacher's validation curve.

Every run is the task's recipe (``recipes/glue/<task>.yaml``) as written, with only
``teacher.train.learning_rate`` changed for the sweep; the recipe's own learning rate is the one the sweep
chose, so ``structprune teacher recipes/glue/<task>.yaml`` reproduces the marked row from the same cache
entry. Teachers live in the teachers' cache (``$STRUCTPRUNE_CACHE/teachers``, default
``~/.cache/structprune/teachers``); an interrupted fine-tune resumes from its last checkpoint, and a
finished one is found again, so this script can be stopped and run again at any time.

    python benchmarks/teachers.py --tasks rte mrpc stsb cola sst2 --lrs 2e-5 5e-5 1e-4
    python benchmarks/teachers.py --tasks sst2 --lrs recipe        # just the recipe's teacher
    python benchmarks/teachers.py --model mpnet --tasks mrpc --lrs 2e-5 --out benchmarks/results/teachers_mpnet.md \
        --override teacher.train.num_epochs=3                      # all-mpnet-base-v2 (_common.mpnet_base())

``--model`` swaps the recipe's ``teacher.model`` (all-MiniLM-L6-v2) for another model; the MiniLM targets
are then not shown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

from structprune.data import get_task  # noqa: E402
from structprune.report import markdown_table  # noqa: E402
from structprune.run.pipeline import prepare_teacher  # noqa: E402
from structprune.run.recipe import load_recipe  # noqa: E402
from structprune.run.teachers import read_teacher_record  # noqa: E402

RECIPES = _common.REPO / "recipes" / "glue"

# The targets of the strong-teachers issue for all-MiniLM-L6-v2 (main metric of each task, in %).
TARGETS = {"sst2": 89.5, "mrpc": 88.0, "stsb": 85.0, "cola": 30.0, "rte": 60.0}


def run_one(task: str, lr: str, overrides: list[str]) -> dict:
    recipe_path = RECIPES / f"{task}.yaml"
    extra = list(overrides) + ([] if lr == "recipe" else [f"teacher.train.learning_rate={lr}"])
    recipe = load_recipe(recipe_path, extra)
    path = prepare_teacher(recipe)
    record = read_teacher_record(path) or {"curve": []}
    return {
        "task": task,
        "lr": recipe.teacher.train.learning_rate,
        "is_recipe": recipe.teacher.train.learning_rate
        == load_recipe(recipe_path).teacher.train.learning_rate,
        "epochs": recipe.teacher.train.num_epochs,
        "path": path,
        "record": record,
    }


def _pct(x) -> float:
    return 100.0 * float(x)


def write_results(out: Path, runs: list[dict], note: str, model: str = "all-MiniLM-L6-v2") -> None:
    targets = TARGETS if model == "all-MiniLM-L6-v2" else {}
    intro = [
        _common.header(f"Teachers: learning-rate sweep and validation curves ({model})", note=note),
        "",
        "Each row is `structprune teacher recipes/glue/<task>.yaml teacher.train.learning_rate=<lr>`; the row "
        "marked **recipe** is the recipe as written (`structprune teacher recipes/glue/<task>.yaml`). The kept "
        "teacher is the epoch with the best validation main metric (`load_best_at_end`), as GLUE dev results "
        "are usually reported; the last epoch is shown beside it. Metrics are in % (Spearman x 100 for "
        "STS-B, MCC x 100 for CoLA).",
        "",
    ]
    lines: list[str] = []
    by_task: dict[str, list[dict]] = {}
    for r in runs:
        by_task.setdefault(r["task"], []).append(r)
    summary = []
    for task, rs in by_task.items():
        info = get_task(task)
        key = f"eval_{info.main_metric}"
        rows = []
        for r in sorted(rs, key=lambda r: r["lr"]):
            curve = [c for c in r["record"]["curve"] if key in c]
            best = max(curve, key=lambda c: c[key]) if curve else None
            last = curve[-1] if curve else None
            rows.append(
                [
                    f"{r['lr']:g}" + (" **recipe**" if r["is_recipe"] else ""),
                    r["epochs"],
                    _pct(best[key]) if best else "-",
                    best.get("epoch") if best else "-",
                    _pct(last[key]) if last else "-",
                    r["record"].get("train_seconds_this_process", "-"),
                ]
            )
        target = f"; target >= {targets[task]}" if task in targets else ""
        lines += [f"## {info.name} ({info.main_metric}{target})", ""]
        lines.append(
            markdown_table(
                ["learning rate", "epochs", "best", "at epoch", "last epoch", "train s (last process)"], rows
            )
        )
        for r in sorted(rs, key=lambda r: r["lr"]):
            curve = r["record"]["curve"]
            if not curve:
                continue
            metric_keys = [k for k in curve[-1] if k.startswith("eval_") and k != "eval_loss"]
            lines += [
                "",
                f"Validation curve, learning rate {r['lr']:g}{' (the recipe)' if r['is_recipe'] else ''}:",
                "",
            ]
            lines.append(
                markdown_table(
                    ["epoch", "step", "loss", *(k[5:] for k in metric_keys)],
                    [
                        [c.get("epoch"), c["step"], c.get("eval_loss"), *(_pct(c[k]) for k in metric_keys)]
                        for c in curve
                    ],  # fmt: skip
                )
            )
        scored = [(r, (r["record"].get("best") or {}).get(key)) for r in rs]
        scored = [(r, v) for r, v in scored if v is not None]
        if scored:
            r, v = max(scored, key=lambda x: x[1])
            summary.append([info.name, info.main_metric, _pct(v), f"{r['lr']:g}" + (" (recipe)" if r["is_recipe"] else ""),
                            targets.get(task, "-"), ("met" if _pct(v) >= targets[task] else "missed")
                            if task in targets else ""])  # fmt: skip
        lines.append("")
    if summary:
        intro += [
            "## Summary (best teacher of the sweep so far)",
            "",
            markdown_table(["task", "metric", "teacher", "learning rate", "target", ""], summary),
            "",
        ]
    _common.write_atomic(out, "\n".join(intro + lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["rte", "mrpc", "stsb", "cola", "sst2"])
    p.add_argument(
        "--lrs", nargs="+", default=["recipe"], help="Learning rates to sweep; 'recipe' = as written."
    )
    p.add_argument("--override", nargs="*", default=[], help="Extra recipe overrides (key=value).")
    p.add_argument("--model", default=None, help="'mpnet' (all-mpnet-base-v2) or a model folder instead of the "
                   "recipe's all-MiniLM-L6-v2")  # fmt: skip
    p.add_argument("--out", type=Path, default=_common.RESULTS / "teachers.md")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    model, overrides = "all-MiniLM-L6-v2", list(args.override)
    if args.model:
        path = _common.mpnet_base() if args.model == "mpnet" else Path(args.model).expanduser()
        model, overrides = path.name, [f"teacher.model={path}", *overrides]
    runs = []
    for task in args.tasks:
        for lr in args.lrs:
            runs.append(run_one(task, lr, overrides))
            write_results(
                args.out, runs, args.note, model
            )  # after every run: a partial table survives a stop
            print(f"{task} lr={runs[-1]['lr']:g}: {runs[-1]['path']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
