"""Where the time goes: dense vs pruned MiniLM at batch 1 and 32, by model part, by kind of op, by threads.

The pruned models cut the speedup short of the FLOPs cut at batch 1 and at 10% of the FLOPs
(``benchmarks/results/speed.md``). This script shows which costs do not shrink with heads and neurons.
The dense SST-2 teacher is pruned with Taylor scores (``--calib`` SST-2 train examples) and ``sp.compress``'s
global allocation, no reconstruction (only the shapes matter here), to 50 / 25 / 10% of its encoder FLOPs, and
at 10% also to 3 layers and to 4 layers x 256 hidden (TinyBERT's shape). Then, with other jobs paused
(``--pause-while-timing``):

1. **Parts**: the forward on ``--seq``-token inputs split by forward hooks on the first and last encoder
   layer: before the layers (embeddings, attention mask), the layers, after them (pooler, classifier);
   median of ``--repeat`` passes, dense and pruned alternately.
2. **Ops** (batch 1): ``torch.profiler`` self time per kind of aten op (matrix products, the attention
   kernel, LayerNorm, GELU, element-wise and copies, embedding lookups, other), and the rest of the wall time
   as "outside ops" (Python, module calls, dispatch); the shares are scaled to the unprofiled median.
3. **Threads**: batch 1 with 1 thread vs ``--threads``.
4. **Without Python**: each model traced and frozen (``torch.jit.trace`` + ``torch.jit.freeze``, TorchScript:
   the same ops without the Python module calls), batch 1, dense and pruned alternately.

Run (from the repository root; a few minutes)::

    .venv/bin/python benchmarks/breakdown.py --pause-while-timing benchmarks/ SCRATCH/
    .venv/bin/python benchmarks/breakdown.py --smoke --out /tmp/bench     # tiny random BERT, seconds
"""

from __future__ import annotations

import copy
import logging
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import structprune as sp  # noqa: E402
from structprune.allocation.latency import synthetic_batch  # noqa: E402
from structprune.arch import view  # noqa: E402

logger = logging.getLogger("breakdown")

OP_KINDS = {
    "matrix products": ("addmm", "aten::mm", "bmm", "matmul", "baddbmm"),
    "attention kernel": ("scaled_dot_product", "softmax"),
    "LayerNorm": ("layer_norm",),
    "GELU / tanh": ("gelu", "tanh"),
    "element-wise + copies": ("aten::add", "aten::mul", "aten::div", "copy_", "aten::sub", "aten::where",
                              "masked_fill", "aten::clone", "contiguous", "aten::fill_"),
    "embedding lookups": ("embedding", "index_select"),
}  # fmt: skip


def parse_args(argv=None):
    p = C.base_parser(__doc__.split("\n\n")[0])
    C.add_teacher_flag(p)
    C.add_timing_flags(p)
    C.add_quiet_timing_flags(p)
    p.add_argument("--calib", type=int, default=64, help="SST-2 train examples for the Taylor scores")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--profile-passes", type=int, default=20, help="profiled batch-1 passes per model")
    args = p.parse_args(argv)
    if args.smoke:
        args.seq, args.warmup, args.repeat, args.profile_passes, args.calib = 16, 1, 2, 2, 8
        args.batch_sizes = [1, 2]
    return args


def students(dense, batches, smoke: bool) -> dict[str, torch.nn.Module]:
    """The dense model and its pruned shapes (Taylor scores, global allocation, no reconstruction)."""
    shapes = [("50%", 0.5, {}), ("25%", 0.25, {}), ("10%", 0.1, {}), ("10%, 3 layers", 0.1, {"layers": 3}),
              ("10%, 4 layers x 256", 0.1, {"layers": 4, "hidden": 256})]  # fmt: skip
    if smoke:
        shapes = [("50%", 0.5, {}), ("10%, 1 layer", 0.1, {"layers": 1})]
    models = {"dense": dense}
    for name, flops, extra in shapes:
        model, _ = sp.compress(copy.deepcopy(dense), batches, flops=flops, method="taylor", search=False,
                               reconstruct=None, select=False, progress=False, **extra)  # fmt: skip
        models[name] = model.eval()
    return models


def describe(model, dense) -> dict:
    st = view(model).structure
    return {
        "FLOPs kept": f"{sp.cost(model).encoder_flops / sp.dense_cost(dense).encoder_flops:.1%}",
        "shape": f"{len(st.layers)}L x {st.hidden_width}, {sum(st.heads_per_layer)} heads, "
        f"{sum(st.ffn_per_layer)} FFN",
    }


