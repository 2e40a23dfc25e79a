"""Every ```python block of README.md runs, in order, in one namespace: the README cannot drift from the code.

A prelude defines the names the blocks use but do not define (``batches``, ``teacher``, the loaders, the
tokenizer), on a small random BERT built in-process and made-up sentences; it also writes what the blocks
read from disk (``path/to/teacher``, a tiny SentenceTransformer in ``path/to/sentence-model``, SST-2 and
STS-B files under ``$STRUCTPRUNE_GLUE_DIR``, ``data/reviews_train.csv``) into a temporary working folder, so
nothing leaves the test. The model is
just wide and deep enough for what the blocks prune to (``layers=3, hidden=256``), with a 99-word
vocabulary, a narrow FFN and one training batch per epoch, so the whole README runs in well under a minute.
"""

from __future__ import annotations

import copy
import csv
import json
import random
import re
from pathlib import Path

import pytest
import tiny
import torch
from transformers import BertConfig, BertForSequenceClassification

import structprune as sp
from structprune.data import make_dataloader

# the README's examples run on 16 made-up sentences: the warnings about so little calibration data are right
pytestmark = pytest.mark.filterwarnings("ignore:Only .* calibration examples", "ignore:Reconstruction:")

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number of the block's first line, code)`` for every fenced python block."""
    return [(text[: m.start(1)].count("\n") + 1, m.group(1)) for m in FENCE.finditer(text)]


def sentences(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"sentence": " ".join(rng.choices(tiny.WORDS, k=rng.randint(3, 9))), "label": i % 2} for i in range(n)
    ]


def sentence_model(folder: Path) -> None:
    """A tiny SentenceTransformer (random BERT -> mean pooling -> normalisation) saved in ``folder``, for the
    "Pruned sentence-transformers models" block."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertModel

    base = folder.with_name(folder.name + "-base")
    BertModel(BertConfig(**tiny.COMMON)).save_pretrained(base)
    tiny.tokenizer().save_pretrained(base)
    transformer = Transformer(str(base))
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu").save(str(folder))


@pytest.fixture
def prelude(tmp_path, monkeypatch) -> dict:
    return make_prelude(tmp_path, monkeypatch)


def make_prelude(tmp_path: Path, monkeypatch) -> dict:
    """The names the README's blocks use, and the files they read, in ``tmp_path`` (the working folder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STRUCTPRUNE_PROGRESS", "0")
    monkeypatch.setenv("STRUCTPRUNE_CACHE", str(tmp_path / "cache"))  # the latency model's cache, for one
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tiny.VOCAB, hidden_size=264, num_hidden_layers=4, num_attention_heads=8,
                     intermediate_size=32, num_labels=2)  # fmt: skip
    teacher = BertForSequenceClassification(cfg).eval()
    tokenizer = tiny.tokenizer()
    sp.save_pretrained(teacher, "path/to/teacher", tokenizer=tokenizer, card=False)

    glue = tmp_path / "glue"
    (glue / "SST-2").mkdir(parents=True)
    with open(glue / "SST-2" / "validation.jsonl", "w") as f:
        for row in sentences(24, seed=1):
            f.write(json.dumps(row) + "\n")
    sentence_model(tmp_path / "path/to/sentence-model")
    (glue / "STS-B").mkdir()
    for split, seed in (("train", 5), ("validation", 6)):
        a, b = sentences(12, seed=seed), sentences(12, seed=seed + 10)
        with open(glue / "STS-B" / f"{split}.jsonl", "w") as f:
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                row = {"sentence1": x["sentence"], "sentence2": y["sentence"], "label": float(i % 6)}
                f.write(json.dumps(row) + "\n")
    monkeypatch.setenv("STRUCTPRUNE_GLUE_DIR", str(glue))
    Path("data").mkdir()
    with open("data/reviews_train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "stars"])
        writer.writerows([[r["sentence"], i % 3] for i, r in enumerate(sentences(12, seed=2))])

    train, val = sentences(16, seed=3), sentences(16, seed=4)
    return {
        "copy": copy,
        "teacher": teacher,
        "tokenizer": tokenizer,
        "train_sentences": [r["sentence"] for r in train],
        "batches": list(make_dataloader(train, tokenizer, "sst2", batch_size=8)),
        "calibration_loader": make_dataloader(train, tokenizer, "sst2", batch_size=8),
        "train_loader": make_dataloader(train, tokenizer, "sst2", batch_size=16, shuffle=True),
        "eval_loader": make_dataloader(val, tokenizer, "sst2", batch_size=16),
    }


def test_readme_has_python_blocks():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 4
    assert any("sp.prune_(model, mask)" in code for _, code in blocks)


def test_every_python_block_of_the_readme_runs(prelude, monkeypatch):
    from structprune.arch.spec import _REGISTRY

    monkeypatch.setattr("structprune.arch.spec._REGISTRY", dict(_REGISTRY))  # the family block registers one
    namespace = dict(prelude)
    for line, code in python_blocks(README.read_text(encoding="utf-8")):
        # padded so a failure's traceback names the README line
        exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)  # noqa: S102
    assert "my-modernbert" in sp.arch.supported_families()  # what the "Adding a family" block did
    # what the blocks claim, checked on what they left behind
    assert sp.arch.view(namespace["model"]).structure.is_pruned
    assert sp.arch.view(namespace["student"]).structure.is_pruned
    assert "accuracy" in namespace["task"].metrics or namespace["task"].name == "reviews"
