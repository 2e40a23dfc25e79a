"""Why the optimized ONNX export keeps ``Add`` + ``LayerNormalization`` instead of ``SkipLayerNormalization``.

One residual add and its LayerNorm, the op a BERT layer runs twice, timed alone on CPU in four forms:

- ``SkipLayerNormalization``: ONNX Runtime's fused operator (com.microsoft), what its transformer optimizer
  writes by default and what its session fuses an ``Add`` + ``LayerNormalization`` pair into at load time;
- ``Add + LayerNormalization, sp.onnx_session``: the pair as ``sp.export_onnx(optimize=True)`` writes it,
  opened without ONNX Runtime's ``SkipLayerNormFusion`` (what ``sp.onnx_session`` does on CPU);
- ``Add + LayerNormalization, plain session``: the same file in a default ``onnxruntime.InferenceSession``
  (graph optimizations ALL), which fuses it back into ``SkipLayerNormalization``;
- ``PyTorch``: ``layer_norm(x + bias + skip)``.

Inputs: batch x ``--seq`` x hidden float32 (hidden 384: MiniLM; 768: BERT-base / MPNet). Timing: every form
round robin in one loop (``_common.time_alternating``), ``--warmup`` rounds, then the median of ``--repeat``;
``--threads`` threads in both runtimes.

    python benchmarks/ort_layernorm.py [--threads 1] [--pause-while-timing PATTERN ...]
    python benchmarks/ort_layernorm.py --smoke --out /tmp/bench   # seconds, numbers meaningless
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

FORMS = (
    "SkipLayerNormalization",
    "Add + LayerNormalization, sp.onnx_session",
    "Add + LayerNormalization, plain session",
    "PyTorch",
)


def parse_args(argv=None):
    p = C.base_parser(__doc__.splitlines()[0])
    C.add_timing_flags(p, "timed rounds (median)")
    C.add_quiet_timing_flags(p)
    p.add_argument("--hidden", type=int, nargs="+", default=[384, 768])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.set_defaults(repeat=30)
    args = p.parse_args(argv)
    if args.smoke:
        args.hidden, args.batch_sizes, args.seq, args.repeat, args.warmup = [32], [2], 8, 3, 1
    return args


def params(hidden: int) -> dict[str, np.ndarray]:
    """The LayerNorm's weight and bias and the residual branch's bias (random, seed 0)."""
    rng = np.random.default_rng(0)
    return {
        "gamma": (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32),
        "beta": (0.1 * rng.standard_normal(hidden)).astype(np.float32),
        "bias": (0.1 * rng.standard_normal(hidden)).astype(np.float32),
    }


def graph(hidden: int, fused: bool) -> bytes:
    """One residual add + LayerNorm over ``[batch, seq, hidden]`` inputs ``x`` and ``skip`` (dynamic batch and
    sequence), with a bias, as ``SkipLayerNormalization`` or as ``Add``, ``Add``, ``LayerNormalization``."""
    from onnx import TensorProto, helper, numpy_helper

    io = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", "seq", hidden])
        for n in ("x", "skip", "y")
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in params(hidden).items()]
    if fused:
        nodes = [
            helper.make_node(
                "SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y"], domain="com.microsoft",
                epsilon=1e-12,
            )
        ]  # fmt: skip
    else:
        nodes = [
            helper.make_node("Add", ["x", "bias"], ["biased"]),
            helper.make_node("Add", ["biased", "skip"], ["summed"]),
            helper.make_node(
                "LayerNormalization", ["summed", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12
            ),
        ]
    g = helper.make_graph(nodes, "residual_layernorm", io[:2], io[2:], inits)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(g, opset_imports=opsets).SerializeToString()


def forms(hidden: int, threads: int, tmp: Path) -> dict:
    """``{form: callable(x, skip) -> y}`` for one hidden size."""
    import onnxruntime as ort

    paths = {}
    for fused in (True, False):
        paths[fused] = tmp / f"h{hidden}-{'skip' if fused else 'add'}.onnx"
        paths[fused].write_bytes(graph(hidden, fused))
    # the benchmarks' sessions (sp.onnx_session; threads spin only during a run, so no session takes the cores
    # of the next form), and a default one with the same options
    plain = ort.InferenceSession(
        str(paths[False]), C.ort_options(threads), providers=["CPUExecutionProvider"]
    )
    sessions = {
        FORMS[0]: C.ort_session(paths[True], threads),
        FORMS[1]: C.ort_session(paths[False], threads),
        FORMS[2]: plain,
    }
    out = {k: (lambda x, s, sess=v: sess.run(None, {"x": x, "skip": s})[0]) for k, v in sessions.items()}
    w = {k: torch.from_numpy(v) for k, v in params(hidden).items()}

    def torch_form(x, s):
        with torch.inference_mode():
            summed = torch.from_numpy(x) + w["bias"] + torch.from_numpy(s)
            return torch.nn.functional.layer_norm(summed, (hidden,), w["gamma"], w["beta"], eps=1e-12)

    out[FORMS[3]] = torch_form
    return out


def main(argv=None) -> Path:
    args = parse_args(argv)
    C.setup(args)
    threads = args.timing_threads or args.threads
    torch.set_num_threads(threads)
    rows, busy = [], []
    with tempfile.TemporaryDirectory(prefix="sp-ortln-") as tmp:
        for hidden in args.hidden:
            fns = forms(hidden, threads, Path(tmp))
            for b in args.batch_sizes:
                rng = np.random.default_rng(b)
                x, s = (rng.standard_normal((b, args.seq, hidden), dtype=np.float32) for _ in range(2))
                ys = {k: np.asarray(f(x, s)) for k, f in fns.items()}
                ref = ys["SkipLayerNormalization"]
                calls = {k: (lambda f=f, x=x, s=s: f(x, s)) for k, f in fns.items()}
                with C.quiet_timing(args) as quiet:
                    times = C.time_alternating(calls, warmup=args.warmup, repeat=args.repeat)
                busy.append(quiet.other_cores)
                ms = {k: 1e3 * C.median(t) for k, t in times.items()}
                for k in FORMS:
                    rows.append(
                        {
                            "hidden": hidden,
                            "batch x seq": f"{b} x {args.seq}",
                            "form": k,
                            "ms": f"{ms[k]:.3f}",
                            "x PyTorch": f"{ms[k] / ms['PyTorch']:.2f}",
                            "max abs diff vs SkipLayerNormalization": f"{float(np.abs(ys[k] - ref).max()):.1e}",
                        }
                    )
    load = ", ".join("unknown" if v is None else f"{v:.2f}" for v in busy)
    text = C.header("ONNX Runtime on CPU: SkipLayerNormalization vs Add + LayerNormalization", note=args.note)
    text += (
        f"\nOne residual add + LayerNorm (with bias) on batch x seq x hidden float32; {threads} threads in both "
        f"runtimes; {args.warmup} warm-up rounds, then the median of {args.repeat}, every form round robin. "
        f"Other processes' load while timing (cores, per hidden x batch): {load}. Forms: see the docstring of "
        "`benchmarks/ort_layernorm.py`.\n\n"
    )
    text += C.md_table(rows)
    out = C.write_atomic(Path(args.out) / "ort_layernorm.md", text)
    print(out)
    return out


if __name__ == "__main__":
    main()