class PartTimer:
    """Forward hooks on the first and last encoder layer: where a pass enters and leaves the layers."""

    def __init__(self, model):
        layers = view(model).layer_list
        self.marks: dict[str, float] = {}
        self.handles = [
            layers[0].register_forward_pre_hook(lambda m, a: self.marks.__setitem__("in", time.perf_counter())),
            layers[-1].register_forward_hook(lambda m, a, o: self.marks.__setitem__("out", time.perf_counter())),
        ]  # fmt: skip

    def __call__(self, model, batch) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        model(**batch)
        t1 = time.perf_counter()
        return self.marks["in"] - t0, self.marks["out"] - self.marks["in"], t1 - self.marks["out"]

    def remove(self):
        for h in self.handles:
            h.remove()


def time_parts(models: dict, batch_size: int, args) -> dict[str, tuple[float, float, float]]:
    """Median seconds (before the layers, the layers, after them) per model, the models taking turns."""
    timers = {name: PartTimer(m) for name, m in models.items()}
    batches = {name: synthetic_batch(m, batch_size, args.seq) for name, m in models.items()}
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in models}
    with torch.inference_mode():
        for r in range(args.warmup + args.repeat):
            for name, m in models.items():
                parts = timers[name](m, batches[name])
                if r >= args.warmup:
                    samples[name].append(parts)
    for t in timers.values():
        t.remove()
    return {name: tuple(C.median(p[i] for p in s) for i in range(3)) for name, s in samples.items()}


def op_kinds(model, args) -> dict[str, float]:
    """Share of a batch-1 pass per kind of op (profiler self time) and outside the ops."""
    batch = synthetic_batch(model, 1, args.seq)
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(**batch)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(args.profile_passes):
                model(**batch)
            wall = time.perf_counter() - t0
    spent = {kind: 0.0 for kind in (*OP_KINDS, "other ops")}
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):
            continue
        kind = next((k for k, names in OP_KINDS.items() if any(n in e.key for n in names)), "other ops")
        spent[kind] += e.self_cpu_time_total / 1e6
    spent["outside ops (Python, dispatch)"] = max(wall - sum(spent.values()), 0.0)
    return {k: v / wall for k, v in spent.items()}


def traced(model, batch_size: int, seq: int):
    """``model`` as a frozen TorchScript graph (the same aten ops, no Python between them) and its input."""
    batch = synthetic_batch(model, batch_size, seq)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python control flow fixed at trace time
        graph = torch.jit.freeze(
            torch.jit.trace(model, example_kwarg_inputs=dict(batch), strict=False).eval()
        )
    return graph, batch


