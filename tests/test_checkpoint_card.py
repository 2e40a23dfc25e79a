"""The model card: Hub metadata, per-layer table and heatmap, all computed from the model."""

from __future__ import annotations

import re
import sys

import pytest
import tiny
import torch
from helpers import pruned
from huggingface_hub import ModelCard
from matplotlib.image import imread

import structprune as sp
from structprune.checkpoint.card import HEATMAP_FILE, kept_heads_matrix, layer_rows


def table_rows(text: str) -> list[list[str]]:
    section = text.split("## Kept per layer", 1)[1].split("## How to load", 1)[0]
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in section.splitlines()
        if re.match(r"^\| \d", line)
    ]


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_card_metadata_table_and_heatmap_come_from_the_model(family, tmp_path):
    model = pruned(family)
    info = sp.CardInfo(
        base_model="org/teacher",
        method="taylor scores, global allocation",
        budget="50% encoder FLOPs",
        datasets=["nyu-mll/glue"],
        task="text-classification",
        eval_dataset="nyu-mll/glue",
        metrics_before={"accuracy": 0.9},
        metrics_after={"accuracy": 0.85},
        license="apache-2.0",
    )
    folder = sp.save_pretrained(model, tmp_path / "ckpt", tokenizer=None, card=info)
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "org/teacher"
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-classification"
    assert {"structprune", "pruned", family} <= set(data["tags"])
    assert data["datasets"] == ["nyu-mll/glue"] and data["metrics"] == ["accuracy"]
    assert data["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.85

    s = sp.arch.view(model).structure
    rows = table_rows(card.text)
    assert [int(r[0]) for r in rows] == list(range(s.num_layers))
    kept = dict(zip(s.layers, zip(s.heads, s.ffn, strict=True), strict=True))
    for r in rows:
        heads, ffn = kept.get(int(r[0]), ([], []))
        assert r[1] == f"{len(heads)}/{s.num_heads}"
        assert r[2] == (", ".join(map(str, heads)) if heads else "dropped")
        assert r[3] == f"{len(ffn)}/{s.intermediate_size}"
    assert "| accuracy | 0.9 | 0.85 |" in card.text
    assert "50% encoder FLOPs" in card.text and "taylor scores" in card.text
    dense, now = sp.dense_cost(model), sp.cost(model)
    assert f"{now.encoder_flops / dense.encoder_flops:.1%}" in card.text
    assert "trust_remote_code=True" in card.text  # non-uniform: how to load without structprune

    assert f"]({HEATMAP_FILE})" in card.text
    image = imread(folder / HEATMAP_FILE)  # a real PNG
    assert image.shape[0] > 100 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # not blank
    grid = kept_heads_matrix(layer_rows(model))
    assert torch.equal(grid, sp.Mask.full(model).head)  # the heatmap's cells are the kept heads


def test_stock_card_says_it_loads_with_plain_transformers(tmp_path):
    folder = sp.save_pretrained(pruned("bert", stock=True), tmp_path / "c", tokenizer=None)
    text = (folder / "README.md").read_text()
    assert "stock transformers checkpoint" in text and "trust_remote_code" not in text
    assert "| 1 | 0/4 | dropped |" in text


def test_card_without_info_still_renders(tmp_path):
    model = tiny.model("distilbert")
    sp.checkpoint.write_model_card(model, tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert "not recorded" in card.text and "100.0%" in card.text
    assert (tmp_path / HEATMAP_FILE).stat().st_size > 1000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seq_len": 0},
        {"datasets": "glue"},
        {"metrics_after": {"accuracy": "high"}},
        {"tags": [1]},
    ],
)
def test_card_info_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        sp.CardInfo(**kwargs)


def test_saving_does_not_need_matplotlib(tmp_path, monkeypatch):
    # matplotlib (the `card` extra) missing: every import of it fails, even of submodules loaded before
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError):
        import matplotlib.figure  # noqa: F401
    model = pruned("bert")
    folder = sp.save_pretrained(model, tmp_path / "ckpt", tokenizer=None, card=sp.CardInfo(budget="50%"))
    assert not (folder / HEATMAP_FILE).exists()
    text = ModelCard.load(folder / "README.md").text
    assert f"]({HEATMAP_FILE})" not in text  # no broken picture link
    assert "structprune[card]" in text and "matplotlib" in text  # says how to get the picture
    assert "| layer | heads kept |" in text  # the rest of the card is all there
    assert sp.from_pretrained(folder).config.structprune == model.config.structprune
