"""One short GPU check: CUDA correctness of surgery, mixed-precision distillation, and GPU latency.

Run on a CUDA machine from the repository root:

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.md

1. pruned == masked on CUDA for every family (fp32, and bf16 autocast within bf16 tolerance);
2. the distillation loop (with gradual pruning) in bf16 and fp16 mixed precision: finite losses, the
   student ends smaller and on the GPU;
3. latency of a MiniLM-shaped classifier (random weights: latency does not depend on them) dense vs pruned
   to 50% / 25% encoder FLOPs, fp16, batch 1 and 32 x seq 128, measured alternately.
It writes a Markdown report; it is not part of the test suite (CI has no GPU).
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import tiny  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

import structprune as sp  # noqa: E402
from structprune.recovery.distill import DistillConfig, PruneSchedule, distill, flops_fraction  # noqa: E402
from structprune.report import markdown_table  # noqa: E402


def check_surgery() -> list[list]:
    rows = []
    for family in tiny.FAMILIES:
        m = tiny.model(family).cuda()
        mask = sp.allocate(sp.score(m, method="magnitude"), m, flops=0.5)
        b = {k: v.cuda() for k, v in tiny.batch(seed=3).items() if k != "labels"}
        with torch.no_grad(), sp.gates.Gates.from_mask(mask).attach(m):
            ref = m(**b).logits
            with torch.autocast("cuda", dtype=torch.bfloat16):
                ref16 = m(**b).logits.float()
        sp.prune_(m, mask)
        with torch.no_grad():
            out = m(**b).logits
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out16 = m(**b).logits.float()
        err, err16 = (out - ref).abs().max().item(), (out16 - ref16).abs().max().item()
        rows.append([family, f"{err:.1e}", f"{err16:.1e}", "ok" if err < 1e-4 and err16 < 5e-2 else "FAIL"])
    return rows


def _loader(n=64, batch_size=8, shuffle=True, seed=0, seq_len=16):
    """A learnable toy 3-class task: the label is the second token id modulo 3."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, tiny.VOCAB, (n, seq_len), generator=g)
    rows = [{"input_ids": ids[i], "attention_mask": torch.ones(seq_len, dtype=torch.long), "labels": ids[i, 1] % 3}
            for i in range(n)]  # fmt: skip
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle)


def check_distill() -> list[list]:
    rows = []
    for precision in ("bf16", "fp16"):
        teacher = tiny.model("bert").cuda()
        student = copy.deepcopy(teacher)
        sp.prune_(student, sp.allocate(sp.score(student, method="magnitude"), student, flops=0.5))
        cfg = DistillConfig(
            num_epochs=3, mixed_precision=precision, hidden_weight=1.0, attention_weight=1.0,
            prune=PruneSchedule(to=0.3, steps=2), progress=False, task="mnli", learning_rate=2e-3,
        )  # fmt: skip
        t0 = time.perf_counter()
        student, history = distill(student, teacher, _loader(), _loader(shuffle=False), config=cfg)
        losses = [r["loss"] for r in history if "loss" in r]
        finite = bool(losses) and all(torch.isfinite(torch.tensor(losses)))
        kept = flops_fraction(student)
        on_gpu = next(student.parameters()).is_cuda
        rows.append([precision, len(losses), f"{losses[0]:.3f} -> {losses[-1]:.3f}", f"{kept:.2f}", on_gpu,
                     f"{time.perf_counter() - t0:.1f}", "ok" if finite and on_gpu and kept <= 0.3 + 1e-6 else "FAIL"])  # fmt: skip
    return rows


def check_latency() -> list[list]:
    cfg = BertConfig(
        hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, num_labels=2
    )
    torch.manual_seed(0)
    dense = BertForSequenceClassification(cfg).cuda().half().eval()
    rows = []
    for flops in (0.5, 0.25):
        pruned = copy.deepcopy(dense)
        sp.prune_(pruned, sp.allocate(sp.score(pruned, method="magnitude"), pruned, flops=flops))
        for bs in (1, 32):
            lat = sp.measure_latency(
                {"dense": dense, "pruned": pruned}, batch_size=bs, seq_len=128, warmup=10, repeats=100
            )
            d, p = lat["dense"]["median_ms"], lat["pruned"]["median_ms"]
            rows.append(
                [f"{flops:.0%}", bs, f"{d:.3f}", f"{p:.3f}", f"{d / p:.2f}", f"{(d / p) * flops:.2f}"]
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.md"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    import transformers

    header = [
        "# GPU check",
        "",
        f"Command: `python benchmarks/gpu_check.py --out {args.out}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        f"Device: {torch.cuda.get_device_name()} ({platform.machine()}), torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}",
        "",
    ]
    sections = [
        ("## 1. Surgery on CUDA: max |pruned - masked| of the logits", ["family", "fp32", "bf16 autocast", ""],
         check_surgery()),
        ("## 2. Distillation with gradual pruning (to 30% FLOPs) in mixed precision",
         ["precision", "logged steps", "loss first -> last", "FLOPs kept", "on GPU", "seconds", ""], check_distill()),
        ("## 3. GPU latency, MiniLM shape (6 x 384, 12 heads, FFN 1536), fp16, seq 128, median of 100 after 10 warm-up",
         ["FLOPs kept", "batch", "dense ms", "pruned ms", "speedup", "speedup x FLOPs kept"], check_latency()),
    ]  # fmt: skip
    text = "\n".join(header)
    for title, cols, rows in sections:
        text += f"\n{title}\n\n" + markdown_table(cols, rows) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0 if "FAIL" not in text else 2


if __name__ == "__main__":
    raise SystemExit(main())
