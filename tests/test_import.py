"""``import structprune`` is cheap (heavy dependencies load on first use) and still registers the Auto classes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import pruned

import structprune as sp
from structprune import _autoconfig

HEAVY = ("datasets", "sklearn", "scipy", "accelerate", "onnx", "onnxruntime", "matplotlib", "torch", "tqdm")


def _python(code: str, timeout: int = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_import_structprune_loads_no_heavy_dependency():
    code = (
        "import json, sys\nimport structprune\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))"
    )
    assert json.loads(_python(code)) == []


def test_names_resolve_on_first_use():
    assert set(sp.__all__) == set(sp._WHERE) and set(sp.__all__) <= set(dir(sp))
    for name in sp.__all__:
        assert getattr(sp, name) is not None, name
    assert sp.arch.view and sp.gates.Gates and sp.checkpoint.write_model_card  # submodules too
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sp.nope  # noqa: B018


def test_builtin_families_match_the_architecture_registry():
    from structprune.arch import families

    specs = [s for s in vars(families).values() if isinstance(s, sp.ArchSpec)]  # every row of the file
    assert len(specs) == 5  # BERT (and its layout's families), DistilBERT, MPNet, ModernBERT, DeBERTa-v2
    assert set(_autoconfig.BUILTIN_FAMILIES) == {t for s in specs for t in s.model_types or (s.name,)}


def test_auto_classes_load_a_pruned_checkpoint_after_a_bare_import(tmp_path):
    folder = sp.save_pretrained(pruned("bert"), tmp_path / "ckpt", tokenizer=None)
    code = (
        "import json, sys\nimport structprune\nassert 'torch' not in sys.modules\n"
        "from transformers import AutoConfig, AutoModelForSequenceClassification\n"
        f"c = AutoConfig.from_pretrained({str(folder)!r})\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({str(folder)!r})\n"
        "print(json.dumps([type(c).__name__, type(m).__name__, m.config.structprune['layers']]))"
    )
    config, name, layers = json.loads(_python(code))
    assert config == "StructPruneBertConfig" and name == "StructPruneBertForSequenceClassification"
    assert layers == [0, 2]


def test_auto_classes_imported_before_structprune_still_see_its_configs(tmp_path):
    folder = sp.save_pretrained(pruned("mpnet"), tmp_path / "ckpt", tokenizer=None)
    code = (
        "from transformers import AutoModelForSequenceClassification\nimport structprune\n"
        f"print(type(AutoModelForSequenceClassification.from_pretrained({str(folder)!r})).__name__)"
    )
    assert _python(code).strip() == "StructPruneMPNetForSequenceClassification"


def _benchmark():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import import_time

    return import_time


def test_import_time_benchmark_reads_importtime_output():
    import_time = _benchmark()

    stderr = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       500 |        900 | encodings",  # start-up: not counted
            "import time:      1000 |       2000 | site",
            "import time:       300 |        300 |   os.path",
            "import time:      4000 |      70000 | transformers",
            "import time:      2000 |      30000 |   transformers.utils",
            "import time:       100 |       5000 | structprune.progress",
        ]
    )
    assert import_time.top_level_us(stderr) == 75000


@pytest.mark.slow  # starts 5 interpreters, 3 of which import torch
def test_import_time_benchmark_writes_its_table(tmp_path):
    out = _benchmark().main(["--smoke", "--out", str(tmp_path)])
    text = out.read_text()
    assert text.startswith("# Import time")
    assert any(line.startswith("| `import structprune` ") for line in text.splitlines())
    assert "within the budget" in text  # import structprune <= 1.1 x import transformers
