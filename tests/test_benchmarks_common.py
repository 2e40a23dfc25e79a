"""benchmarks/_common.py helpers that pick inputs for the result tables (no benchmark is run here)."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

from structprune.run.teachers import content_fingerprint

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def common():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("_common")


def _model(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "tag": tag}))
    (folder / "model.safetensors").write_bytes(tag.encode())
    return folder


def _teacher(cache: Path, name: str, base: Path, f1: float, *, finished: bool = True) -> Path:
    folder = cache / name
    folder.mkdir(parents=True)
    if finished:
        (folder / "config.json").write_text("{}")
    record = {"task": "mrpc", "main_metric": "f1", "base_model_fingerprint": content_fingerprint(base),
              "curve": [{"epoch": 1, "eval_f1": f1}], "best": {"epoch": 1, "eval_f1": f1}}  # fmt: skip
    (folder / "teacher.json").write_text(json.dumps(record))
    return folder


def test_best_cached_teacher_keeps_to_its_base_model(common, tmp_path):
    minilm, mpnet = _model(tmp_path / "minilm", "a"), _model(tmp_path / "mpnet", "b")
    cache = tmp_path / "teachers"
    _teacher(cache, "minilm-mrpc-111", minilm, 0.85)
    best_minilm = _teacher(cache, "minilm-mrpc-222", minilm, 0.87)
    _teacher(cache, "minilm-mrpc-333", minilm, 0.99, finished=False)  # still training: no config.json
    best_mpnet = _teacher(cache, "all-mpnet-base-v2-mrpc-444", mpnet, 0.90)
    path, record = common.best_cached_teacher("mrpc", cache, base=minilm)
    assert path == best_minilm and record["best"]["eval_f1"] == 0.87  # the better MPNet one is not taken
    assert common.best_cached_teacher("mrpc", cache, base=mpnet)[0] == best_mpnet
    assert common.best_cached_teacher("rte", cache, base=minilm) == (None, None)


def test_mpnet_base_from_the_environment_must_be_a_model_folder(common, tmp_path, monkeypatch):
    monkeypatch.setenv("STRUCTPRUNE_MPNET", str(tmp_path))
    with pytest.raises(SystemExit, match="no config.json"):
        common.mpnet_base()
    folder = _model(tmp_path / "m", "c")
    monkeypatch.setenv("STRUCTPRUNE_MPNET", str(folder))
    assert common.mpnet_base() == folder


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to read process states")
def test_quiet_timing_pauses_other_jobs_and_always_resumes_them(common, tmp_path):
    import argparse
    import subprocess
    import time

    import torch

    marker = f"structprune-quiet-timing-test-{tmp_path.name}"
    job = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)", marker])
    try:
        p = argparse.ArgumentParser()
        common.add_quiet_timing_flags(p)
        args = p.parse_args(["--pause-while-timing", marker, "--timing-threads", "1"])
        threads = torch.get_num_threads()
        with pytest.raises(RuntimeError, match="inside"), common.quiet_timing(args) as paused:
            assert paused == [job.pid]
            assert _state(job.pid) == "T"  # stopped
            assert torch.get_num_threads() == 1
            raise RuntimeError("a failure inside the timed block")
        time.sleep(0.1)
        assert _state(job.pid) != "T"  # resumed although the block failed
        assert torch.get_num_threads() == threads
        # never this process (nor its parents), even when the pattern matches its own command line
        assert os.getpid() not in common._paused_candidates([sys.argv[0] or "python", "pytest", marker])
        assert job.pid in common._paused_candidates([marker])
        # what else used the cores while timing is measured: a busy job not named by the patterns shows
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass", f"unnamed-{tmp_path.name}"])
        try:
            time.sleep(0.5)
            with common.quiet_timing(args) as quiet:
                before, t0 = _cpu_s(busy.pid), time.perf_counter()
                time.sleep(1.0)
                used = (_cpu_s(busy.pid) - before) / (time.perf_counter() - t0)  # its own count, in cores
            assert used > 0.1  # it did run
            # the busy job is among the others (tolerance: clock ticks); never more than the machine has
            assert used - 0.05 <= quiet.other_cores <= os.cpu_count() + 0.05, (used, quiet.other_cores)
        finally:
            busy.kill()
            busy.wait()
        # a job someone else stopped is left alone: neither counted nor resumed on the way out
        job.send_signal(__import__("signal").SIGSTOP)
        time.sleep(0.1)
        with common.quiet_timing(args) as paused:
            assert paused == []
        time.sleep(0.1)
        assert _state(job.pid) == "T"
    finally:
        job.kill()
        job.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to read process states")
def test_quiet_timing_resumes_other_jobs_when_terminated(tmp_path):
    """A SIGTERM of the timing process (e.g. `kill` of a benchmark) still resumes the jobs it paused."""
    import subprocess
    import time

    marker = f"structprune-quiet-timing-term-{tmp_path.name}"
    job = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)", marker])
    code = (
        "import argparse, sys, time\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "import _common as C\n"
        "p = argparse.ArgumentParser(); C.add_quiet_timing_flags(p)\n"
        f"args = p.parse_args(['--pause-while-timing', {marker!r}])\n"
        "with C.quiet_timing(args):\n"
        "    print('paused', flush=True)\n"
        "    time.sleep(60)\n"
    )
    timer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert timer.stdout.readline().strip() == "paused"
        assert _state(job.pid) == "T"
        timer.terminate()
        assert timer.wait(timeout=120) != 0  # a handler that never ran: rc 0 after the 60 s sleep
        time.sleep(0.1)
        assert _state(job.pid) != "T"
    finally:
        timer.kill()
        job.kill()
        job.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to read process states")
def test_two_scripts_that_pause_each_other_take_turns(tmp_path):
    """Two benchmarks each pausing the other: the second waits until the first has resumed everything, so
    neither can stop the other while it is stopped itself (both would stay stopped for good)."""
    import subprocess

    a, b = f"structprune-turn-a-{tmp_path.name}", f"structprune-turn-b-{tmp_path.name}"
    ready = tmp_path / "second-is-ready"

    def script(other: str, *, first: bool) -> str:
        wait = f"    while not os.path.exists({str(ready)!r}): time.sleep(0.05)\n    time.sleep(1.0)\n"
        return (
            "import argparse, os, sys, time\n"
            f"sys.path.insert(0, {str(BENCH)!r})\n"
            "import _common as C\n"
            "p = argparse.ArgumentParser(); C.add_quiet_timing_flags(p)\n"
            f"args = p.parse_args(['--pause-while-timing', {other!r}])\n"
            + ("" if first else f"open({str(ready)!r}, 'w').close()\n")
            + "with C.quiet_timing(args) as paused:\n"
            "    print('in', time.time(), len(paused), flush=True)\n"
            + (wait if first else "")
            + "print('out', time.time(), flush=True)\n"
            + ("time.sleep(2.0)\n" if first else "")
        )

    first = subprocess.Popen(
        [sys.executable, "-c", script(b, first=True), a], stdout=subprocess.PIPE, text=True
    )
    second = None
    try:
        assert first.stdout.readline().split()[0] == "in"
        second = subprocess.Popen(
            [sys.executable, "-c", script(a, first=False), b], stdout=subprocess.PIPE, text=True
        )
        out, _ = second.communicate(timeout=60)
        (_, second_in, second_paused), _ = [line.split() for line in out.splitlines()]
        word, first_out = first.stdout.readline().split()
        assert word == "out"
        # the second was ready while the first still had the machine paused, and waited for its turn
        assert float(second_in) >= float(first_out)
        assert second_paused == "1"  # then it paused the first one, which lingered after its block
        assert first.wait(timeout=60) == 0 and second.returncode == 0  # both ran to the end
    finally:
        for proc in (first, second):
            if proc is not None:
                proc.kill()
                proc.wait()


def test_results_files_name_no_folder_of_this_machine(common, tmp_path, monkeypatch):
    monkeypatch.setenv("STRUCTPRUNE_CACHE", str(tmp_path / "cache"))
    teacher = tmp_path / "cache" / "teachers" / "minilm-mrpc-1cc8b94c69c1"
    shared = common.REPO.parent / "shared" / "models" / "minilm-l6-sst2"
    text = f"- Teacher: `{teacher}`\n- Reference: {shared}\n- Script: {common.REPO / 'benchmarks' / 'x.py'}\n- {Path.home()}/out\n"
    out = common.write_atomic(tmp_path / "r.md", text).read_text()
    assert str(tmp_path) not in out and str(common.REPO) not in out and str(Path.home()) not in out
    assert "$STRUCTPRUNE_CACHE/teachers/minilm-mrpc-1cc8b94c69c1" in out
    assert "../shared/models/minilm-l6-sst2" in out and "./benchmarks/x.py" in out and "~/out" in out
    # state files (JSON) keep the real paths a resumed run reads back
    assert str(teacher) in common.write_atomic(tmp_path / "s.json", text).read_text()


def test_time_in_blocks_runs_each_function_in_a_row_and_splits_its_first_call(common):
    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = common.time_in_blocks(fns, warmup=1, repeat=2, block=3)
    assert calls == (["a"] * 3 + ["b"] * 3) * 3  # 1 warm-up round + 2 timed, each a block of 3 per function
    for first, later in times.values():
        assert len(first) == 2 and len(later) == 4  # warm-up calls are not kept
        assert all(t >= 0 for t in first + later)
    calls.clear()
    plain = common.time_alternating(fns, warmup=0, repeat=2)
    assert calls == ["a", "b", "a", "b"] and {k: len(v) for k, v in plain.items()} == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="block must be >= 1"):
        common.time_in_blocks(fns, block=0)
