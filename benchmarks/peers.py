"""Peers side by side: structprune vs Torch-Pruning (and TextPruner, in its own venv) at the same budgets.

Same SST-2 teacher, same calibration data (``--calib-batches`` x 32 SST-2 train examples, seed 0), same
evaluation (all 872 SST-2 validation examples), same encoder-FLOPs budgets, in one run. For every method:
accuracy, pruning time (scoring + selection + surgery), kept encoder FLOPs (from the pruned modules'
shapes), measured speedup vs the dense teacher (PyTorch, batch 32 x seq 128, alternating), and whether
the pruned model survives ``save_pretrained`` + ``from_pretrained`` and ``torch.save`` + ``torch.load``.

Torch-Pruning follows its Hugging Face BERT example (``examples/transformers/prune_hf_bert.py``):
``MetaPruner`` with ``num_heads`` for q/k/v, ``prune_num_heads=True``, ``prune_head_dims=False``,
``head_pruning_ratio = pruning_ratio = 1 - budget``; the residual width is left alone (the attention
output and FFN down projections, pooler and classifier are ignored layers) so that it prunes exactly
heads and FFN neurons, like structprune. Uniform per-layer ratios (its default) and global ranking.

TextPruner 1.1 pins transformers 4 and numpy < 1.22; it runs in a separate venv (``--textpruner-python``,
default ``$STRUCTPRUNE_CACHE/textpruner-venv/bin/python``) through ``benchmarks/_textpruner_worker.py``,
on the very calibration and validation rows used here (handed over as JSON-lines files).

Run (from the repository root)::

    .venv/bin/python benchmarks/peers.py                       # 50/60/40% FLOPs
    .venv/bin/python benchmarks/peers.py --smoke --out /tmp/b  # tiny random model, seconds
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from _textpruner_worker import describe, logit_check  # noqa: E402

import structprune as sp  # noqa: E402
from structprune.allocation.cost import head_flops, neuron_flops  # noqa: E402
from structprune.arch.spec import get_spec, resolve  # noqa: E402
from structprune.cache import cache_root  # noqa: E402

logger = logging.getLogger("peers")


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    C.add_teacher_flag(p)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.6, 0.4])
    p.add_argument("--calib-batches", type=int, default=8, help="calibration batches of 32 examples")
    p.add_argument("--eval-limit", type=int, default=None, help="validation examples (default: all 872)")
    p.add_argument("--latency-batch", type=int, default=32)
    p.add_argument("--latency-repeat", type=int, default=5)
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--methods", nargs="*", default=None, help="subset of method names (default: all)")
    p.add_argument(
        "--resume", action="store_true", help="keep the rows in <out>/peers.json; run only the missing ones"
    )
    p.add_argument(
        "--textpruner-python",
        type=Path,
        default=cache_root() / "textpruner-venv" / "bin" / "python",
        help="Python of the TextPruner venv (default: $STRUCTPRUNE_CACHE/textpruner-venv/bin/python, "
        "$STRUCTPRUNE_CACHE defaulting to ~/.cache/structprune)",
    )
    p.add_argument("--textpruner-timeout", type=int, default=1800)
    args = p.parse_args(argv)
    if args.smoke:
        args.budgets = [0.5]
        args.calib_batches = 1
        args.eval_limit = 16
        args.latency_batch = 2
        args.latency_repeat = 1
    return args


# --------------------------------------------------------------------------- shapes and FLOPs


def kept_flops(model, seq_len: int = 128) -> tuple[float, int, int]:
    """(kept encoder FLOPs fraction, heads, FFN neurons) read from the modules' shapes.

    Works on any model pruned by any library (it does not trust ``config.structprune``): heads are
    counted as q rows / head size; the dense reference is the config's layer/head/FFN sizes.
    """
    cfg = model.config
    spec = get_spec(model)
    layers = resolve(model.base_model, spec.layers)
    st = getattr(cfg, "structprune", None)
    hidden = int(getattr(cfg, spec.config_hidden))
    n_layers = st["num_layers"] if st else len(layers)
    n_heads = st["num_heads"] if st else int(getattr(cfg, spec.config_heads))
    inter = st["intermediate_size"] if st else int(getattr(cfg, spec.config_ffn))
    dh = hidden // n_heads
    flops = heads = ffn = 0
    for layer in layers:
        attn = resolve(layer, spec.attn)
        q, up = resolve(layer, spec.q), resolve(layer, spec.up)
        size = int(getattr(attn, spec.attn_head_size_attr))
        h = q.out_features / size  # heads of the current size
        # a head whose size was cut costs its q/k/v/o share at the new size plus the scores/context
        flops += h * head_flops(hidden, size, seq_len) + up.out_features * neuron_flops(hidden, seq_len)
        heads += int(h)
        ffn += up.out_features
    dense = n_layers * (n_heads * head_flops(hidden, dh, seq_len) + inter * neuron_flops(hidden, seq_len))
    return flops / dense, heads, ffn


# --------------------------------------------------------------------------- methods


def structprune_method(scorer: str, strategy: str = "global", **score_options) -> Callable:
    """Score once (timed), then allocate + prune_ per budget."""
    cache: dict = {}

    def run(model, calib, budget):
        t0 = time.perf_counter()
        if "scores" not in cache:
            cache["scores"] = sp.score(model, calib, method=scorer, progress=False, **score_options)
            cache["seconds"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        mask = sp.allocate(cache["scores"], model, flops=budget, strategy=strategy)
        sp.prune_(model, mask)
        return model, cache["seconds"] + time.perf_counter() - t1

    return run


def compress_method(model, calib, budget):
    (pruned, _report), seconds = C.timed(lambda: sp.compress(model, calib, flops=budget, progress=False))
    return pruned, seconds


def torch_pruning_method(importance: str, global_pruning: bool, match_flops: bool = False) -> Callable:
    """Torch-Pruning as its Hugging Face BERT example prunes: ``pruning_ratio = head_pruning_ratio = 1 - budget``.

    Where that ratio keeps more encoder FLOPs than the budget (on all-mpnet-base-v2 its dependency graph ties
    every layer's query channels to the relative-position-bias table all layers share, so it prunes no head
    and keeps 68% of the FLOPs at a 0.5 ratio), ``match_flops=True`` raises the ratio by bisection on copies
    of the scored model until the pruned model keeps at most the budget (+0.5 points), or to 0.98 where no
    ratio gets there (its FLOPs then show the miss). Returns ``(model, seconds, ratio used)``.
    """

    def run(model, calib, budget):
        t0 = time.perf_counter()
        if (
            importance == "taylor"
        ):  # the example's Taylor scores: gradients of the task loss on the calibration set
            model.zero_grad()
            for b in calib:
                model(**b).loss.backward()
        example = {k: v[:2] for k, v in calib[0].items() if k != "labels"}

        def pruned(ratio: float):
            copy_ = copy.deepcopy(model)  # deepcopy drops .grad: carry the scores' gradients over
            for mine, theirs in zip(copy_.parameters(), model.parameters(), strict=True):
                mine.grad = None if theirs.grad is None else theirs.grad.clone()
            _tp_prune(copy_, example, importance, global_pruning, ratio)
            copy_.zero_grad(set_to_none=True)
            return copy_

        ratio = 1.0 - budget
        best = pruned(ratio)
        if match_flops and kept_flops(best)[0] > budget + 0.005:
            lo, hi = ratio, 0.98  # lo keeps too much; the ratio that meets the budget lies above it
            found = None
            for _ in range(10):
                mid = (lo + hi) / 2
                candidate = pruned(mid)
                if kept_flops(candidate)[0] <= budget + 0.005:
                    hi, found = mid, (mid, candidate)
                else:
                    lo = mid
            # out of reach (e.g. the FFN alone is too small a share): the highest ratio, its FLOPs say so
            ratio, best = found or (hi, pruned(hi))
        model.zero_grad(set_to_none=True)
        return best, time.perf_counter() - t0, ratio

    return run


def _tp_prune(model, example: dict, importance: str, global_pruning: bool, ratio: float) -> None:
    """One ``MetaPruner`` step at ``ratio`` (heads and FFN neurons), in place, as the example does it."""
    import torch_pruning as tp

    spec = get_spec(model)
    layers = resolve(model.base_model, spec.layers)
    num_heads, prunable = {}, set()
    for layer in layers:
        attn = resolve(layer, spec.attn)
        for name in ("q", "k", "v"):
            num_heads[resolve(layer, getattr(spec, name))] = getattr(attn, spec.attn_head_count_attrs[0])
        prunable.add(resolve(layer, spec.up))
    prunable.update(num_heads)
    # Only heads (q/k/v rows) and FFN neurons (up rows) may be pruned: every other Linear (attention
    # output, FFN down, pooler, classifier) is ignored, so the residual width stays as it is.
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m not in prunable]
    imp = (
        tp.importance.TaylorImportance() if importance == "taylor" else tp.importance.MagnitudeImportance(p=2)
    )
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        global_pruning=global_pruning,
        importance=imp,
        iterative_steps=1,
        pruning_ratio=ratio,
        num_heads=num_heads,
        prune_head_dims=False,
        prune_num_heads=True,
        head_pruning_ratio=ratio,
        output_transform=lambda out: out.logits.sum(),
        ignored_layers=ignored,
    )
    for group in pruner.step(interactive=True):
        group.prune()
    # as the example does: tell the attention modules their new head count
    for layer in layers:
        attn, q = resolve(layer, spec.attn), resolve(layer, spec.q)
        for attr in spec.attn_head_count_attrs:
            setattr(attn, attr, pruner.num_heads[q])
        for attr in spec.attn_all_head_size_attrs:
            setattr(attn, attr, q.out_features)


def methods(args) -> dict[str, Callable]:
    out = {
        "structprune taylor (global)": structprune_method("taylor"),
        "structprune fisher (global)": structprune_method("fisher"),
        "structprune taylor (uniform)": structprune_method("taylor", "uniform"),
        "structprune magnitude L2 (global)": structprune_method("magnitude", norm="l2"),
        "structprune compress (search + reconstruction)": compress_method,
    }
    if importlib.util.find_spec("torch_pruning") is not None:  # a peer, not a dependency of the library
        out["Torch-Pruning taylor (uniform)"] = torch_pruning_method("taylor", False)
        out["Torch-Pruning taylor (global)"] = torch_pruning_method("taylor", True)
        out["Torch-Pruning magnitude L2 (uniform)"] = torch_pruning_method("magnitude", False)
    if args.methods:
        out = {k: v for k, v in out.items() if any(m.lower() in k.lower() for m in args.methods)}
    return out


# --------------------------------------------------------------------------- save / reload


@torch.no_grad()
def reload_checks(model, batch: dict) -> dict[str, str]:
    """Try the ways a user would save and reload the pruned model; record exactly what happens."""
    from transformers import AutoModelForSequenceClassification

    compare = logit_check(model, batch)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model.save_pretrained(tmp)
            out["model.save_pretrained + AutoModel.from_pretrained"] = compare(
                AutoModelForSequenceClassification.from_pretrained(tmp)
            )
        except Exception as err:  # noqa: BLE001 - recording what happens is the point
            out["model.save_pretrained + AutoModel.from_pretrained"] = describe(err)
        folder = Path(tmp) / "sp"
        try:
            sp.save_pretrained(model, folder, tokenizer=None)
        except Exception as err:  # noqa: BLE001
            out["sp.save_pretrained"] = describe(err)
        else:
            out["sp.save_pretrained"] = "ok"
            try:
                out["sp.from_pretrained"] = compare(sp.from_pretrained(folder))
            except Exception as err:  # noqa: BLE001
                out["sp.from_pretrained"] = describe(err)
            try:
                out["AutoModel.from_pretrained(trust_remote_code=True)"] = compare(
                    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
                )
            except Exception as err:  # noqa: BLE001
                out["AutoModel.from_pretrained(trust_remote_code=True)"] = describe(err)
        path = Path(tmp) / "whole.pt"
        try:
            torch.save(model, path)
            out["torch.save + torch.load(weights_only=False)"] = compare(torch.load(path, weights_only=False))
        except Exception as err:  # noqa: BLE001
            out["torch.save + torch.load(weights_only=False)"] = describe(err)
    return out


# --------------------------------------------------------------------------- TextPruner (separate venv)


def textpruner_rows(args, calib_rows, val_rows) -> tuple[list[dict], str]:
    """Run the TextPruner worker in its own venv on our calibration and validation rows (``datasets``
    written as JSON lines); rows like ours, or none and the reason."""
    python = args.textpruner_python
    if args.smoke:
        return [], "not run in --smoke mode"
    venv = python.parent.parent
    if not python.exists():
        return [], (
            f"not run: {python} does not exist. Make it with: python -m venv {venv}; "
            f"{venv}/bin/pip install torch==2.13.0 'transformers<5' 'numpy<2'; "
            f"{venv}/bin/pip install --no-deps textpruner (its numpy<1.22 pin has no Python 3.11 wheel)"
        )
    worker = Path(__file__).resolve().parent / "_textpruner_worker.py"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tp.json"
        calib_file, val_file = Path(tmp) / "calib.jsonl", Path(tmp) / "validation.jsonl"
        calib_rows.select_columns(["sentence", "label"]).to_json(calib_file, lines=True)
        val_rows.select_columns(["sentence", "label"]).to_json(val_file, lines=True)
        cmd = [str(python), str(worker), "--teacher", str(args.teacher), "--out", str(out)]
        cmd += [
            "--calib",
            str(calib_file),
            "--validation",
            str(val_file),
            "--budgets",
            *map(str, args.budgets),
        ]
        cmd += ["--threads", str(args.threads)]
        cmd += ["--latency-batch", str(args.latency_batch), "--latency-repeat", str(args.latency_repeat)]
        if args.no_latency:
            cmd.append("--no-latency")
        logger.info("TextPruner: %s", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.textpruner_timeout)
        except subprocess.TimeoutExpired:
            return [], f"not finished within {args.textpruner_timeout} s"
        if proc.returncode != 0 or not out.exists():
            tail = " ".join(proc.stderr.strip().splitlines()[-3:])[-400:]
            return [], f"the worker failed (exit {proc.returncode}): {tail}"
        data = json.loads(out.read_text())
    return data["rows"], data.get("note", "")


# --------------------------------------------------------------------------- main


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    dense, tok = C.model_and_tokenizer(args)
    calib_rows = C.load_examples(
        "sst2", "train", args.data_dir, limit=32 * args.calib_batches, seed=args.seed
    )
    calib = C.make_batches(calib_rows, tok, "sst2", batch_size=32)
    val_rows = C.load_examples("sst2", "validation", args.data_dir, limit=args.eval_limit)
    val = C.make_batches(val_rows, tok, "sst2", batch_size=64)

    state = _load_state(args) if args.resume else {"rows": [], "reloads": {}, "commands": [], "notes": {}}
    state["commands"] = [c for c in state["commands"] if c != C.command_line()] + [C.command_line()]
    rows, reloads = state["rows"], state["reloads"]
    teacher_acc = C.accuracy(dense, val)
    logger.info("dense teacher: %.2f", teacher_acc)
    rows[:] = [r for r in rows if r["method"] != "dense teacher"]
    rows.insert(
        0, {"method": "dense teacher", "budget": "100%", "accuracy": teacher_acc, "kept FLOPs": "100.0%"}
    )
    done = {(r["method"], r["budget"]) for r in rows if "accuracy" in r}
    for name, method in methods(args).items():
        for budget in args.budgets:
            if (name, f"{budget:.0%}") in done:
                continue
            rows.append(_measure(name, method, dense, calib, val, budget, teacher_acc, args, reloads))
            _write(state, args)

    if args.methods is None or any("textpruner" in m.lower() for m in args.methods):
        tp_rows, tp_note = textpruner_rows(args, calib_rows, val_rows)
        state["notes"]["TextPruner"] = tp_note
        rows[:] = [r for r in rows if not r["method"].startswith("TextPruner")]
        rows += [{**r, "drop": teacher_acc - r["accuracy"]} if "accuracy" in r else r for r in tp_rows]
        for r in tp_rows:
            if "reload" in r:
                reloads[r["method"]] = r.pop("reload")
    return _write(state, args)


def _measure(name, method, dense, calib, val, budget, teacher_acc, args, reloads) -> dict:
    model = copy.deepcopy(dense)
    model.eval()
    try:
        pruned, seconds, *_ = method(model, calib, budget)  # Torch-Pruning adds its ratio
    except Exception as err:  # noqa: BLE001 - a peer failing is a result, not a crash
        logger.exception("%s at %s failed", name, budget)
        return {"method": name, "budget": f"{budget:.0%}", "note": describe(err)}
    pruned.eval()
    frac, heads, ffn = kept_flops(pruned)
    acc = C.accuracy(pruned, val)
    row = {
        "method": name,
        "budget": f"{budget:.0%}",
        "accuracy": acc,
        "drop": teacher_acc - acc,
        "kept FLOPs": f"{frac:.1%}",
        "heads": heads,
        "FFN": ffn,
        "prune s": seconds,
    }
    if not args.no_latency:
        lat = sp.measure_latency(
            {"dense": dense, "pruned": pruned},
            batch_size=args.latency_batch,
            seq_len=16 if args.smoke else 128,
            warmup=1,
            repeats=args.latency_repeat,
        )
        row["speedup"] = lat["dense"]["median_ms"] / lat["pruned"]["median_ms"]
    logger.info("%s @ %.0f%%: %s", name, 100 * budget, row)
    if budget == args.budgets[0] and name not in reloads:
        reloads[name] = reload_checks(pruned, val[0])
    return row


def _load_state(args) -> dict:
    path = args.out / "peers.json"
    if not path.exists():
        return {"rows": [], "reloads": {}, "commands": [], "notes": {}}
    state = json.loads(path.read_text())
    state.setdefault("notes", {})
    return state


def _write(state: dict, args) -> Path:
    rows, reloads = state["rows"], state["reloads"]
    text = C.header(
        "Peers side by side at the same budgets", note=args.note, extra_packages=["torch-pruning"]
    )
    if len(state["commands"]) > 1:
        text += "- Rows accumulated with `--resume` over these commands (in order):\n"
        text += "".join(f"  - `{c}`\n" for c in state["commands"])
    text += (
        f"\nTeacher: {'tiny random BERT (smoke run)' if args.smoke else args.teacher}. Calibration: "
        f"{args.calib_batches} x 32 SST-2 train examples (seed {args.seed}), the same for every method. "
        f"Evaluation: {'all 872' if args.eval_limit is None else args.eval_limit} SST-2 validation examples, "
        "max length 128, accuracy in %. Budget = fraction of the dense encoder FLOPs at seq 128; "
        "'kept FLOPs' is recomputed from the pruned modules' shapes. 'prune s' = scoring + selection + "
        "surgery wall time (structprune scores once and reuses the scores across budgets; the time shown "
        "includes the scoring). Speedup: dense / pruned median latency, PyTorch, batch "
        f"{args.latency_batch} x seq 128, {args.threads} threads, alternating, {args.latency_repeat} runs "
        "after 1 warm-up (TextPruner's rows: measured in its own venv with transformers 4).\n\n"
    )
    cols = [
        "method",
        "budget",
        "accuracy",
        "drop",
        "kept FLOPs",
        "heads",
        "FFN",
        "prune s",
        "speedup",
        "note",
    ]
    budgets = sorted(
        {r["budget"] for r in rows if r["method"] != "dense teacher"}, key=lambda b: -int(b[:-1])
    )
    budgets.sort(key=lambda b: b != "50%")
    for budget in budgets:
        sel = [r for r in rows if r.get("budget") == budget or r["method"] == "dense teacher"]
        text += f"## {budget} of encoder FLOPs\n\n" + C.md_table(sel, cols) + "\n"
    for name, note in state["notes"].items():
        if note:
            text += f"{name}: {note}\n\n"
    text += "## Save and reload (models pruned to the first budget of their run, 50% by default)\n\n"
    reload_rows = [{"method": k, **v} for k, v in reloads.items()]
    text += C.md_table(reload_rows, sorted({c for r in reload_rows for c in r}, key=lambda c: c != "method"))
    text += _reference_section(args)
    out = C.write_atomic(args.out / "peers.md", text)
    C.write_atomic(args.out / "peers.json", json.dumps(state, indent=1, default=str))
    logger.info("wrote %s", out)
    return out


def _reference_section(args) -> str:
    about = args.teacher / "ABOUT.md"
    if args.smoke or not about.exists():
        return ""
    table = [line for line in about.read_text().splitlines() if line.startswith("|")]
    return (
        "\n## Reference numbers from the teacher's ABOUT.md (50% FLOPs, no retraining)\n\n"
        + "\n".join(table)
        + "\n"
    )


if __name__ == "__main__":
    main()
