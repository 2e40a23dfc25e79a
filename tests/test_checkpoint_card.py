"""The model card: Hub metadata, per-layer table and heatmap, all computed from the model."""

from __future__ import annotations

import json
import re
import sys

import pytest
import tiny
import torch
from helpers import pruned
from huggingface_hub import ModelCard
from matplotlib.image import imread

import structprune as sp
from structprune.checkpoint.card import CARD_FILE, HEATMAP_FILE, kept_heads_matrix, layer_rows, recorded_card


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
        {"vocabulary": 3},
        {"library_name": ""},
        {"usage": ["load it"]},
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


@pytest.mark.filterwarnings("ignore:Only .* calibration examples")
def test_default_card_says_what_compress_and_distill_did(tmp_path):
    # no CardInfo passed: the card is filled from what the steps noted on the model, never "not recorded"
    import copy

    from torch.utils.data import DataLoader

    teacher = tiny.model("bert", num_labels=2)
    teacher.config._name_or_path = "org/teacher-sst2"
    rows = tiny.batches(4, batch_size=8, seq_len=12, num_labels=2)
    student, report = sp.compress(copy.deepcopy(teacher), rows, flops=0.5, select=False, progress=False)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, tiny.VOCAB, (16, 12), generator=gen)
    data = DataLoader([{"input_ids": i, "labels": i[1] % 2} for i in ids], batch_size=8)
    cfg = sp.DistillConfig(task="sst2", num_epochs=1, progress=False)
    student, _ = sp.distill(student, teacher, data, data, cfg)
    folder = sp.save_pretrained(student, tmp_path / "ckpt", tokenizer=None)
    text = (folder / "README.md").read_text()
    head = text.split("## Size")[0]
    assert "not recorded" not in head, head
    assert "| Teacher | org/teacher-sst2 |" in head
    assert "| Budget | 50% of encoder FLOPs (seq 128) |" in head
    method = head.split("| Method | ")[1].split(" |")[0]
    assert method.startswith("fisher scores (with labels) on 32 calibration examples, search")
    assert method.endswith("then distillation (logits + task loss)")
    assert "chosen among" not in method  # select=False: nothing was weighed
    assert "## Metrics on sst2 evaluation data" in text and "| accuracy |" in text
    assert ModelCard.load(folder / "README.md").data.to_dict()["datasets"] == ["nyu-mll/glue"]

    # an explicit CardInfo adds to / overrides the notes, field by field
    folder = sp.save_pretrained(student, tmp_path / "b", tokenizer=None, card=sp.CardInfo(budget="half"))
    head = (folder / "README.md").read_text().split("## Size")[0]
    assert "| Budget | half |" in head and "| Teacher | org/teacher-sst2 |" in head
    # config.json carries none of it; the card's information is saved as data beside the card ...
    assert "card" not in (folder / "config.json").read_text().lower()
    record = json.loads((folder / CARD_FILE).read_text())
    assert record["budget"] == "half" and record["teacher"] == "org/teacher-sst2"
    # ... so a reloaded model saved (or pushed) again says the same, and later steps add to it
    again = sp.save_pretrained(sp.from_pretrained(folder), tmp_path / "c", tokenizer=None)
    assert (again / "README.md").read_text().split("## Size")[0] == head


def test_saved_card_record_is_validated_when_loaded(tmp_path, caplog):
    model = pruned("bert")
    folder = sp.save_pretrained(model, tmp_path / "ckpt", tokenizer=None, card=sp.CardInfo(teacher="org/t"))
    record = folder / CARD_FILE
    good = record.read_text()
    record.write_text("{not json")
    with pytest.raises(ValueError, match=r"structprune_card.json is not valid JSON.*delete it"):
        sp.from_pretrained(folder)
    record.write_text(json.dumps({"teacher": 3}))
    with pytest.raises(ValueError, match=r"teacher=3 is not a string"):
        sp.from_pretrained(folder)
    record.write_text(json.dumps({"metrics_after": {"accuracy": "high"}}))
    with pytest.raises(ValueError, match=r"structprune_card.json: metrics_after="):
        sp.from_pretrained(folder)
    record.write_text(json.dumps(["teacher"]))
    with pytest.raises(ValueError, match="not a mapping"):
        sp.from_pretrained(folder)
    # a field this structprune does not know (a newer one wrote it) is skipped, with a warning
    record.write_text(json.dumps({**json.loads(good), "colour": "blue"}))
    with caplog.at_level("WARNING"):
        loaded = sp.from_pretrained(folder)
    assert "colour" in caplog.text
    assert recorded_card(loaded).teacher == "org/t"
    record.unlink()  # no record (an older save): the model loads, with nothing noted
    assert recorded_card(sp.from_pretrained(folder)) == sp.CardInfo()


def test_note_card_checks_its_fields():
    from structprune.checkpoint.card import note_card, recorded_card

    model = tiny.model("bert")
    with pytest.raises(ValueError, match="Unknown CardInfo field"):
        note_card(model, teachr="x")
    with pytest.raises(ValueError, match="metrics_after"):
        note_card(model, metrics_after={"accuracy": "high"})
    assert recorded_card(model) == sp.CardInfo()  # a failed note leaves nothing behind
    note_card(model, method="a", datasets=["x"])
    note_card(model, method="b", datasets=["x", "y"], teacher=None)
    info = recorded_card(model)
    assert info.method == "a; then b" and info.datasets == ["x", "y"] and info.teacher is None


def test_card_says_what_vocabulary_pruning_kept(tmp_path):
    model, tok = pruned("bert"), tiny.tokenizer()  # 23 tokens: the special ones and tiny.WORDS
    folder = sp.save_pretrained(model, tmp_path / "before", tokenizer=tok)
    assert "Vocabulary" not in (folder / "README.md").read_text()  # not pruned: no row
    texts = ["the movie was good", "the movie", "was bad", "plot"]
    _, small = sp.prune_vocab(model, tok, texts, min_count=2, source="four test sentences")
    assert len(small) == 8  # the 5 special tokens and "the", "movie", "was" (seen twice)
    text = (sp.save_pretrained(model, tmp_path / "after", tokenizer=small) / "README.md").read_text()
    dim = model.config.hidden_size
    assert (
        f"| Vocabulary | 8 of 99 tokens kept: those occurring at least 2 times (min_count 2) in 4 texts "
        f"(four test sentences), plus the special and required ones; word embeddings {91 * dim:,} parameters "
        "smaller |"
    ) in text
    # pruned again: still counted against the original vocabulary (the model's 99 rows); min_count 1, no source
    _, smaller = sp.prune_vocab(model, small, ["the movie"])
    text = (sp.save_pretrained(model, tmp_path / "again", tokenizer=smaller) / "README.md").read_text()
    assert (
        "| Vocabulary | 7 of 99 tokens kept: those occurring at least once (min_count 1) in 1 text, plus"
        in text
    )
    assert f"word embeddings {92 * dim:,} parameters smaller |" in text
