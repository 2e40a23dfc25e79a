"""Latency as a budget: does a model pruned to ``latency=f`` run at f of the dense latency on this machine?

For each batch size, a :class:`structprune.LatencyModel` of the dense SST-2 teacher (all-MiniLM-L6-v2
fine-tuned) is measured here (per-layer tables, seq 128), Fisher scores come from a few SST-2 batches, and
the teacher is pruned to each latency budget with ``sp.search`` (``min_heads=1`` and ``min_heads=0``,
which may drop whole layers) and ``sp.allocate``, beside ``sp.search(flops=f)`` at the same fraction for
comparison. Every pruned model is then timed against the dense one (``sp.measure_latency``: alternating,
warm-up, median), and the table shows predicted vs measured latency and whether the measured fraction
meets the budget within 10% (measured / dense <= 1.1 x budget).

Run (from the repository root; about 5 minutes on 2 quiet cores)::

    .venv/bin/python benchmarks/latency_budget.py
    .venv/bin/python benchmarks/latency_budget.py --smoke --out /tmp/bench   # seconds, numbers meaningless
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import structprune as sp  # noqa: E402

logger = logging.getLogger("latency_budget")

TOLERANCE = 0.10


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    C.add_teacher_flag(p)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25], help="latency fractions kept")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    C.add_timing_flags(p, repeat_help="timed runs per model (pruned vs dense)")
    p.add_argument(
        "--lm-warmup", type=int, default=2, help="untimed passes per model when measuring the tables"
    )
    p.add_argument(
        "--lm-repeats", type=int, default=10, help="timed passes per model when measuring the tables"
    )
    p.add_argument("--calib-batches", type=int, default=4, help="SST-2 batches of 32 for Fisher scores")
    args = p.parse_args(argv)
    if args.smoke:
        args.budgets = [0.8]
        args.batch_sizes = [2]
        args.seq = 16
        args.warmup, args.repeat = 1, 2
        args.lm_warmup, args.lm_repeats = 0, 1
        args.calib_batches = 1
    return args


def _masks(scores, dense, lm, fraction: float) -> dict[str, object]:
    """Each method's mask for ``fraction`` (or the reason it has none)."""
    out = {}
    for name, fn in (
        ("search, latency", lambda: sp.search(scores, dense, latency=fraction, latency_model=lm)),
        ("search, latency, min_heads=0",
         lambda: sp.search(scores, dense, latency=fraction, latency_model=lm, min_heads=0)),
        ("allocate, latency", lambda: sp.allocate(scores, dense, latency=fraction, latency_model=lm)),
        ("search, FLOPs (same fraction)", lambda: sp.search(scores, dense, flops=fraction)),
    ):  # fmt: skip
        try:
            out[name] = fn()
        except ValueError as err:
            out[name] = f"infeasible: {err}"
    return out


