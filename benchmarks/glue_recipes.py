"""Run GLUE recipes end to end and collect teacher vs 50%-FLOPs student into one table.

    python benchmarks/glue_recipes.py --tasks mrpc rte stsb cola [--set key=value ...]

Each task runs `structprune run recipes/glue/<task>.yaml output.dir=<runs>/<task>` (teacher fine-tuned by
the recipe itself, pruned with search + reconstruction, distilled, evaluated on the full validation set).
Runs resume: a finished task is only re-read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from structprune.report import markdown_table  # noqa: E402

ROOT = C.REPO


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["mrpc", "rte", "stsb", "cola"])
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "glue")
    ap.add_argument("--out", type=Path, default=C.RESULTS / "glue_recipes.md")
    ap.add_argument(
        "--set", nargs="*", default=[], dest="overrides", help="key=value overrides for every recipe"
    )
    args = ap.parse_args(argv)
    rows, walls = [], {}
    for task in args.tasks:
        out = args.runs / task
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "structprune.cli", "run", str(ROOT / "recipes" / "glue" / f"{task}.yaml"),
               f"output.dir={out}", "output.latency_repeats=3", *args.overrides]  # fmt: skip
        subprocess.run(cmd, check=True)
        walls[task] = time.perf_counter() - t0
        s = json.loads((out / "summary.json").read_text())
        for name in ("teacher", "student"):
            m = s["models"][name]
            metrics = next(iter(m["metrics"].values()))
            shown = ", ".join(f"{k} {100 * v:.2f}" for k, v in metrics.items() if k != "loss")
            rows.append([task, name, m["params"], f"{m['encoder_gflops']:.3f}", shown,
                         f"{m['latency_ms']:.1f}" if m["latency_ms"] else "-",
                         f"{walls[task]:.0f}" if name == "student" else ""])  # fmt: skip
    header = C.header("GLUE recipes: teacher vs 50%-FLOPs student")
    header += (
        "- Each row: `structprune run recipes/glue/<task>.yaml` (MiniLM-L6 fine-tuned by the recipe, pruned to 50% "
        "encoder FLOPs with Fisher + search + reconstruction, distilled), full validation set; latency at batch 32 x "
        "seq 128 (median of 3, teacher and student alternately). Wall time includes fine-tuning the teacher.\n\n"
    )
    table = markdown_table(
        ["task", "model", "params", "encoder GFLOPs", "validation metrics (%)", "CPU latency ms", "wall s"],
        rows,
    )
    C.write_atomic(args.out, header + table + "\n")
    print(table)
    return args.out


if __name__ == "__main__":
    main()
