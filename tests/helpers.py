"""Helpers shared by several test modules (test modules do not import each other).

- Pruned tiny checkpoints: :func:`pruned` with the masks it uses, and a fast tokenizer to save with them.
- A Python that cannot import structprune: :func:`run_without_structprune` and
  :data:`NO_STRUCTPRUNE_SCRIPT`, which loads checkpoints there with transformers alone.
- Random text rows over ``tiny.WORDS`` for the data and evaluation tests: :func:`rows`.
- ``structprune.evaluate`` without and with an Accelerator (one or two processes): :func:`evaluate_prepared`.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import sysconfig
from pathlib import Path

import tiny
import torch
from transformers import BertTokenizerFast

import structprune as sp


def nonuniform_mask(model) -> sp.Mask:
    """Different heads and FFN widths per layer, the middle layer dropped (tiny: 3 layers x 4 heads x 48)."""
    mask = sp.Mask.full(model)
    mask.head[0, [0, 3]] = False  # layer 0 keeps heads 1, 2
    mask.ffn[0, :10] = False
    mask.head[1] = False  # layer 1 dropped
    mask.ffn[1] = False
    mask.head[2, 0] = False  # layer 2 keeps heads 1, 2, 3 (union of kept heads: 1, 2, 3)
    mask.ffn[2, 5:30] = False
    return mask


def stock_mask(model) -> sp.Mask:
    """All heads, one FFN width (different neurons per layer), the middle layer dropped."""
    mask = sp.Mask.full(model)
    mask.head[1] = False
    mask.ffn[1] = False
    mask.ffn[0, :8] = False
    mask.ffn[2, -8:] = False
    return mask


HAS_HIDDEN = "hidden" in sp.Mask.__dataclass_fields__


def hidden_mask(model) -> sp.Mask:
    """The non-uniform mask plus 5 of the 32 residual-stream dimensions removed."""
    mask = nonuniform_mask(model)
    mask.hidden = torch.ones(sp.arch.view(model).structure.hidden_size, dtype=torch.bool)
    mask.hidden[[1, 5, 7, 20, 31]] = False
    return mask


def pruned(family: str = "bert", task: str = "seq-cls", stock: bool = False, hidden: bool = False):
    """A tiny ``family`` model pruned by :func:`nonuniform_mask` (or :func:`stock_mask` / :func:`hidden_mask`)."""
    model = tiny.model(family, task)
    mask = stock_mask(model) if stock else hidden_mask(model) if hidden else nonuniform_mask(model)
    return sp.prune_(model, mask)


def tokenizer(tmp_path: Path) -> BertTokenizerFast:
    """A fast WordPiece tokenizer over the tiny models' vocabulary (``w0``, ``w1``, ...), to save beside them."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(tiny.VOCAB - 5)]
    file = tmp_path / "vocab.txt"
    file.write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab=str(file))  # transformers 5: `vocab`; `vocab_file` is silently ignored
    assert len(tok) == tiny.VOCAB and tok.convert_tokens_to_ids("w3") == 8, "the tiny vocabulary was not read"
    return tok


# The start of every script run without structprune: argv[1] is the site-packages path list; structprune
# must not be importable there.
ISOLATED_PRELUDE = r"""
import json, sys
sys.path.extend(sys.argv[1].split(__import__("os").pathsep))
try:
    import structprune
except ImportError:
    pass
else:
    raise SystemExit("structprune is importable in the isolated interpreter")
"""

# Loads each case's checkpoint with transformers alone and compares its logits with the saved reference:
# argv[1] site-packages paths, argv[2] cases.json ([{"dir", "ref", "stock"}]), argv[3] the output JSON.
NO_STRUCTPRUNE_SCRIPT = (
    ISOLATED_PRELUDE
    + r"""import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

results = {}
for case in json.loads(open(sys.argv[2]).read()):
    ref = load_file(case["ref"])
    feed = {k: ref[k] for k in ("input_ids", "attention_mask")}
    result = {}
    if not case["stock"]:
        try:
            AutoModelForSequenceClassification.from_pretrained(case["dir"])
            result["plain"] = "loaded"
        except ValueError as err:
            result["plain"] = str(err)
    model = AutoModelForSequenceClassification.from_pretrained(case["dir"], trust_remote_code=not case["stock"])
    result["module"] = type(model).__module__
    with torch.no_grad():
        result["max_diff"] = float((model.eval()(**feed).logits - ref["logits"]).abs().max())
    results[case["dir"]] = result
json.dump(results, open(sys.argv[3], "w"))
"""
)


def run_without_structprune(script: str, args: list[str], tmp_path: Path, timeout: int = 300):
    """Run ``script`` in an interpreter that sees site-packages but not structprune (nor the repo)."""
    paths = os.pathsep.join(
        dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    )
    file = tmp_path / "script.py"
    file.write_text(script)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
        "HF_HUB_OFFLINE": "1",
    }
    # -I: no PYTHONPATH, no user site, no script dir; -S: no site-packages .pth files (the editable
    # install of structprune is one); cwd outside the repository.
    return subprocess.run(
        [sys.executable, "-I", "-S", str(file), paths, *args],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows(n: int, seed: int = 0, num_labels: int = 2, pair: bool = False) -> list[dict]:
    """``n`` random rows of tiny.WORDS: ``sentence`` (or ``premise`` + ``hypothesis``) and ``label`` (a class,
    or a float in [0, 5] when ``num_labels == 1``)."""
    r = random.Random(seed)

    def text() -> str:
        return " ".join(r.choice(tiny.WORDS) for _ in range(r.randint(1, 14)))

    out = []
    for _ in range(n):
        row = {"premise": text(), "hypothesis": text()} if pair else {"sentence": text()}
        row["label"] = round(r.uniform(0, 5), 2) if num_labels == 1 else r.randint(0, num_labels - 1)
        out.append(row)
    return out


def evaluate_prepared(accelerator, n: int) -> tuple[dict, dict]:
    """``structprune.evaluate`` of a tiny BERT on ``rows(n)`` (SST-2, batch 4): plain, then with the model and
    loader prepared by ``accelerator``; ``(plain, prepared)``, which should agree."""
    from structprune.data import make_dataloader

    model = tiny.model("bert", num_labels=2)
    loader = make_dataloader(rows(n), tiny.tokenizer(), "sst2", batch_size=4)
    want = sp.evaluate(model, loader, "sst2", progress=False)
    model, loader = accelerator.prepare(model, loader)
    return want, sp.evaluate(model, loader, "sst2", accelerator=accelerator, progress=False)
