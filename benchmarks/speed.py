"""The speed table a user acts on: the SST-2 MiniLM, dense and pruned, in PyTorch and ONNX Runtime (fp32, int8).

The teacher (the best SST-2 teacher in the teachers' cache, else the reference one, see ``--teacher``) is
compressed to each encoder-FLOPs budget with ``sp.compress`` (Fisher scores, constrained search,
reconstruction; FFN widths rounded to ``--multiple-of``) and, unless ``--distill-examples 0``, distilled from the teacher for one epoch on that
many SST-2 train sentences (the demo recipe's losses: labels 0.5, logits 1.0 at T=2, hidden states 1.0).
``--shallow F:K`` adds a student of F FLOPs in K layers (the same FLOPs in fewer, wider layers).

Each model then runs in five runtimes: PyTorch fp32 (eager); PyTorch fp32 under ``torch.compile`` (TorchInductor:
the same model as one graph with fused element-wise kernels, no Python between the layers; ``--compile-backend``);
ONNX Runtime fp32 (``sp.export_onnx(optimize=True)``: fused Attention / LayerNormalization / BiasGelu,
parity-checked); ONNX Runtime int8 (``sp.quantize_onnx`` of that graph: one scale per weight column), and the
same with one scale per weight matrix (``per_channel=False``, onnxruntime's default) for comparison.
Accuracy: the SST-2 validation set in each runtime (int8 changes it). Latency: batch 1 and 32 x 128 random tokens
(no padding), every model x runtime measured round robin in one loop (warm-up, then the median). At batch 1 each
round runs a model ``--block`` times in a row: the table's ms are its warm calls (a server running one model), and
the first call after another model's (what a plain round robin measures; likely colder caches) is shown beside them.
``--timing-threads`` (default ``--threads``) threads in both runtimes;
ONNX Runtime's threads spin during a run and stop when it returns (``_common.ort_session``), so one session cannot
steal the next one's cores. On a shared machine ``--pause-while-timing PATTERN ...`` pauses the other jobs while
the models are timed (the compression and distillation still share the machine).

Columns: speedup = dense PyTorch fp32 ms / this ms. Efficiency = speedup x FLOPs kept, i.e. speedup /
FLOPs reduction (1.0: the FLOPs cut all turned into speed); "efficiency, same runtime" measures the pruned
model against the dense model in its own runtime (what pruning alone buys there).

Run (from the repository root; an estimated 15-25 minutes on 2 quiet cores, most of it distillation)::

    .venv/bin/python benchmarks/speed.py
    .venv/bin/python benchmarks/speed.py --smoke --out /tmp/bench   # seconds, numbers meaningless
"""

from __future__ import annotations

import copy
import logging
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import structprune as sp  # noqa: E402
from structprune.allocation.latency import synthetic_batch  # noqa: E402
from structprune.data import make_dataloader  # noqa: E402
from structprune.recovery.distill import flops_fraction  # noqa: E402

logger = logging.getLogger("speed")

