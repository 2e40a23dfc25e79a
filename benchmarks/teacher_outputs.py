"""What do a teacher's outputs say beyond the labels? Its predictions on the examples students train on.

Distillation can only beat fine-tuning on the labels by what the teacher's outputs add to them. A recipe
teacher is fine-tuned for several epochs on the very training set its students are then distilled on; if it
has memorised that set, its softmax there is close to one-hot at the true label, and logit distillation on it
is close to fine-tuning. For each classification task's teacher (the best cached fine-tune of
all-MiniLM-L6-v2, ``_common.best_cached_teacher``) this script reports, on the whole training split and on
validation: accuracy, the mean probability of the most likely class and of the true one, the share of
examples whose top probability exceeds 0.99, the mean entropy, and the mean top probability after dividing
the logits by each ``--temperatures`` value (what the distillation loss compares at that temperature).

Run (from the repository root)::

    .venv/bin/python benchmarks/teacher_outputs.py --tasks mrpc rte cola sst2
    .venv/bin/python benchmarks/teacher_outputs.py --smoke --out /tmp/bench     # tiny random BERT, seconds
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from structprune.data import get_task, load_split, make_dataloader, subset  # noqa: E402
from structprune.run.recipe import load_recipe  # noqa: E402
from structprune.run.select import reference_logits  # noqa: E402

logger = logging.getLogger("teacher_outputs")


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--tasks", nargs="+", default=["mrpc", "rte", "cola", "sst2"], help="GLUE classification tasks"
    )
    p.add_argument("--temperatures", nargs="+", type=float, default=[2.0, 4.0, 8.0])
    p.add_argument("--limit", type=int, default=None, help="examples per split (default: all)")
    args = p.parse_args(argv)
    if any(t <= 0 for t in args.temperatures):
        p.error("--temperatures must be positive")
    for name in args.tasks:
        if get_task(name).is_regression:
            p.error(f"{name} is a regression task: its teacher has no class probabilities to inspect")
    if args.smoke:
        args.tasks, args.limit = ["sst2"], 32
    return args


def summary(logits: torch.Tensor, labels: torch.Tensor, temperatures) -> dict:
    """The row of one split: how close to one-hot at the true label the teacher's outputs are."""
    probs = logits.softmax(-1)
    top = probs.max(-1).values
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    row = {
        "examples": len(labels),
        "accuracy %": f"{100 * (probs.argmax(-1) == labels).float().mean():.2f}",
        "mean top p": f"{top.mean():.4f}",
        "mean p of the label": f"{probs[torch.arange(len(labels)), labels].mean():.4f}",
        "top p > 0.99": f"{100 * (top > 0.99).float().mean():.1f}%",
        "mean entropy (nats)": f"{entropy.mean():.4f}",
    }
    for t in temperatures:
        row[f"mean top p at T={t:g}"] = f"{(logits / t).softmax(-1).max(-1).values.mean():.4f}"
    return row


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    rows, sources = [], []
    for name in args.tasks:
        task = get_task(name)
        teacher, tok, source = C.teacher_of(task.name, args.smoke)
        sources.append(f"- {task.dir_name}: {source}")
        max_length = load_recipe(task.name).data.max_length  # as the teacher was fine-tuned
        for split in ("train", task.validation_splits[0]):
            data = subset(load_split(task.name, split, args.data_dir), args.limit)
            batches = list(make_dataloader(data, tok, task.name, batch_size=64, max_length=max_length))
            logits = torch.cat(reference_logits(teacher, batches))
            labels = torch.cat([b["labels"] for b in batches])
            rows.append({"task": task.dir_name, "split": split, **summary(logits, labels, args.temperatures)})
            logger.info("%s", rows[-1])
    text = C.header("What a teacher's outputs say beyond the labels", note=args.note)
    text += (
        "\nTeachers (the best cached fine-tune of all-MiniLM-L6-v2 per task, the one the quality and "
        "distillation benchmarks use):\n\n" + "\n".join(sources) + "\n\n"
        "Each row: the teacher's softmax on every example of the split (`train` is what the students of "
        "`quality.py` and `distill_variants.py` are distilled on). `top p` = probability of the predicted "
        "class; `p of the label` = probability of the gold class; `at T=t` = the top probability of "
        "softmax(logits / t), what logit distillation at temperature t matches (the recipes use 2).\n\n"
    )
    text += C.md_table(rows) + "\n"
    out = C.write_atomic(
        Path(args.out) / ("teacher_outputs_smoke.md" if args.smoke else "teacher_outputs.md"), text
    )
    logger.info("wrote %s", out)
    return out


if __name__ == "__main__":
    print(main())
