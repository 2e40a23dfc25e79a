"""Is the speedup real for ModernBERT and DeBERTa-v3? CPU latency at 50% of encoder FLOPs vs dense.

For each family a tiny-but-realistic randomly initialized sequence classifier (hidden 384, 6 layers, 12
heads, like all-MiniLM-L6-v2; ModernBERT with its gated MLP of 576 neurons, i.e. 1.5 x hidden as in
ModernBERT-base, global attention every third layer, a 128-token window and SDPA attention; DeBERTa-v3's
disentangled attention with 256 position buckets, shared q/k position projections and FFN 1536; BERT
with FFN 1536 as the reference) is pruned to each encoder-FLOPs budget with data-free magnitude scores,
``sp.allocate`` (global) and ``sp.prune_``, then timed against the dense model alternately in the same
process (``sp.measure_latency``: warm-up, then the median of repeated forward passes) on full-length
random token sequences. Speedup = dense / pruned latency; target >= 1.7x at 50% FLOPs, batch 32, seq 128.
Weights are random: latency depends on the shapes kept, not on the values.

Run (from the repository root, on a quiet machine; a few minutes on 2 cores)::

    .venv/bin/python benchmarks/families_latency.py
    .venv/bin/python benchmarks/families_latency.py --smoke --out /tmp/bench   # seconds, numbers meaningless
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    ModernBertConfig,
)

import structprune as sp  # noqa: E402
from structprune.recovery.distill import flops_fraction  # noqa: E402

logger = logging.getLogger("families_latency")

FAMILIES = ("bert", "modernbert", "deberta-v2")
TARGET = 1.7


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.25])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1])
    C.add_timing_flags(p, repeat_help="timed runs per model at batch < 8")
    p.add_argument("--repeat-large", type=int, default=7, help="timed runs per model at batch >= 8")
    p.add_argument("--multiple-of", type=int, default=1, help="FFN widths rounded to this multiple")
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=12)
    args = p.parse_args(argv)
    if args.smoke:
        args.fractions = [0.5]
        args.batch_sizes = [2]
        args.seq = 16
        args.warmup, args.repeat, args.repeat_large = 1, 2, 2
        args.hidden, args.layers, args.heads = 32, 2, 4
    return args


def config(family: str, args):
    """The family's realistic small configuration (or a tiny one with ``--smoke``)."""
    h, n, heads = args.hidden, args.layers, args.heads
    common = dict(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads, num_labels=2)
    if family == "modernbert":
        return ModernBertConfig(
            **common, intermediate_size=3 * h // 2, vocab_size=50368, local_attention=128,
            max_position_embeddings=8192, attn_implementation="sdpa",
        )  # fmt: skip
    if family == "deberta-v2":  # DeBERTa-v3-xsmall's attention, at MiniLM's size
        return DebertaV2Config(
            **common, intermediate_size=4 * h, vocab_size=128100, relative_attention=True,
            pos_att_type=["p2c", "c2p"], position_buckets=256, max_relative_positions=-1,
            norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False, type_vocab_size=0,
            max_position_embeddings=512,
        )  # fmt: skip
    return BertConfig(**common, intermediate_size=4 * h, vocab_size=30522)


def pruned_copy(dense, scores, fraction: float, multiple_of: int):
    model = copy.deepcopy(dense)
    sp.prune_(model, sp.allocate(scores, model, flops=fraction, seq_len=128, multiple_of=multiple_of))
    return model.eval()


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    rows = []
    for family in args.families:
        torch.manual_seed(args.seed)
        dense = AutoModelForSequenceClassification.from_config(config(family, args)).eval()
        scores = sp.score(dense, method="magnitude", progress=False)
        dense_flops = sp.cost(dense, seq_len=args.seq).encoder_flops
        for fraction in args.fractions:
            model = pruned_copy(dense, scores, fraction, args.multiple_of)
            st = sp.arch.view(model).structure
            for b in args.batch_sizes:
                repeat = args.repeat if b < 8 else args.repeat_large
                lat = sp.measure_latency(
                    {"dense": dense, "pruned": model},
                    batch_size=b,
                    seq_len=args.seq,
                    warmup=args.warmup,
                    repeats=repeat,
                )
                d, p = lat["dense"]["median_ms"], lat["pruned"]["median_ms"]
                logger.info("%s %.0f%% b=%d: dense %.1f ms, pruned %.1f ms", family, 100 * fraction, b, d, p)
                rows.append(
                    {
                        "family": family,
                        "dense GFLOPs": dense_flops / 1e9,
                        "target FLOPs": f"{fraction:.0%}",
                        "kept FLOPs": f"{flops_fraction(model, args.seq):.1%}",
                        "heads": sum(st.heads_per_layer),
                        "FFN": sum(st.ffn_per_layer),
                        "batch": b,
                        "dense ms": d,
                        "pruned ms": p,
                        "speedup": d / p,
                        f">= {TARGET}x": "yes" if d / p >= TARGET else "no",
                    }
                )
    text = C.header(
        "Latency of ModernBERT and DeBERTa-v3 after pruning",
        note=args.note
        or "indicative only if the machine was shared (see load average); rerun on a quiet machine for final numbers",
    )
    shape = f"hidden {args.hidden}, {args.layers} layers, {args.heads} heads"
    text += (
        f"\nModels: random sequence classifiers, {shape}"
        + (" (smoke run: numbers mean nothing)" if args.smoke else "")
        + ". Scores: magnitude (data-free); `sp.allocate(scores, model, flops=f, "
        f"multiple_of={args.multiple_of})` (global) + `sp.prune_`. Inputs: random token ids, full length "
        f"{args.seq}, no padding. Timing: `sp.measure_latency`, {args.warmup} warm-up rounds, then the median "
        f"of {args.repeat} (batch < 8) / {args.repeat_large} (batch >= 8) runs, dense and pruned alternating; "
        f"{args.threads} threads.\n\n"
        "Dense GFLOPs: encoder FLOPs of one sequence (`sp.cost`: DeBERTa's count includes the per-head "
        "projections of the relative-position table and the scores against it; ModernBERT's, both halves of "
        f"its gated MLP). Speedup = dense ms / pruned ms; the target is >= {TARGET}x at 50% FLOPs, batch 32.\n\n"
    )
    text += C.md_table(rows)
    out = C.write_atomic(args.out / "families_latency.md", text)
    logger.info("wrote %s", out)
    return out


if __name__ == "__main__":
    main()