RUNTIMES = (
    "PyTorch fp32",
    "PyTorch fp32, torch.compile",
    "ONNX Runtime fp32 (fused)",
    "ONNX Runtime int8",
    "ONNX Runtime int8, one scale per matrix",
)
# torch.compile keys its cache on the code it compiles, which every model here shares (the same classes): the
# defaults (8 entries per frame) would fall back to eager after a few models and shapes, silently
DYNAMO_CACHE_LIMIT = 256


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--teacher",
        type=Path,
        default=None,
        help="fine-tuned SST-2 teacher folder (default: the best SST-2 teacher in the teachers' cache, "
        f"_common.best_cached_teacher; else {C.TEACHER_HELP['sst2']})",
    )
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.25, 0.1], help="encoder FLOPs kept")
    p.add_argument(
        "--shallow",
        nargs="*",
        default=["0.1:3"],
        metavar="F:K",
        help="extra students: F of the FLOPs in K layers (none: --shallow with no value)",
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    C.add_timing_flags(p, repeat_help="timed rounds at batch < 8")
    p.add_argument("--repeat-large", type=int, default=7, help="timed rounds at batch >= 8")
    p.add_argument(
        "--block",
        type=int,
        default=5,
        help="batch < 8: calls of one model x runtime in a row per round. The table's ms are the median of the "
        "block's later calls (warm, as a server running one model sees it); the first call of each block, "
        "which follows another model as a plain round robin's every call does, is shown beside them",
    )
    C.add_quiet_timing_flags(p)
    p.add_argument("--calib", type=int, default=1000, help="SST-2 train examples for sp.compress")
    p.add_argument(
        "--multiple-of",
        type=int,
        default=32,
        help="FFN widths rounded to this multiple (sp.compress(multiple_of=)); 32 and 64 ran thin students "
        "faster at batch 32 with no accuracy cost, 8 did not",
    )
    p.add_argument(
        "--distill-examples",
        type=int,
        default=16000,
        help="SST-2 train examples, one epoch (0: no distillation)",
    )
    p.add_argument(
        "--val-examples", type=int, default=None, help="first N validation sentences (default: all)"
    )
    p.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of the compiled runtime (default inductor: needs a C++ compiler on CPU; "
        "--smoke uses aot_eager)",
    )
    args = p.parse_args(argv)
    if args.block < 1:
        p.error(f"--block must be >= 1, got {args.block}")
    args.shallow = [_shallow(s) for s in args.shallow]
    if args.smoke:
        args.fractions = [0.5]
        args.shallow = [(0.5, 1)]
        args.batch_sizes = [1, 2]
        args.seq = 16
        args.warmup, args.repeat, args.repeat_large, args.block = 1, 2, 2, 2
        args.calib, args.distill_examples, args.val_examples = 32, 32, 32
        args.multiple_of = 8
        # the graph capture without compiling kernels: seconds, no compiler
        args.compile_backend = "aot_eager"
    return args


def _shallow(text: str) -> tuple[float, int]:
    try:
        f, k = text.split(":")
        return float(f), int(k)
    except ValueError as err:
        raise SystemExit(f"--shallow {text!r}: give FLOPS:LAYERS, e.g. 0.1:3") from err


def teacher_path(args) -> tuple[Path, str]:
    if args.teacher is not None:
        return args.teacher, str(args.teacher)
    cached, _ = C.best_cached_teacher("sst2")
    if cached is not None:
        return cached, f"cached teacher {cached.name}"
    return C.default_teacher("sst2"), C.default_teacher("sst2").name


# --------------------------------------------------------------------------- students


def students(teacher, tok, args) -> list[tuple[str, float | None, torch.nn.Module]]:
    """``(name, FLOPs budget or None for dense, model)`` for the dense teacher and every student."""
    calib_rows = C.load_examples("sst2", "train", args.data_dir, limit=args.calib, seed=args.seed)
    calib = C.make_batches(calib_rows, tok, "sst2", batch_size=32, max_length=128)
    train = None
    if args.distill_examples:
        pool = C.load_examples("sst2", "train", args.data_dir, seed=args.seed + 1)
        rows = pool.select(range(min(args.distill_examples, len(pool))))
        train = make_dataloader(rows, tok, "sst2", batch_size=32, max_length=64, shuffle=True, seed=args.seed)
    out = [("dense", None, teacher)]
    budgets = [(f, None) for f in args.fractions] + [(f, k) for f, k in args.shallow]
    for f, layers in budgets:
        name = f"{f:.0%} FLOPs" + (f", {layers} layer{'s' * (layers > 1)}" if layers else "")
        student, report = sp.compress(
            copy.deepcopy(teacher),
            calib,
            flops=f,
            layers=layers,
            multiple_of=args.multiple_of,
            progress=False,
        )
        logger.info("%s: compress kept %.1f%% FLOPs (%s)", name, 100 * report.flops_kept, report.choice)
        if train is not None:
            cfg = sp.DistillConfig(
                task="sst2",
                num_epochs=1,
                learning_rate=1e-4,
                task_weight=0.5,
                logit_weight=1.0,
                temperature=2.0,
                hidden_weight=1.0,
                progress=False,
                seed=args.seed,
            )
            student, _ = sp.distill(student, teacher, train, None, config=cfg)
        student.eval()
        out.append((name, f, student))
    return out


# --------------------------------------------------------------------------- runtimes


def runtimes(model, tag: str, tmp: Path, threads: int, backend: str = "inductor"):
    """``({runtime: callable(batch) -> logits}, FusionReport)``: PyTorch fp32 eager and compiled, the fused ONNX
    graph and its int8 versions (``sp.quantize_onnx``'s default, one scale per weight column, and onnxruntime's
    default, one per matrix)."""
    fused = sp.export_onnx(model, tmp / f"{tag}.onnx", optimize=True)
    logger.info("%s: %s (max |ORT - torch| %.1e)", tag, fused.fusion.summary(), fused.max_abs_diff)
    int8 = sp.quantize_onnx(fused, tmp / f"{tag}-int8.onnx")
    per_matrix = sp.quantize_onnx(fused, tmp / f"{tag}-int8-per-matrix.onnx", per_channel=False)
    out = {
        RUNTIMES[0]: _torch_runner(model),
        RUNTIMES[1]: _torch_runner(torch.compile(model, backend=backend, dynamic=False)),
    }
    for runtime, path in zip(RUNTIMES[2:], (fused.path, int8, per_matrix), strict=True):
        out[runtime] = _ort_runner(C.ort_session(path, threads))  # the timing threads
    return out, fused.fusion


def _torch_runner(model):
    def run(batch):
        with torch.inference_mode():
            return model(**{k: v for k, v in batch.items() if k != "labels"}).logits

    return run


def _ort_runner(session):
    def run(batch):
        return torch.from_numpy(session.run(["logits"], C.ort_feed(session, batch))[0])

    return run


def _block(batch: int, args) -> int:
    """Calls of one model x runtime in a row per round: ``--block`` at batch < 8, else 1."""
    return args.block if batch < 8 else 1


def _block_text(args) -> str:
    if args.block <= 1:
        return "Each round calls each model x runtime once; ms = the median."
    return (
        f"At batch < 8 each round calls each model x runtime {args.block} times in a row: ms = the median of the "
        f"later {args.block - 1} calls (warm, the model having just run, as a server running one model sees it); "
        "'ms, after another model' = the median of the first calls, which follow another model's run (likely "
        "with colder caches). At batch >= 8 each round calls each once; ms = the median."
    )


def _busy_text(busy: dict[int, float | None]) -> str:
    return ", ".join(f"batch {b}: " + ("unknown" if v is None else f"{v:.2f}") for b, v in busy.items())


def accuracy(run, batches: list[dict]) -> float:
    correct = total = 0
    for b in batches:
        correct += int((run(b).argmax(-1) == b["labels"]).sum())
        total += len(b["labels"])
    return 100.0 * correct / total


# --------------------------------------------------------------------------- main


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    if args.smoke:
        teacher, tok = C.model_and_tokenizer(args)
        source = "tiny random BERT (smoke run)"
    else:
        path, source = teacher_path(args)
        teacher, tok = C.load_teacher(path), C.tokenizer_for(path)
    val_rows = C.load_examples("sst2", "validation", args.data_dir, limit=args.val_examples)
    val = C.make_batches(val_rows, tok, "sst2", batch_size=64, max_length=args.seq)
    # the compiled runtime is compiled for static shapes (one graph per input shape, as a server padding to a fixed
    # length runs it): its accuracy pass gets the same batches padded to --seq tokens (the attention mask hides it)
    val_static = list(
        make_dataloader(val_rows, tok, "sst2", batch_size=64, max_length=args.seq, bucket=False,
                        pad_to_multiple_of=args.seq)
    )  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="sp-speed-"))
    models = students(teacher, tok, args)
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = DYNAMO_CACHE_LIMIT
    torch._dynamo.config.accumulated_cache_size_limit = DYNAMO_CACHE_LIMIT * 4

    runs, rows = {}, []
    for i, (name, _, model) in enumerate(models):
        per_runtime, fusion = runtimes(
            model, f"m{i}", tmp, args.timing_threads or args.threads, args.compile_backend
        )
        st = sp.arch.view(model).structure
        kept = flops_fraction(model, args.seq)
        for runtime, run in per_runtime.items():
            runs[(name, runtime)] = run
            rows.append(
                {
                    "model": name,
                    "layers x heads, FFN": f"{len(st.layers)} x {sum(st.heads_per_layer)}, {sum(st.ffn_per_layer)}",
                    "FLOPs kept": kept,
                    "runtime": runtime,
                    "fused": fusion.summary() if runtime.startswith("ONNX") else "",
                    "SST-2 acc %": accuracy(run, val_static if runtime == RUNTIMES[1] else val),
                }
            )
            logger.info("%s / %s: accuracy %.2f", name, runtime, rows[-1]["SST-2 acc %"])

    busy: dict[int, float | None] = {}
    for b in args.batch_sizes:
        x = synthetic_batch(teacher, b, args.seq)
        calls = {key: (lambda run=run, x=x: run(x)) for key, run in runs.items()}
        block = _block(b, args)
        repeat = args.repeat if b < 8 else args.repeat_large
        with C.quiet_timing(args) as quiet:
            times = C.time_in_blocks(calls, warmup=args.warmup, repeat=repeat, block=block)
        busy[b] = quiet.other_cores
        ms = {key: 1e3 * C.median(later or first) for key, (first, later) in times.items()}
        if block > 1:
            for row in rows:
                row[f"b{b} ms, after another model"] = 1e3 * C.median(
                    times[(row["model"], row["runtime"])][0]
                )
        base = ms[("dense", RUNTIMES[0])]
        for row in rows:
            t = ms[(row["model"], row["runtime"])]
            same = ms[("dense", row["runtime"])]
            row[f"b{b} ms"] = t
            row[f"b{b} speedup"] = base / t
            row[f"b{b} efficiency"] = base / t * row["FLOPs kept"]
            row[f"b{b} efficiency, same runtime"] = (
                same / t * row["FLOPs kept"] if row["model"] != "dense" else None
            )
        logger.info("batch %d: %s", b, {f"{k[0]} / {k[1]}": round(v, 2) for k, v in ms.items()})

    for row in rows:
        row["FLOPs kept"] = f"{row['FLOPs kept']:.1%}"
    cols = ["model", "FLOPs kept", "runtime", "SST-2 acc %"]
    for b in args.batch_sizes:
        cols += [f"b{b} ms", f"b{b} speedup", f"b{b} efficiency", f"b{b} efficiency, same runtime"]
        if _block(b, args) > 1:
            cols.insert(cols.index(f"b{b} ms") + 1, f"b{b} ms, after another model")
    note = args.note or "rerun on a quiet machine for final numbers (see the load average)"
    text = C.header("Speed: dense vs pruned, PyTorch and ONNX Runtime, with accuracy", note=note)
    distilled = (
        f"then distilled for one epoch on {args.distill_examples} SST-2 train sentences (labels 0.5, logits 1.0 "
        "at T=2, hidden states 1.0)"
        if args.distill_examples
        else "no distillation"
    )
    text += (
        f"\nTeacher: {source}. Students: `sp.compress(teacher, {args.calib} SST-2 train examples, flops=f, "
        f"multiple_of={args.multiple_of}[, layers=k])`, {distilled}. Accuracy: {len(val_rows)} SST-2 validation sentences in each runtime. "
        f"Latency: batch {' and '.join(map(str, args.batch_sizes))} x {args.seq} random tokens, {args.warmup} "
        f"warm-up rounds, then {args.repeat} (batch < 8) / {args.repeat_large} (batch >= 8) timed rounds, every "
        f"model x runtime in one round robin. {_block_text(args)} {args.timing_threads or args.threads} threads "
        "(torch.set_num_threads; ONNX Runtime intra-op threads, spinning only during a run). Other processes' "
        f"load while timing (cores): {_busy_text(busy)}. torch.compile: `torch.compile(model, "
        f"backend={args.compile_backend!r}, dynamic=False)`, static shapes: its accuracy pass pads the validation "
        f"batches to {args.seq} tokens, and each input shape is compiled once, on the accuracy pass or in the "
        "warm-up rounds. ONNX Runtime fp32: `sp.export_onnx(model, path, "
        "optimize=True)`; int8: `sp.quantize_onnx` of that graph (dynamic quantization, one scale per weight "
        "column, its default); int8, one scale per matrix: the same with `per_channel=False` (onnxruntime's "
        "default).\n\n"
        "Speedup: dense PyTorch fp32 ms / this ms. Efficiency: speedup x FLOPs kept (= speedup / FLOPs "
        "reduction). Efficiency, same runtime: the same against the dense model in this row's runtime.\n\n"
    )
    text += C.md_table(rows, cols)
    fusions = {r["model"]: r["fused"] for r in rows if r["fused"]}
    text += "\nONNX Runtime fusion (fp32 graphs):\n\n" + "".join(f"- {k}: {v}\n" for k, v in fusions.items())
    out = C.write_atomic(Path(args.out) / "speed.md", text)
    logger.info("wrote %s", out)
    return out


if __name__ == "__main__":
    print(main())