def time_calls(calls: dict, args) -> dict[str, float]:
    """Median seconds of each zero-argument call, the calls taking turns."""
    with torch.inference_mode():
        t = C.time_alternating(calls, warmup=args.warmup, repeat=args.repeat)
    return {name: C.median(v) for name, v in t.items()}


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    dense, tok = C.model_and_tokenizer(args)
    rows = C.load_examples("sst2", "train", args.data_dir, limit=args.calib, seed=args.seed)
    batches = C.make_batches(rows, tok, "sst2", batch_size=8 if args.smoke else 32, max_length=args.seq)
    models = students(dense, batches, args.smoke)
    threads = args.timing_threads or args.threads
    parts, kinds, one_thread = {}, {}, {}
    graphs = {name: traced(m, 1, args.seq) for name, m in models.items()}
    with C.quiet_timing(args) as quiet:
        for b in args.batch_sizes:
            parts[b] = time_parts(models, b, args)
        for name, m in models.items():
            kinds[name] = op_kinds(m, args)
        calls = {}
        for name, m in models.items():
            batch = synthetic_batch(m, 1, args.seq)
            calls[f"{name}, eager"] = lambda m=m, b=batch: m(**b)
            calls[f"{name}, traced"] = lambda g=graphs[name]: g[0](**g[1])
        script = time_calls(calls, args)
        torch.set_num_threads(1)
        one_thread = time_parts(models, 1, args)
    busy = quiet.other_cores

    dense_flops = sp.dense_cost(dense).encoder_flops
    part_rows = []
    for b in args.batch_sizes:
        d_total = sum(parts[b]["dense"])
        for name, m in models.items():
            before, layers, after = parts[b][name]
            total = before + layers + after
            kept = sp.cost(m).encoder_flops / dense_flops
            n_layers = len(view(m).layer_list)
            part_rows.append({
                "model": name, "batch": b, **describe(m, dense), "total ms": f"{1e3 * total:.2f}",
                "speedup": f"{d_total / total:.2f}x", "efficiency": f"{d_total / total * kept:.2f}",
                "before layers ms": f"{1e3 * before:.2f}", "layers ms": f"{1e3 * layers:.2f}",
                "ms per layer": f"{1e3 * layers / n_layers:.2f}", "after layers ms": f"{1e3 * after:.2f}",
                "layers speedup": f"{parts[b]['dense'][1] / layers:.2f}x",
            })  # fmt: skip
    kind_names = list(next(iter(kinds.values())))
    kind_rows = []
    for name in models:
        total = sum(parts[1][name]) if 1 in parts else None
        row = {"model": name}
        for k in kind_names:
            share = kinds[name][k]
            row[k] = f"{1e3 * share * total:.2f} ({share:.0%})" if total else f"{share:.0%}"
        kind_rows.append(row)
    thread_rows = []
    for name in models:
        t1, tn = sum(one_thread[name]), sum(parts[1][name]) if 1 in parts else None
        thread_rows.append({
            "model": name, "1 thread ms": f"{1e3 * t1:.2f}",
            f"{threads} threads ms": f"{1e3 * tn:.2f}" if tn else "-",
            f"{threads} threads speedup": f"{t1 / tn:.2f}x" if tn else "-",
            "speedup vs dense, 1 thread": f"{sum(one_thread['dense']) / t1:.2f}x",
        })  # fmt: skip

    script_rows = []
    for name, m in models.items():
        kept = sp.cost(m).encoder_flops / dense_flops
        eager, graph = script[f"{name}, eager"], script[f"{name}, traced"]
        script_rows.append({
            "model": name, "eager ms": f"{1e3 * eager:.2f}", "traced ms": f"{1e3 * graph:.2f}",
            "traced / eager": f"{graph / eager:.2f}",
            "speedup, eager": f"{script['dense, eager'] / eager:.2f}x",
            "speedup, traced (vs traced dense)": f"{script['dense, traced'] / graph:.2f}x",
            "efficiency, eager": f"{script['dense, eager'] / eager * kept:.2f}",
            "efficiency, traced": f"{script['dense, traced'] / graph * kept:.2f}",
        })  # fmt: skip

    text = C.header("Where the time goes: dense vs pruned by part, kind of op and threads", note=args.note)
    text += (
        f"\nModels: the dense SST-2 teacher and copies pruned with Taylor scores on {len(rows)} SST-2 train "
        "examples, `sp.compress(..., method='taylor', search=False, reconstruct=None, select=False)` "
        "(+ `layers=` / `hidden=` where named). Inputs: random tokens, full "
        f"{args.seq}-token sequences. {threads} torch threads unless said; median of {args.repeat} passes after "
        f"{args.warmup} warm-ups, the models taking turns"
        + (f"; other jobs paused while timing (`{'`, `'.join(args.pause_while_timing)}`)" if args.pause_while_timing else "")
        + (f"; other processes kept {busy:.2f} cores busy on average while timing" if busy is not None else "")
        + ". Efficiency = speedup x FLOPs kept (1 = the whole FLOPs cut became time).\n\n"
    )  # fmt: skip
    text += "## Parts of the forward\n\nBefore the layers: embeddings and the attention mask; after them: pooler and classifier.\n\n"
    text += C.md_table(part_rows) + "\n\n"
    text += (
        f"## Kinds of op (batch 1 x {args.seq})\n\nms per pass (share): `torch.profiler` self time of the aten ops "
        f"over {args.profile_passes} passes, scaled to the unprofiled median; outside ops = the rest of the wall time "
        "(Python, module calls, dispatch).\n\n"
    )
    text += C.md_table(kind_rows) + "\n\n"
    text += f"## Threads (batch 1 x {args.seq})\n\n" + C.md_table(thread_rows) + "\n\n"
    text += (
        f"## Without Python (batch 1 x {args.seq})\n\nEach model as `torch.jit.freeze(torch.jit.trace(model))` "
        "(TorchScript: the same aten ops, no Python module calls between them) beside the eager model, all "
        f"taking turns; {threads} threads.\n\n"
    )
    text += C.md_table(script_rows) + "\n"
    out = args.out / "breakdown.md"
    C.write_atomic(out, text)
    logger.info("wrote %s", out)
    return out


if __name__ == "__main__":
    main()
