"""Real speedup of pruned vs dense models: CPU latency in PyTorch and ONNX Runtime.

The dense SST-2 teacher is scored once (Taylor, a few SST-2 batches), then pruned to each encoder-FLOPs
budget with ``sp.allocate`` + ``sp.prune_``. For every budget and batch size the dense and the pruned
model are timed alternately in the same process (warm-up, then the median of repeated runs) on full
128-token sequences. Speedup = dense / pruned latency; efficiency = speedup / FLOPs reduction, where the
FLOPs reduction is dense / pruned encoder FLOPs (target: efficiency >= 0.85 at batch 32). A second table
shows how rounding FFN widths to ``multiple_of`` changes latency at one budget.

Run (from the repository root; about 15 minutes on 2 quiet cores)::

    .venv/bin/python benchmarks/latency.py
    .venv/bin/python benchmarks/latency.py --smoke --out /tmp/bench   # seconds, numbers meaningless
"""

from __future__ import annotations

import copy
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import structprune as sp  # noqa: E402
from structprune.allocation.latency import synthetic_batch  # noqa: E402
from structprune.recovery.distill import flops_fraction  # noqa: E402

logger = logging.getLogger("latency")


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    C.add_teacher_flag(p)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.7, 0.6, 0.5, 0.4, 0.25, 0.1])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    C.add_timing_flags(p, repeat_help="timed runs per model at batch < 8")
    p.add_argument("--repeat-large", type=int, default=7, help="timed runs per model at batch >= 8")
    p.add_argument("--calib-batches", type=int, default=4, help="SST-2 batches of 32 for Taylor scores")
    p.add_argument("--multiple-of", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--multiple-of-fraction", type=float, default=0.5)
    p.add_argument("--multiple-of-batch", type=int, default=32)
    p.add_argument("--no-onnx", action="store_true", help="PyTorch only")
    p.add_argument(
        "--onnx",
        choices=["fused", "plain"],
        default="fused",
        help="ONNX graph: fused by ONNX Runtime's transformer optimizer (sp.export_onnx(optimize=True)) or plain",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.fractions = [0.5]
        args.batch_sizes = [1, 2]
        args.seq = 16
        args.warmup, args.repeat, args.repeat_large = 1, 2, 2
        args.calib_batches = 1
        args.multiple_of = [1, 8]  # 1 reuses the main table's model
        args.multiple_of_batch = 2
    return args


# --------------------------------------------------------------------------- models


def dense_model_and_batches(args):
    model, tok = C.model_and_tokenizer(args)
    rows = C.load_examples("sst2", "train", args.data_dir, limit=32 * args.calib_batches, seed=args.seed)
    batches = C.make_batches(rows, tok, "sst2", batch_size=8 if args.smoke else 32, max_length=args.seq)
    return model, batches


def pruned_copy(dense, scores, fraction: float, multiple_of: int = 1):
    model = copy.deepcopy(dense)
    mask = sp.allocate(scores, model, flops=fraction, multiple_of=multiple_of)
    sp.prune_(model, mask)
    model.eval()
    return model


# --------------------------------------------------------------------------- backends


def onnx_runner(path: Path, inputs: dict, threads: int):
    session = C.ort_session(path, threads)
    feed = C.ort_feed(session, inputs)

    def run():
        session.run(None, feed)

    return run


# --------------------------------------------------------------------------- measurement


def compare(dense_run, pruned_run, args, batch: int) -> tuple[float, float]:
    repeat = args.repeat if batch < 8 else args.repeat_large
    t = C.time_alternating({"dense": dense_run, "pruned": pruned_run}, warmup=args.warmup, repeat=repeat)
    return C.median(t["dense"]) * 1e3, C.median(t["pruned"]) * 1e3


def row(backend, fraction, kept, batch, dense_ms, pruned_ms, heads, ffn, multiple_of=1):
    speedup = dense_ms / pruned_ms
    return {
        "backend": backend,
        "target FLOPs": f"{fraction:.0%}",
        "kept FLOPs": f"{kept:.1%}",
        "multiple_of": multiple_of,
        "heads": heads,
        "FFN": ffn,
        "batch": batch,
        "dense ms": dense_ms,
        "pruned ms": pruned_ms,
        "speedup": speedup,
        "FLOPs reduction": 1 / kept,
        "efficiency": speedup * kept,
    }


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    dense, batches = dense_model_and_batches(args)
    scores = sp.score(dense, batches, method="taylor", progress=False)
    inputs = {b: synthetic_batch(dense, b, args.seq) for b in args.batch_sizes}
    backends = ["torch"] if args.no_onnx else ["torch", "onnxruntime"]
    tmp = Path(tempfile.mkdtemp(prefix="sp-latency-"))
    dense_onnx = None

    def export(model, path):
        if args.onnx == "plain":
            return sp.export_onnx(model, path)
        out = sp.export_onnx(model, path, optimize=True)
        logger.info("%s: %s", path.name, out.fusion.summary())
        return out.path

    if "onnxruntime" in backends:
        dense_onnx = export(dense, tmp / "dense.onnx")

    def measure_model(model, fraction, multiple_of, batch_sizes, tag):
        kept = flops_fraction(model, args.seq)
        st = sp.arch.view(model).structure
        heads, ffn = sum(st.heads_per_layer), sum(st.ffn_per_layer)
        out = []
        onnx_path = None
        if "onnxruntime" in backends:
            onnx_path = export(model, tmp / f"{tag}.onnx")
        for b in batch_sizes:
            x = inputs.setdefault(b, synthetic_batch(dense, b, args.seq))
            repeat = args.repeat if b < 8 else args.repeat_large
            lat = sp.measure_latency(
                {"dense": dense, "pruned": model},
                batch_size=b,
                seq_len=args.seq,
                warmup=args.warmup,
                repeats=repeat,
            )
            d, p = lat["dense"]["median_ms"], lat["pruned"]["median_ms"]
            out.append(row("PyTorch", fraction, kept, b, d, p, heads, ffn, multiple_of))
            logger.info("%s torch b=%d: dense %.1f ms, pruned %.1f ms", tag, b, d, p)
            if onnx_path is not None:
                d, p = compare(
                    onnx_runner(dense_onnx, x, args.threads), onnx_runner(onnx_path, x, args.threads), args, b
                )
                out.append(row("ONNX Runtime", fraction, kept, b, d, p, heads, ffn, multiple_of))
                logger.info("%s ort b=%d: dense %.1f ms, pruned %.1f ms", tag, b, d, p)
        return out

    rows = []
    for f in args.fractions:
        rows += measure_model(pruned_copy(dense, scores, f), f, 1, args.batch_sizes, f"f{f}")
    mrows = []
    for m in args.multiple_of:
        same = [
            r
            for r in rows
            if m == 1
            and r["target FLOPs"] == f"{args.multiple_of_fraction:.0%}"
            and r["batch"] == args.multiple_of_batch
        ]
        if same:  # multiple_of=1 is the main table's model: reuse its measurement
            mrows += same
            continue
        model = pruned_copy(dense, scores, args.multiple_of_fraction, m)
        mrows += measure_model(model, args.multiple_of_fraction, m, [args.multiple_of_batch], f"m{m}")

    cols = ["backend", "target FLOPs", "kept FLOPs", "heads", "FFN", "batch", "dense ms", "pruned ms"]
    cols += ["speedup", "FLOPs reduction", "efficiency"]
    eff = ", ".join(
        f"{r['backend']} {r['target FLOPs']}: {r['efficiency']:.2f}"
        for r in rows
        if r["batch"] == max(args.batch_sizes)
    )
    text = C.header(
        "Latency: pruned vs dense",
        note=args.note
        or "indicative only if the machine was shared (see load average); rerun on a quiet machine for final numbers",
    )
    text += (
        f"\nModel: {'tiny random BERT (smoke run)' if args.smoke else args.teacher.name} (dense: "
        f"{sum(sp.arch.view(dense).structure.heads_per_layer)} heads, {sum(sp.arch.view(dense).structure.ffn_per_layer)} FFN "
        f"neurons). Scores: Taylor on {args.calib_batches} SST-2 train batches; `sp.allocate(scores, model, "
        f"flops=f)` (global) + `sp.prune_`. Inputs: random token ids, full length {args.seq}, no padding. "
        f"Timing (PyTorch: `sp.measure_latency`; ONNX Runtime: the same protocol): {args.warmup} warm-up rounds, then the median of {args.repeat} (batch < 8) / "
        f"{args.repeat_large} (batch >= 8) runs, dense and pruned alternating; {args.threads} threads "
        "(torch.set_num_threads; ORT intra_op_num_threads, threads spinning only during a run: `_common.ort_session`). ONNX: "
        + (
            "`sp.export_onnx(model, path, optimize=True)` (ONNX Runtime's fused Attention, LayerNormalization, "
            "BiasGelu)"
            if args.onnx == "fused"
            else "`sp.export_onnx(model, path)` (not fused)"
        )
        + ", ORT graph optimizations ALL but SkipLayerNormFusion (`sp.onnx_session`).\n\n"
        "Speedup = dense ms / pruned ms. FLOPs reduction = dense / kept encoder FLOPs at this sequence length. "
        "Efficiency = speedup / FLOPs reduction (target >= 0.85 at batch 32).\n\n"
    )
    text += "## Speedup by budget\n\n" + C.md_table(rows, cols)
    text += f"\nEfficiency at batch {max(args.batch_sizes)}: {eff}\n"
    text += (
        f"\n## Effect of `multiple_of` (FFN widths rounded), {args.multiple_of_fraction:.0%} FLOPs, "
        f"batch {args.multiple_of_batch}\n\n"
    )
    text += C.md_table(mrows, ["backend", "multiple_of", *cols[2:]])
    out = C.write_atomic(args.out / "latency.md", text)
    _plot(rows, args, args.out / "latency.png")
    logger.info("wrote %s", out)
    return out


def _plot(rows, args, path):
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for backend in ("PyTorch", "ONNX Runtime"):
        for b in args.batch_sizes:
            pts = [r for r in rows if r["backend"] == backend and r["batch"] == b]
            if pts:
                ax.plot(
                    [r["FLOPs reduction"] for r in pts],
                    [r["speedup"] for r in pts],
                    marker="o",
                    label=f"{backend}, batch {b}",
                )
    lim = max([r["FLOPs reduction"] for r in rows] + [1.0])
    ax.plot([1, lim], [1, lim], "k--", lw=0.8, label="ideal (speedup = FLOPs reduction)")
    ax.plot([1, lim], [0.85, 0.85 * lim], "k:", lw=0.8, label="0.85 x FLOPs reduction")
    ax.set_xlabel("encoder FLOPs reduction (x)")
    ax.set_ylabel("measured speedup (x)")
    ax.set_title(f"Pruned vs dense latency, seq {args.seq}, {args.threads} threads")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
