"""Distributed correctness: the loop under two CPU processes (torchrun, gloo) matches one process with
the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
WORKER = HERE / "distill_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {
        "weights": load_file(str(out / "student.safetensors")),
        "history": json.loads((out / "history.json").read_text()),
        "structure": json.loads((out / "structure.json").read_text()),
        "key_biases": json.loads((out / "key_biases.json").read_text()),
    }


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    one = _run([sys.executable, str(WORKER), str(tmp_path / "one"), "8"], tmp_path / "one")
    two = _run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
            "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), str(tmp_path / "two"), "4",
        ],
        tmp_path / "two",
    )  # fmt: skip
    # the same structure was pruned away (scores summed over the processes' shares of the data)
    assert one["structure"] == two["structure"]
    assert one["structure"]["heads"] != [[0, 1, 2, 3]] * 3
    # the same weights, up to float summation order. Attention key biases are left out: softmax is
    # shift-invariant, so their gradient is exactly 0 and Adam only amplifies rounding noise there.
    assert one["weights"].keys() == two["weights"].keys()
    assert len(one["key_biases"]) == 3
    for k, w in one["weights"].items():
        if k not in one["key_biases"]:
            assert torch.allclose(w, two["weights"][k], atol=5e-5, rtol=1e-4), k
    # the same logged losses and eval metrics (gathered over both processes)
    losses_1 = [r["loss"] for r in one["history"] if "loss" in r]
    losses_2 = [r["loss"] for r in two["history"] if "loss" in r]
    assert len(losses_1) == len(losses_2) == 24
    assert torch.allclose(torch.tensor(losses_1), torch.tensor(losses_2), atol=1e-3)
    evals_1 = [r for r in one["history"] if "eval_accuracy" in r]
    evals_2 = [r for r in two["history"] if "eval_accuracy" in r]
    assert [r["eval_accuracy"] for r in evals_1] == [r["eval_accuracy"] for r in evals_2]
