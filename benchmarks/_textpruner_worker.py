"""TextPruner run for ``peers.py``, executed by the Python of a separate venv (transformers 4, textpruner).

It cannot import structprune (transformers 5); it only needs the teacher folder and two JSON-lines files
of SST-2 rows (``sentence``, ``label``) that ``peers.py`` writes: its calibration sample and its
validation rows, so both sides prune and evaluate on the very same examples. For each budget it prunes a
fresh copy of the teacher with TextPruner's iterative gradient-based ``TransformerPruner`` (heads and FFN
neurons, the same count in every layer), evaluates it, times it against the dense model (alternating,
median) and tries to save and reload it. Writes JSON rows in the format of ``peers.py``, which imports
:func:`describe` and :func:`logit_check` from here for its own reload checks (so both word the results
alike; this file stays torch-only at import).

Run by ``peers.py``; by hand::

    $STRUCTPRUNE_CACHE/textpruner-venv/bin/python benchmarks/_textpruner_worker.py --teacher TEACHER_DIR \
        --calib calib.jsonl --validation validation.jsonl --out /tmp/tp.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def head_flops(hidden: int, head_size: int, seq: int) -> int:  # same formulas as structprune.cost
    return 2 * seq * 4 * hidden * head_size + 2 * 2 * seq * seq * head_size


def neuron_flops(hidden: int, seq: int) -> int:
    return 2 * 2 * seq * hidden


def shape_for(budget: float, heads: int, inter: int, hidden: int, seq: int = 128) -> tuple[int, int]:
    """Per-layer heads and FFN width that keep ``budget`` of the encoder FLOPs (heads rounded first)."""
    dh = hidden // heads
    h = max(1, round(budget * heads))
    rest = budget * (heads * head_flops(hidden, dh, seq) + inter * neuron_flops(hidden, seq))
    f = int((rest - h * head_flops(hidden, dh, seq)) // neuron_flops(hidden, seq))
    return h, max(0, min(f, inter))


def batches(rows, tok, bs, max_length=128):
    out = []
    for i in range(0, len(rows), bs):
        chunk = rows[i : i + bs]
        enc = dict(
            tok(
                [r["sentence"] for r in chunk],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
        )
        enc["labels"] = torch.tensor([r["label"] for r in chunk])
        out.append(enc)
    return out


@torch.no_grad()
def accuracy(model, val) -> float:
    model.eval()
    correct = total = 0
    for b in val:
        pred = model(**{k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1)
        correct += int((pred == b["labels"]).sum())
        total += len(pred)
    return 100.0 * correct / total


def describe(err: BaseException) -> str:
    """An exception in one line for a results table (``peers.py`` uses it too)."""
    msg = " ".join(str(err).split())
    return f"fails: {type(err).__name__}: {msg[:160]}{'...' if len(msg) > 160 else ''}"


def logit_check(model, batch: dict) -> Callable[[torch.nn.Module], str]:
    """``check(reloaded)``: whether a saved and reloaded copy of ``model`` gives its logits on ``batch``
    (labels left out), in words for a results table (``peers.py`` uses it too)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()
    ref = model(**inputs).logits

    def check(other) -> str:
        other.eval()
        diff = (other(**inputs).logits - ref).abs().max().item()
        return (
            f"ok (max abs logit diff {diff:.1e})"
            if diff < 1e-4
            else f"loads but WRONG (logit diff {diff:.2g})"
        )

    return check


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--calib", type=Path, required=True, help="calibration rows (JSON lines: sentence, label)")
    p.add_argument("--validation", type=Path, required=True, help="evaluation rows (JSON lines)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5])
    p.add_argument("--n-iters", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency-batch", type=int, default=32)
    p.add_argument("--latency-repeat", type=int, default=5)
    p.add_argument("--no-latency", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import textpruner
    import transformers
    from textpruner import GeneralConfig, TransformerPruner, TransformerPruningConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    note = [f"transformers {transformers.__version__}, textpruner {getattr(textpruner, '__version__', '?')}"]
    tok = AutoTokenizer.from_pretrained(str(args.teacher))
    try:
        dense = AutoModelForSequenceClassification.from_pretrained(str(args.teacher))
        note.append("transformers 4 loads the teacher saved by transformers 5")
    except Exception as err:  # noqa: BLE001
        args.out.write_text(
            json.dumps({"rows": [], "note": f"transformers 4 cannot load the teacher: {describe(err)}"})
        )
        return
    dense.eval()

    def read(path: Path) -> list[dict]:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    calib = batches(read(args.calib), tok, 32)  # peers.py's calibration batches: same rows, same order
    val = batches(read(args.validation), tok, 64)
    cfg = dense.config
    dense_acc = accuracy(dense, val)
    note.append(f"dense teacher under transformers 4: {dense_acc:.2f}")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, cfg.vocab_size, (args.latency_batch, 128), generator=gen)
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}

    rows = []
    for budget in args.budgets:
        heads, ffn = shape_for(budget, cfg.num_attention_heads, cfg.intermediate_size, cfg.hidden_size)
        model = copy.deepcopy(dense)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            pruner = TransformerPruner(
                model,
                transformer_pruning_config=TransformerPruningConfig(
                    target_ffn_size=ffn,
                    target_num_of_heads=heads,
                    pruning_method="iterative",
                    n_iters=args.n_iters,
                ),
                general_config=GeneralConfig(use_device="cpu", output_dir=tmp),
            )
            pruner.prune(dataloader=calib, save_model=False)
            seconds = time.perf_counter() - t0
            model.eval()
            acc = accuracy(model, val)
            kept = (
                heads * head_flops(cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads, 128)
            ) + ffn * (neuron_flops(cfg.hidden_size, 128))
            dense_f = cfg.num_attention_heads * head_flops(
                cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads, 128
            ) + cfg.intermediate_size * neuron_flops(cfg.hidden_size, 128)
            row = {
                "method": f"TextPruner iterative ({args.n_iters} iters, uniform)",
                "budget": f"{budget:.0%}",
                "accuracy": acc,
                "kept FLOPs": f"{kept / dense_f:.1%}",
                "heads": heads * cfg.num_hidden_layers,
                "FFN": ffn * cfg.num_hidden_layers,
                "prune s": seconds,
            }
            if not args.no_latency:
                times = {"dense": [], "pruned": []}
                with torch.inference_mode():
                    for r in range(1 + args.latency_repeat):
                        for name, m in (("dense", dense), ("pruned", model)):
                            t = time.perf_counter()
                            m(**x)
                            if r:
                                times[name].append(time.perf_counter() - t)
                row["speedup"] = statistics.median(times["dense"]) / statistics.median(times["pruned"])
            if budget == args.budgets[0]:
                row["reload"] = reload_checks(pruner, model, val[0], tmp)
            rows.append(row)
    args.out.write_text(json.dumps({"rows": rows, "note": "; ".join(note)}))


@torch.no_grad()
def reload_checks(pruner, model, batch, tmp) -> dict:
    from transformers import AutoModelForSequenceClassification

    compare = logit_check(model, batch)
    out = {}
    try:
        d = Path(tmp) / "hf"
        model.save_pretrained(d)
        out["model.save_pretrained + AutoModel.from_pretrained"] = compare(
            AutoModelForSequenceClassification.from_pretrained(d)
        )
    except Exception as err:  # noqa: BLE001
        out["model.save_pretrained + AutoModel.from_pretrained"] = describe(err)
    try:
        d = pruner.save_model()
        out["TextPruner save_model + from_pretrained"] = compare(
            AutoModelForSequenceClassification.from_pretrained(d)
        )
    except Exception as err:  # noqa: BLE001
        out["TextPruner save_model + from_pretrained"] = describe(err)
    try:
        path = Path(tmp) / "whole.pt"
        torch.save(model, path)
        out["torch.save + torch.load(weights_only=False)"] = compare(torch.load(path, weights_only=False))
    except Exception as err:  # noqa: BLE001
        out["torch.save + torch.load(weights_only=False)"] = describe(err)
    return out


if __name__ == "__main__":
    main()
