"""What does ``import structprune`` cost next to ``import transformers``? (the budget: transformers + 10%)

    python benchmarks/import_time.py [--repeats 5] [--out benchmarks/results]

Each statement runs in ``--repeats`` fresh interpreters (``python -X importtime -c STATEMENT``, cwd outside
the repository, the same environment); the table gives the median of the import time that ``-X importtime``
reports for the statement's top-level modules, and the median wall time of the whole process (interpreter
start-up included). ``import structprune`` imports no torch, datasets or accelerate: each name loads its
module on first use, which the "first use" rows price.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

BUDGET = 1.10  # import structprune <= 1.1 x import transformers
STATEMENTS = {
    "import transformers": "the reference",
    "import structprune": "what the budget is about",
    "import torch": "for scale: what every model needs",
    "from transformers import AutoModel": "first use of transformers' Auto classes (imports torch)",
    "import structprune as sp; sp.prune_": "first use of a structprune function (imports torch, transformers)",
}
_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$")


def top_level_us(stderr: str) -> int:
    """Sum of the cumulative import times (us) of the top-level imports in ``-X importtime`` output
    (the interpreter's own start-up imports, which come before ``site`` finishes, are left out)."""
    rows = [m.groups() for line in stderr.splitlines() if (m := _LINE.match(line))]
    names = [name for _, _, indent, name in rows if not indent]
    start = names.index("site") + 1 if "site" in names else 0  # everything after start-up
    return sum(int(cum) for _, cum, indent, name in rows if not indent and names.index(name) >= start)


def measure(statement: str, repeats: int, cwd: str) -> dict[str, float]:
    imports, walls = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", statement],
            capture_output=True,
            text=True,
            cwd=cwd,
            check=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        walls.append(time.perf_counter() - start)
        imports.append(top_level_us(done.stderr) / 1e6)
    return {"import_s": statistics.median(imports), "wall_s": statistics.median(walls)}


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="Fresh processes per statement (median).")
    p.add_argument("--out", type=Path, default=C.RESULTS, help="Folder for import_time.md.")
    p.add_argument("--smoke", action="store_true", help="One process per statement.")
    p.add_argument("--note", default="", help="Added to the header (e.g. 'machine shared').")
    args = p.parse_args(argv)
    repeats = 1 if args.smoke else args.repeats
    with tempfile.TemporaryDirectory() as cwd:
        results = {s: measure(s, repeats, cwd) for s in STATEMENTS}
    ref = results["import transformers"]
    rows = [
        {
            "statement": f"`{s}`",
            "what": what,
            "import ms": f"{r['import_s'] * 1000:.0f}",
            "x transformers": f"{r['import_s'] / ref['import_s']:.2f}",
            "process wall ms": f"{r['wall_s'] * 1000:.0f}",
        }
        for (s, what), r in zip(STATEMENTS.items(), results.values(), strict=True)
    ]
    ratio = results["import structprune"]["import_s"] / ref["import_s"]
    verdict = "within" if ratio <= BUDGET else "OVER"
    text = C.header("Import time", note=args.note)
    text += (
        f"- Median of {repeats} fresh processes per row; import time as reported by `python -X importtime` "
        "(top-level imports after start-up), wall time of the whole process.\n"
        f"- `import structprune` / `import transformers` = {ratio:.2f}: {verdict} the budget of "
        f"{BUDGET:.2f}.\n\n"
    )
    text += C.md_table(rows)
    return C.write_atomic(args.out / "import_time.md", text)


if __name__ == "__main__":
    print(main())
