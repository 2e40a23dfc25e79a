"""Vocabulary pruning: size, coverage and SST-2 accuracy of the MiniLM student at 50% FLOPs.

The student: the SST-2 MiniLM teacher pruned with ``sp.compress(..., flops=0.5)`` on 1,000 SST-2 train
examples (retraining-free, no distillation: the question is what vocabulary pruning costs on top of a given
student). Its vocabulary is then pruned with ``sp.prune_vocab`` to the tokens of the SST-2 train sentences
(all 67,349) at ``min_count`` 1, 2 and 5. For each: tokens kept, parameters, how the SST-2 validation
sentences are covered (``structprune.surgery.vocab_coverage``: share of their tokens kept, of sentences made
only of kept tokens, unknown tokens the pruned tokenizer emits), the size of ``model.safetensors`` saved in
float32 and in float16 (MiB), and validation accuracy (all 872 sentences, each model with its own
tokenizer). Targets (issue "Vocabulary pruning"): at ``min_count=1``, <= 42 MB float32, <= 22 MB float16,
accuracy within 0.2 points of the student before vocabulary pruning.

The student is kept in ``--work`` (default ``$STRUCTPRUNE_CACHE/bench-vocab``) and every measured row in
``rows.json`` there, so a rerun with the same settings only measures what is missing.

Run (from the repository root; about 3 minutes on 2 quiet cores, ~10 on a busy machine: mostly the five
evaluations of the 872 validation sentences)::

    .venv/bin/python benchmarks/vocab.py
    .venv/bin/python benchmarks/vocab.py --smoke --out /tmp/bench   # tiny random BERT, seconds
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import structprune as sp  # noqa: E402
from structprune.cache import cache_root  # noqa: E402
from structprune.recovery.distill import flops_fraction  # noqa: E402
from structprune.surgery import vocab_coverage  # noqa: E402

logger = logging.getLogger("vocab")
COLUMNS = [
    "model", "min_count", "tokens kept", "params", "val token coverage %", "val sentences fully kept %",
    "unknown tokens %", "fp32 MiB", "fp16 MiB", "accuracy %", "prune_vocab s",
]  # fmt: skip


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    C.add_teacher_flag(p)
    p.add_argument("--flops", type=float, default=0.5, help="encoder FLOPs fraction the student keeps")
    p.add_argument("--calib", type=int, default=1000, help="SST-2 train examples for sp.compress")
    p.add_argument(
        "--min-counts", type=int, nargs="+", default=[1, 2, 5], help="prune_vocab min_count values"
    )
    p.add_argument(
        "--train", type=int, default=None, help="SST-2 train sentences for the vocabulary (default all)"
    )
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="student and rows.json (default $STRUCTPRUNE_CACHE/bench-vocab)",
    )
    return p.parse_args(argv)


def sizes(model, tokenizer) -> tuple[float, float]:
    """MiB of ``model.safetensors`` as ``sp.save_pretrained`` writes it, in float32 and in float16."""
    out = []
    with tempfile.TemporaryDirectory(prefix="structprune-vocab-") as tmp:
        for dtype in (torch.float32, torch.float16):
            folder = sp.save_pretrained(
                copy.deepcopy(model).to(dtype), Path(tmp) / str(dtype), tokenizer=tokenizer, card=False
            )
            out.append((folder / "model.safetensors").stat().st_size / 2**20)
    return out[0], out[1]


def student(args, teacher, tok, work: Path | None):
    """The retraining-free student (cached in ``work``), and the FLOPs fraction it keeps."""
    from transformers import AutoModelForSequenceClassification

    folder = work / f"student-{args.flops}-{args.calib}-{args.seed}" if work else None
    if folder is not None and (folder / "config.json").is_file():
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        return model, flops_fraction(model)
    rows = C.load_examples("sst2", "train", args.data_dir, limit=args.calib, seed=args.seed)
    calib = C.make_batches(rows, tok, "sst2", batch_size=32, max_length=64)
    model, _ = sp.compress(copy.deepcopy(teacher), calib, flops=args.flops)
    model.eval()
    if folder is not None:
        sp.save_pretrained(model, folder, tokenizer=tok, card=False)
    return model, flops_fraction(model)


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    teacher, tok = C.model_and_tokenizer(args)
    if args.smoke:
        args.calib, args.train, args.min_counts = 64, 400, [1, 2]
    work = None if args.smoke else (args.work or cache_root() / "bench-vocab")
    val_rows = C.load_examples("sst2", "validation", args.data_dir, limit=64 if args.smoke else None)
    train_text = list(C.load_examples("sst2", "train", args.data_dir, limit=args.train)["sentence"])
    val_text = list(val_rows["sentence"])

    state_file = work / "rows.json" if work else None
    key = f"{Path(args.teacher).name}|{args.flops}|{args.calib}|{args.seed}|{args.train}|{len(val_text)}"
    state = json.loads(state_file.read_text()) if state_file and state_file.is_file() else {}
    rows = state.get(key, {}) if not args.smoke else {}

    def save_state():
        if state_file:
            state[key] = rows
            C.write_atomic(state_file, json.dumps(state, indent=1))

    model, flops = student(args, teacher, tok, work)
    logger.info("student keeps %.1f%% of the encoder FLOPs", 100 * flops)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    for name, m in (("teacher (dense)", teacher), (f"student, {flops:.0%} FLOPs", model)):
        if name not in rows:
            fp32, fp16 = sizes(m, tok)
            acc = C.accuracy(m, C.make_batches(val_rows, tok, "sst2"))
            rows[name] = {"model": name, "tokens kept": len(tok), "params": params(m), "fp32 MiB": fp32,
                          "fp16 MiB": fp16, "accuracy %": acc, "val token coverage %": 100.0,
                          "val sentences fully kept %": 100.0}  # fmt: skip
            save_state()
    for min_count in args.min_counts:
        name = f"student + vocab (min_count {min_count})"
        if name in rows:
            continue
        t0 = time.perf_counter()
        pruned, new_tok = sp.prune_vocab(copy.deepcopy(model), tok, train_text, min_count=min_count)
        seconds = time.perf_counter() - t0
        cov = vocab_coverage(tok, new_tok, val_text)
        fp32, fp16 = sizes(pruned, new_tok)
        rows[name] = {
            "model": "student + vocab",
            "min_count": min_count,
            "tokens kept": len(new_tok),
            "params": params(pruned),
            "val token coverage %": 100 * cov.token_coverage,
            "val sentences fully kept %": 100 * cov.text_coverage,
            "unknown tokens %": 100 * cov.unknown_rate,
            "fp32 MiB": fp32,
            "fp16 MiB": fp16,
            "accuracy %": C.accuracy(pruned, C.make_batches(val_rows, new_tok, "sst2")),
            "prune_vocab s": seconds,
        }
        save_state()

    fallback = rows.get("fallback") or fallback_rows(model, tok, train_text, val_rows, args.min_counts[0])
    rows["fallback"] = fallback
    save_state()
    table = [r for k, r in rows.items() if k != "fallback"]
    base = rows[f"student, {flops:.0%} FLOPs"]
    text = C.header("Vocabulary pruning (SST-2 MiniLM student)", note=args.note)
    text += (
        f"\nStudent: `sp.compress(teacher, {args.calib} SST-2 train examples, flops={args.flops})`, no distillation "
        f"({flops:.1%} of the encoder FLOPs kept). Vocabulary: `sp.prune_vocab(student, tokenizer, "
        f"{len(train_text)} SST-2 train sentences, min_count=...)`. Coverage, unknown tokens and accuracy: all "
        f"{len(val_text)} SST-2 validation sentences. Sizes: `model.safetensors` as `sp.save_pretrained` "
        "writes it, in MiB (2^20 bytes), float32 and after `.half()`.\n\n"
    )
    text += C.md_table(table, COLUMNS)
    first = rows.get(f"student + vocab (min_count {args.min_counts[0]})")
    if first:
        drop = base["accuracy %"] - first["accuracy %"]
        checks = [
            ("model.safetensors float32 <= 42 MB", first["fp32 MiB"] * 2**20 / 1e6 <= 42),
            ("model.safetensors float16 <= 22 MB", first["fp16 MiB"] * 2**20 / 1e6 <= 22),
            ("accuracy within 0.2 points of the student", drop <= 0.2),
        ]
        text += f"\n## Target (min_count {args.min_counts[0]})\n\n"
        text += "".join(f"- {what}: {'met' if ok else 'NOT met'}\n" for what, ok in checks)
        text += (
            f"- float32 {first['fp32 MiB']:.1f} MiB ({first['fp32 MiB'] * 2**20 / 1e6:.1f} MB), float16 "
            f"{first['fp16 MiB']:.1f} MiB ({first['fp16 MiB'] * 2**20 / 1e6:.1f} MB), from "
            f"{base['fp32 MiB']:.1f} MiB; accuracy {first['accuracy %']:.2f}% vs {base['accuracy %']:.2f}% "
            f"({-drop:+.2f} points); {first['tokens kept']} of {len(tok)} tokens, "
            f"{first['val token coverage %']:.1f}% of validation tokens kept\n"
        )
    text += (
        f"\n## Where the accuracy goes: validation text with tokens outside the kept vocabulary (min_count "
        f"{args.min_counts[0]})\n\n"
        "The same student with its full embedding matrix, fed the validation sentences as the original tokenizer "
        "splits them, each token outside the kept vocabulary replaced: by `[UNK]`, or by the kept token nearest to "
        "it in the student's input embeddings (cosine). `sp.prune_vocab`'s tokenizer instead re-splits a word "
        "whose token was dropped into smaller kept pieces (the `student + vocab` row above). If these did much "
        "better, the fallback would be what to change; they do not: the loss comes from the words themselves.\n\n"
    )
    text += C.md_table(fallback, ["dropped tokens become", "accuracy %", "vs student"])
    return C.write_atomic(Path(args.out) / "vocab.md", text)


def fallback_rows(model, tok, train_text, val_rows, min_count: int) -> list[dict]:
    """Accuracy of the unpruned-vocabulary student when tokens outside the ``min_count`` vocabulary of
    ``train_text`` become ``[UNK]`` or their nearest kept token (input-embedding cosine)."""
    import collections

    import torch

    counts: collections.Counter = collections.Counter()
    for i in range(0, len(train_text), 2000):
        for ids in tok(train_text[i : i + 2000])["input_ids"]:
            counts.update(ids)
    kept = torch.tensor(sorted({i for i, c in counts.items() if c >= min_count} | set(tok.all_special_ids)))
    emb = torch.nn.functional.normalize(model.get_input_embeddings().weight.detach(), dim=1)
    batches = C.make_batches(val_rows, tok, "sst2")
    base = C.accuracy(model, batches)
    rows = []
    for how in ("[UNK]", "nearest kept token"):
        changed = []
        for b in batches:
            ids = b["input_ids"].clone()
            out = ~torch.isin(ids, kept)
            if how == "[UNK]":
                ids[out] = tok.unk_token_id
            elif out.any():
                ids[out] = kept[(emb[ids[out]] @ emb[kept].T).argmax(dim=1)]
            changed.append({**b, "input_ids": ids})
        acc = C.accuracy(model, changed)
        rows.append({"dropped tokens become": how, "accuracy %": acc, "vs student": f"{acc - base:+.2f}"})
    return rows


if __name__ == "__main__":
    print(main())
