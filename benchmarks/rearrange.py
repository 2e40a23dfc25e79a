"""Does Kwon et al.'s mask rearrangement help? The constrained search's mask beside its rearranged versions.

For each teacher (``--model minilm`` / ``mpnet``: the best cached fine-tune of all-MiniLM-L6-v2 /
all-mpnet-base-v2 on ``--task``), per-example gate gradients on ``--calibration-examples`` random train examples
(a quarter held back, as ``sp.compress`` does), Fisher scores, ``sp.search(flops=--flops)``, then
``sp.rearrange`` of the search's heads only, of its neurons only, and of both (the paper's path), and, for
comparison, ``sp.allocate`` of the Fisher and Taylor scores. Every mask is applied by surgery, without
reconstruction. Reported: heads and neurons kept (per layer for heads), the share of the Fisher and Taylor
importance kept, the held-back task loss ``sp.compress`` chooses by, and the validation metric.

The rearrangement (a greedy minimization of the second-order loss term within each layer) rests on an
expansion around the unpruned model; where a layer loses most of its heads it can choose far worse heads
than the search did. ``sp.compress`` therefore weighs all four search masks on held-back examples and
reconstructs only the best (``structprune/run/compress.py``).

Run (from the repository root)::

    .venv/bin/python benchmarks/rearrange.py --model mpnet --task sst2 --calibration-examples 512
    .venv/bin/python benchmarks/rearrange.py --model minilm --task sst2
    .venv/bin/python benchmarks/rearrange.py --smoke --out /tmp/bench     # tiny random BERT, seconds
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import structprune as sp  # noqa: E402
from structprune.data import get_task, load_split, make_dataloader, subset  # noqa: E402
from structprune.run.select import heldout_loss, split_holdout, taylor_from  # noqa: E402

logger = logging.getLogger("rearrange")


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("minilm", "mpnet"), default="minilm", help="base model of the teacher")
    p.add_argument("--task", default="sst2")
    p.add_argument("--flops", type=float, default=0.5)
    p.add_argument("--calibration-examples", type=int, default=512)
    args = p.parse_args(argv)
    args.eval_limit = None
    if args.smoke:
        args.calibration_examples, args.eval_limit = 64, 32
    return args


def masks_of(teacher, fit, flops: float) -> tuple[dict, object, object]:
    grads = sp.gate_gradients(teacher, fit, label_free=False, progress=False)
    fisher = grads.fisher()
    taylor = taylor_from(grads, [len(b["input_ids"]) for b in fit])
    searched = sp.search(fisher, teacher, flops=flops)
    masks = {
        "search": searched,
        "search + rearranged heads": sp.rearrange(searched, grads, neurons=False),
        "search + rearranged neurons": sp.rearrange(searched, grads, heads=False),
        "search + rearranged heads and neurons (Kwon et al.)": sp.rearrange(searched, grads),
        "allocate (Fisher)": sp.allocate(fisher, teacher, flops=flops),
        "allocate (Taylor)": sp.allocate(taylor, teacher, flops=flops),
    }
    return masks, fisher, taylor


def kept(scores, mask) -> float:
    total = float(scores.head.double().sum() + scores.ffn.double().sum())
    return float(scores.head.double()[mask.head].sum() + scores.ffn.double()[mask.ffn].sum()) / total


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    task = get_task(args.task)
    if args.smoke:
        teacher, tok, source = (
            C.tiny_bert(num_labels=task.num_labels),
            C.tokenizer_for(),
            "tiny random BERT (smoke)",
        )
    else:
        base = C.mpnet_base() if args.model == "mpnet" else None
        path, _ = C.best_cached_teacher(task.name, base=base)
        if path is None:
            raise SystemExit(
                f"no cached {task.name} teacher of {args.model}: run benchmarks/teachers.py first"
            )
        teacher, tok, source = C.load_teacher(path), C.tokenizer_for(path), f"cached teacher {path.name}"
    teacher.eval()
    max_length = 64 if task.name == "sst2" else 128
    batches = list(make_dataloader(load_split(task.name, "train", args.data_dir), tok, task.name, batch_size=32,
                                   max_length=max_length, limit=args.calibration_examples, limit_mode="random",
                                   seed=args.seed, bucket=False))  # fmt: skip
    split = task.validation_splits[0]
    val_rows = subset(load_split(task.name, split, args.data_dir), args.eval_limit)
    val = list(make_dataloader(val_rows, tok, task.name, batch_size=64, max_length=max_length))
    fit, held = split_holdout(batches, 0.25)
    masks, fisher, taylor = masks_of(teacher, fit, args.flops)
    dense = C.metrics(teacher, val, task.name)[task.main_metric]
    rows = []
    for name, mask in masks.items():
        model = copy.deepcopy(teacher)
        sp.prune_(model, mask)
        rows.append({
            "mask": name,
            "heads per layer": " ".join(str(int(n)) for n in mask.head.sum(1)),
            "heads": int(mask.head.sum()),
            "neurons": int(mask.ffn.sum()),
            "Fisher kept": f"{kept(fisher, mask):.3f}",
            "Taylor kept": f"{kept(taylor, mask):.3f}",
            "held-back loss": f"{heldout_loss(model, held, label_free=False, reference=None):.4f}",
            f"{task.main_metric} %": f"{C.metrics(model, val, task.name)[task.main_metric]:.2f}",
        })  # fmt: skip
        logger.info("%s", rows[-1])
        del model
    text = C.header("Search masks with and without Kwon et al.'s rearrangement", note=args.note)
    n_fit, n_held = (sum(len(b["input_ids"]) for b in part) for part in (fit, held))
    text += (
        f"\nTeacher: {source} ({task.dir_name}, validation {task.main_metric} {dense:.2f} on {len(val_rows)} "
        f"examples). Budget: {args.flops:.0%} of the encoder FLOPs. Gradients on {n_fit} random train examples; "
        f"held-back loss on {n_held} others (what `sp.compress` chooses by). No reconstruction.\n\n"
    )
    text += C.md_table(rows) + "\n"
    out = C.write_atomic(Path(args.out) / f"rearrange_{args.model}_{task.name}.md", text)
    logger.info("wrote %s", out)
    return out


if __name__ == "__main__":
    print(main())
