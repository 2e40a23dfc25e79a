"""Each benchmark script runs end to end on a tiny random BERT (``--smoke``) so the scripts do not rot.

The numbers mean nothing here; the tests check that every script writes its results file with the
reproducibility header and a table, and its plot where it makes one. The scripts read SST-2 where the
library does by default, ``$STRUCTPRUNE_GLUE_DIR`` (see ``conftest.py``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow  # reads real GLUE examples (tokenized by the MiniLM tokenizer)


@pytest.fixture(autouse=True)
def _needs_sst2(sst2_glue_dir):
    """The scripts get no --data-dir here: they find SST-2 through $STRUCTPRUNE_GLUE_DIR, as users do."""


def _script(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_header(text: str, title: str) -> None:
    assert text.startswith(f"# {title}")
    for field in ("- Command:", "- Date:", "- Machine:", "- Versions:"):
        assert field in text, f"missing {field!r} in the results header"
    assert "|---|" in text, "no Markdown table"


def test_latency_smoke(tmp_path):
    out = _script("latency").main(["--smoke", "--out", str(tmp_path)])
    text = out.read_text()
    _check_header(text, "Latency")
    assert "| PyTorch |" in text and "| ONNX Runtime |" in text
    assert "multiple_of" in text
    assert (tmp_path / "latency.png").stat().st_size > 1000


def test_cost_smoke(tmp_path):
    out = _script("cost").main(["--smoke", "--out", str(tmp_path)])
    text = out.read_text()
    _check_header(text, "Cost of each stage")
    for stage in ("score: taylor", "allocate", "prune_", "Calibration-set size", "Model size"):
        assert stage in text
    assert (tmp_path / "cost.png").exists()


def test_peers_smoke(tmp_path):
    methods = ["structprune taylor (global)", "Torch-Pruning taylor (uniform)"]
    out = _script("peers").main(["--smoke", "--out", str(tmp_path), "--methods", *methods])
    text = out.read_text()
    _check_header(text, "Peers side by side")
    assert "| structprune taylor (global) | 50% |" in text
    assert "Save and reload" in text
    # the pruned model's kept FLOPs are recomputed from its shapes and match the budget
    row = next(line for line in text.splitlines() if line.startswith("| structprune taylor (global) | 50% |"))
    assert "| 50.0% |" in row


def test_pareto_smoke(tmp_path):
    paths = _script("pareto").main(["--smoke", "--out", str(tmp_path), "--scorers", "taylor"])
    text = paths[0].read_text()
    _check_header(text, "Accuracy vs encoder FLOPs kept: SST2")
    assert "| taylor | none | 50% |" in text
    assert "dense teacher" in text
    assert (tmp_path / "pareto_sst2.png").stat().st_size > 1000


def test_quantize_smoke(tmp_path):
    out = _script("quantize").main(["--smoke", "--out", str(tmp_path)])
    text = out.read_text()
    _check_header(text, "Pruning + int8 quantization")
    for fmt in ("| PyTorch fp32 (safetensors) |", "| ONNX fp32 |", "| ONNX int8 (dynamic) |"):
        assert text.count(fmt) == 2  # the dense and the pruned model
    assert "ONNX fp32 parity with PyTorch" in text


def test_quality_smoke(tmp_path):
    import json

    args = ["--smoke", "--out", str(tmp_path)]
    out = _script("quality").main(args)
    text = out.read_text()
    assert text.startswith("# Quality against converged task teachers")
    for field in ("- Command:", "- Date:", "- Machine:", "- Versions:"):
        assert field in text, f"missing {field!r} in the results header"
    assert "## Summary" in text and "## SST-2" in text
    assert text.count("|-") >= 2  # the summary table and the SST-2 table (structprune.report.markdown_table)
    assert "Kwon et al. 2022" in text and "CoFi" in text and "TinyBERT-4" in text  # the published anchors
    for method in ("dense teacher", "retraining-free sp.compress", "Taylor + sp.allocate (global)"):
        assert f"| {method} " in text
    assert "| pruned + distilled (TinyBERT stages) " in text and "| pruned + fine-tuned, no teacher " in text
    assert "choice: " in text  # compress reports the candidate it kept
    rows = json.loads((tmp_path / "quality.json").read_text())["tasks"]["sst2"]["rows"]
    assert all("metrics" in r for r in rows if not r["method"].startswith("Torch-Pruning"))
    # a rerun re-measures the dense teacher only and keeps every row already measured
    _script("quality").main(args)
    again = json.loads((tmp_path / "quality.json").read_text())["tasks"]["sst2"]["rows"]
    measured = {(r["method"], r["budget"]): r.get("measured") for r in again}
    assert measured[("dense teacher", None)] == "run 2"
    assert all(m == "run 1" for (method, _), m in measured.items() if method != "dense teacher" and m)