def _pruned(dense, mask):
    model = sp.prune_(copy.deepcopy(dense), mask)
    model.eval()
    return model


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    dense, tok = C.model_and_tokenizer(args)
    rows_data = C.load_examples("sst2", "train", args.data_dir, limit=32 * args.calib_batches, seed=args.seed)
    batches = C.make_batches(rows_data, tok, "sst2", batch_size=8 if args.smoke else 32, max_length=128)
    scores = sp.score(dense, batches, method="fisher", progress=False)
    st = sp.arch.view(dense).structure
    dense_flops = sp.dense_cost(dense, args.seq).encoder_flops

    rows, lm_rows = [], []
    for b in args.batch_sizes:
        t0 = time.perf_counter()
        lm = sp.LatencyModel.measure(
            dense, batch_size=b, seq_len=args.seq, warmup=args.lm_warmup, repeats=args.lm_repeats
        )
        seconds = time.perf_counter() - t0
        lm.save(args.out / f"latency_budget_b{b}.json")
        lin = lm.linear()
        lm_rows.append(
            {
                "batch": b,
                "measure s": seconds,
                "dense predicted ms": lm.dense_ms,
                "dense measured ms (hooks)": lm.meta["dense_measured_ms"],
                "outside ms": lm.outside_ms,
                "layer, 1 head no FFN ms": lm.attention_at(1),
                "layer, all heads no FFN ms": lm.attention_at(st.num_heads),
                f"FFN {st.intermediate_size} ms": lm.ffn_at(st.intermediate_size),
                "per-layer part ms": lin.per_layer,
            }
        )
        pruned = {}
        for f in args.budgets:
            for name, mask in _masks(scores, dense, lm, f).items():
                key = f"{f:.2f} | {name}"
                if isinstance(mask, str):
                    rows.append({"batch": b, "budget": f"{f:.0%}", "method": name, "meets budget": mask[:90]})
                    continue
                pruned[key] = (f, name, mask, _pruned(dense, mask))
        lat = sp.measure_latency(
            {"dense": dense, **{k: v[3] for k, v in pruned.items()}},
            batch_size=b,
            seq_len=args.seq,
            warmup=args.warmup,
            repeats=args.repeat,
        )
        dense_ms = lat["dense"]["median_ms"]
        for key, (f, name, mask, model) in pruned.items():
            measured = lat[key]["median_ms"]
            predicted = lm.predict(mask)
            frac = measured / dense_ms
            rows.append(
                {
                    "batch": b,
                    "budget": f"{f:.0%}",
                    "method": name,
                    "layers": len(mask.kept_layers),
                    "heads": int(mask.head.sum()),
                    "FFN": int(mask.ffn.sum()),
                    "FLOPs kept": f"{sp.cost(model, args.seq).encoder_flops / dense_flops:.1%}",
                    "predicted": f"{lm.fraction(mask):.1%}",
                    "measured": f"{frac:.1%}",
                    "predicted ms": predicted,
                    "measured ms": measured,
                    "dense ms": dense_ms,
                    "prediction error": f"{predicted / lm.dense_ms / frac - 1:+.1%}",
                    "meets budget": "yes" if frac <= f * (1 + TOLERANCE) else "no",
                }
            )
            logger.info(
                "b=%d %s: predicted %.1f%%, measured %.1f%%", b, key, 100 * lm.fraction(mask), 100 * frac
            )
        del pruned

    latency_rows = [r for r in rows if "predicted" in r and "FLOPs" not in r["method"]]
    met = sum(r["meets budget"] == "yes" for r in latency_rows)
    text = C.header(
        "Latency as a budget",
        note=args.note
        or "indicative only if the machine was shared (see load average); rerun on a quiet machine for final numbers",
    )
    text += (
        f"\nModel: {'tiny random BERT (smoke run)' if args.smoke else args.teacher.name} ({st.num_layers} layers x "
        f"{st.num_heads} heads x {st.intermediate_size} FFN neurons). Scores: Fisher on {args.calib_batches} SST-2 "
        f"train batches. Latency model: `sp.LatencyModel.measure(model, batch_size=b, seq_len={args.seq})` "
        f"({args.lm_warmup} warm-up + {args.lm_repeats} timed passes per model; saved beside this file as "
        "`latency_budget_b<batch>.json`). Budgets: `sp.search` / `sp.allocate` with `latency=f, latency_model=lm`; "
        "`sp.search(flops=f)` for comparison. Timing of the results: `sp.measure_latency`, dense and every "
        f"pruned model alternating, {args.warmup} warm-up rounds, median of {args.repeat} runs, random token ids of "
        f"full length {args.seq}, {args.threads} threads.\n\n"
        "predicted = the latency model's prediction / its dense prediction; measured = measured pruned / dense "
        "latency. Prediction error = predicted / measured fraction - 1. Meets budget: measured <= "
        f"{1 + TOLERANCE:.2f} x budget (the FLOPs rows show what a FLOPs budget of the same fraction gives).\n\n"
        f"**{met} of {len(latency_rows)} latency-budgeted models meet their budget within {TOLERANCE:.0%}.**\n\n"
    )
    text += "## The latency models\n\n" + C.md_table(lm_rows)
    text += "\n## Pruned to a latency budget\n\n"
    text += C.md_table(
        rows,
        ["batch", "budget", "method", "layers", "heads", "FFN", "FLOPs kept", "predicted", "measured",
         "prediction error", "meets budget", "predicted ms", "measured ms", "dense ms"],
    )  # fmt: skip
    out = C.write_atomic(args.out / "latency_budget.md", text)
    logger.info("wrote %s", out)
    return out


if __name__ == "__main__":
    main()
