"""Pruning and int8 quantization compose: SST-2 accuracy, size on disk and CPU latency of the MiniLM teacher.

The dense SST-2 teacher and a copy pruned to half its encoder FLOPs (Taylor scores on 8 x 32 SST-2 train
examples, global allocation, no retraining) are each saved with ``sp.save_pretrained``, exported with
``sp.export_onnx`` (fp32, parity-checked against PyTorch; plain, and ``optimize=True``: ONNX Runtime's fused
Attention / LayerNormalization / BiasGelu) and each graph quantized with ``sp.quantize_onnx``
(onnxruntime dynamic int8: int8 weights, activations quantized per batch; the fused attention becomes
``QAttention``). Accuracy is on all 872 SST-2
validation sentences; latency is the median of alternating runs on full 128-token sequences, every variant
under the same machine load.

Run (from the repository root; a few minutes on 2 cores)::

    .venv/bin/python benchmarks/quantize.py
    .venv/bin/python benchmarks/quantize.py --smoke --out /tmp/bench   # seconds, numbers meaningless
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
from structprune.export.onnx import onnx_max_abs_diff  # noqa: E402
from structprune.recovery.distill import flops_fraction  # noqa: E402

logger = logging.getLogger("quantize")


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    C.add_teacher_flag(p)
    p.add_argument("--flops", type=float, default=0.5, help="encoder FLOPs fraction kept")
    p.add_argument("--calib", type=int, default=256, help="SST-2 train examples used for scoring")
    p.add_argument("--batch", type=int, default=8, help="latency batch size")
    C.add_timing_flags(p)
    return p.parse_args(argv)


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**20


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    teacher, tok = C.model_and_tokenizer(args)
    if args.smoke:
        args.calib, args.repeat, args.warmup, args.seq = 32, 2, 1, 32
    val_rows = C.load_examples("sst2", "validation", args.data_dir, limit=32 if args.smoke else None)
    calib_rows = C.load_examples("sst2", "train", args.data_dir, limit=args.calib, seed=args.seed)
    val = C.make_batches(val_rows, tok, "sst2", batch_size=32, max_length=128)
    calib = C.make_batches(calib_rows, tok, "sst2", batch_size=32, max_length=64)

    pruned = copy.deepcopy(teacher)
    scores = sp.score(pruned, calib, method="taylor", progress=False)
    sp.prune_(pruned, sp.allocate(scores, pruned, flops=args.flops))
    flops = flops_fraction(pruned)
    logger.info("pruned to %.1f%% of the encoder FLOPs", 100 * flops)

    rows, timed, parity, fusion = [], {}, {}, {}
    x = synthetic_batch(teacher, args.batch, args.seq)
    with tempfile.TemporaryDirectory(prefix="structprune-quantize-") as tmp:
        tmp = Path(tmp)
        for name, model in (("dense", teacher), (f"pruned to {flops:.0%} FLOPs", pruned)):
            folder = sp.save_pretrained(model, tmp / name.split()[0], tokenizer=tok)
            tag = name.split()[0]
            fp32 = sp.export_onnx(model, tmp / f"{tag}.onnx")
            int8 = sp.quantize_onnx(fp32, tmp / f"{tag}-int8.onnx")
            fused = sp.export_onnx(model, tmp / f"{tag}-fused.onnx", optimize=True)
            fused_int8 = sp.quantize_onnx(fused, tmp / f"{tag}-fused-int8.onnx")
            first = {k: v for k, v in val[0].items() if k != "labels"}
            parity[name] = onnx_max_abs_diff(model, fp32, first)
            parity[f"{name}, fused"] = onnx_max_abs_diff(model, fused, first)
            fusion[name] = fused.fusion.summary()
            rows.append(
                {
                    "model": name,
                    "format": "PyTorch fp32 (safetensors)",
                    "size MB": (folder / "model.safetensors").stat().st_size / 2**20,
                    "accuracy %": C.accuracy(model, val),
                }
            )
            timed[(name, "PyTorch fp32 (safetensors)")] = lambda m=model: m(**x)
            variants = (("ONNX fp32", fp32), ("ONNX int8 (dynamic)", int8), ("ONNX fp32, fused", fused.path),
                        ("ONNX int8 (dynamic), fused", fused_int8))  # fmt: skip
            for label, path in variants:
                session = C.ort_session(path, args.threads)
                rows.append(
                    {
                        "model": name,
                        "format": label,
                        "size MB": path.stat().st_size / 2**20,
                        "accuracy %": C.ort_accuracy(session, val),
                    }
                )
                feed = C.ort_feed(session, x)
                timed[(name, label)] = lambda s=session, f=feed: s.run(None, f)
            logger.info("%s: folder %.1f MB", name, folder_mb(folder))
        with torch.inference_mode():
            times = C.time_alternating(timed, warmup=args.warmup, repeat=args.repeat)
    base = C.median(times[("dense", "PyTorch fp32 (safetensors)")])
    for row in rows:
        t = C.median(times[(row["model"], row["format"])])
        row["latency ms"] = 1000 * t
        row["speedup vs dense PyTorch"] = base / t

    note = "shared, busy machine: latencies are indicative" + (f"; {args.note}" if args.note else "")
    text = C.header("Pruning + int8 quantization (MiniLM SST-2 teacher)", note=note)
    text += (
        f"\nPruned: Taylor scores on {len(calib_rows)} SST-2 train examples, `sp.allocate(flops={args.flops})`, "
        f"no retraining: {len(sp.arch.view(pruned).structure.layers)} layers, "
        f"{sum(sp.arch.view(pruned).structure.heads_per_layer)} heads, {sum(sp.arch.view(pruned).structure.ffn_per_layer)} "
        "FFN neurons kept.\n"
        f"Accuracy: all {len(val_rows)} SST-2 validation examples. Latency: batch {args.batch} x {args.seq} tokens, "
        f"{args.threads} threads, median of {args.repeat} alternating runs. Size: the weights file "
        "(`model.safetensors` / the `.onnx` file).\n\n"
    )
    text += C.md_table(
        rows, ["model", "format", "size MB", "accuracy %", "latency ms", "speedup vs dense PyTorch"]
    )
    text += "\nONNX fp32 parity with PyTorch (max |logit difference| on one validation batch): "
    text += ", ".join(f"{k}: {v:.1e}" for k, v in parity.items()) + "\n"
    text += (
        "\nONNX Runtime fusion (`optimize=True`): " + "; ".join(f"{k}: {v}" for k, v in fusion.items()) + "\n"
    )
    return C.write_atomic(Path(args.out) / "quantize.md", text)


if __name__ == "__main__":
    print(main())
