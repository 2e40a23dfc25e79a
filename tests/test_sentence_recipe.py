"""The sentence-transformers recipe pipeline (``pipeline: sentence-transformers``; ``structprune run all-minilm-l6-v2``).

A tiny SentenceTransformer (``test_sentence.tiny_st``) is saved to ``tmp_path`` and a tiny STS-B folder is
written beside it; the bundled recipe runs on them through the CLI, end to end, and again to resume.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml

from structprune import cli
from structprune.recovery.distill import DistillConfig
from structprune.run.compress import CompressConfig
from structprune.run.recipe import SentenceRecipe, bundled_recipes, load_recipe
from structprune.sentence.data import unlabelled_sentences

pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer  # noqa: E402
from test_sentence import sentences, tiny_st  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Only .* calibration examples", "ignore:Reconstruction:")

SENTENCE_RECIPES = {n: p for n, p in bundled_recipes().items() if p.parent.name == "sentence-transformers"}


def test_there_are_sentence_recipes_and_they_load_as_written():
    assert {"all-minilm-l6-v2", "all-mpnet-base-v2"} <= set(SENTENCE_RECIPES)
    for path in SENTENCE_RECIPES.values():
        recipe = load_recipe(path)
        assert isinstance(recipe, SentenceRecipe) and recipe.pipeline == "sentence-transformers"
        assert isinstance(recipe.prune, CompressConfig) and isinstance(recipe.distill, DistillConfig)
        assert recipe.distill.task_weight == 0 and recipe.distill.output_dir.endswith("distill")
        raw = yaml.safe_load(path.read_text())
        for section, values in raw.items():
            if isinstance(values, dict):
                for key, value in values.items():
                    if not isinstance(value, dict):
                        assert getattr(getattr(recipe, section), key) == value, (section, key)


def test_sentence_recipe_errors_name_what_is_valid(tmp_path):
    with pytest.raises(ValueError, match="valid keys of data are: sentences"):
        load_recipe("all-minilm-l6-v2", ["data.task=stsb"])  # a GLUE recipe's key, not this pipeline's
    with pytest.raises(ValueError, match="pipeline must be one of glue, sentence-transformers"):
        load_recipe("all-minilm-l6-v2", ["pipeline=sentences"])
    with pytest.raises(ValueError, match="skip: unknown stage"):
        load_recipe("all-minilm-l6-v2", ["skip=[teacher]"])  # the model is the teacher: no teacher stage
    with pytest.raises(ValueError, match="calibration_sentences must be positive"):
        load_recipe("all-minilm-l6-v2", ["data.calibration_sentences=0"])
    with pytest.raises(ValueError, match="prune.hidden would change the sentence embeddings"):
        load_recipe("all-minilm-l6-v2", ["prune.hidden=256"])
    with pytest.raises(ValueError, match="sentences carry no labels"):
        load_recipe("all-minilm-l6-v2", ["prune.label_free=false"])
    with pytest.raises(ValueError, match="does not export ONNX"):
        load_recipe("all-minilm-l6-v2", ["output.onnx=true"])
    # the fields a file leaves out keep sentence-transformers' distillation recipe, not the GLUE defaults
    path = tmp_path / "mine.yaml"
    path.write_text("pipeline: sentence-transformers\ndistill:\n  num_epochs: 2\n")
    recipe = load_recipe(path)
    assert (
        recipe.distill.num_epochs == 2
        and recipe.distill.task_weight == 0
        and recipe.distill.learning_rate == 1e-4
    )


def test_a_key_given_twice_in_a_recipe_is_an_error(tmp_path):
    """PyYAML keeps the last of two equal keys without a word; a recipe is data we validate: refused."""
    path = tmp_path / "twice.yaml"
    path.write_text("prune:\n  flops: 0.5\n  flops: 0.3\n")
    with pytest.raises(ValueError, match="'flops' is given twice"):
        load_recipe(path)
    for recipe in bundled_recipes().values():  # and no bundled recipe has one
        load_recipe(recipe)


def _glue(tmp_path):
    """A tiny STS-B folder: train (the unlabelled sentences) and validation (scored pairs)."""
    folder = tmp_path / "glue" / "STS-B"
    folder.mkdir(parents=True)
    rng = random.Random(3)
    for split, n, seed in (("train", 60, 10), ("validation", 24, 500)):
        rows = []
        for i in range(n):
            a = sentences(1, seed=seed + i)[0]
            b = a if i % 2 else sentences(1, seed=seed + 1000 + i)[0]
            rows.append({"sentence1": a, "sentence2": b, "label": 5.0 if i % 2 else rng.uniform(0, 2)})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "glue"


def test_unlabelled_sentences_pool_glue_text_and_files(tmp_path):
    glue = _glue(tmp_path)
    mine = tmp_path / "mine.txt"
    mine.write_text("my first sentence\n\nmy second sentence\nmy first sentence\n", encoding="utf-8")
    pool = unlabelled_sentences(["stsb", mine], glue, seed=1)
    assert len(pool) == len(set(pool)) and {"my first sentence", "my second sentence"} <= set(pool)
    assert (
        pool
        == unlabelled_sentences(["stsb", mine], glue, seed=1)
        != unlabelled_sentences(["stsb", mine], glue)
    )
    assert len(unlabelled_sentences([mine], limit=1)) == 1
    with pytest.raises(ValueError, match="neither a GLUE task"):
        unlabelled_sentences(["wikipedia"], glue)
    with pytest.raises(FileNotFoundError, match="No file of sentences"):
        unlabelled_sentences([tmp_path / "missing.txt"])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        unlabelled_sentences([tmp_path / "latin1.txt"])
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="No sentences"):
        unlabelled_sentences([tmp_path / "blank.txt"])


def _args(model, glue, out, *extra):
    return [
        "run", "all-minilm-l6-v2", f"model={model}", "data.sentences=[stsb]", f"data.data_dir={glue}",
        "data.calibration_sentences=24", "data.distill_sentences=48", "data.batch_size=8", "prune.flops=0.5",
        "prune.progress=false", "distill.max_steps=4", "distill.save_every=2", "distill.progress=false",
        "distill.report_to=none", "output.latency_repeats=1", "output.latency_batch_size=2",
        "output.latency_seq_len=16", "evaluate.throughput_batch_size=8", *extra, "--out", str(out),
    ]  # fmt: skip


def test_run_end_to_end_resumes_and_refuses_another_run(tmp_path, capsys, monkeypatch):
    from structprune.sentence import pipeline

    model = tmp_path / "dense"
    tiny_st(tmp_path / "base", init=0.2).save(str(model))
    glue, out = _glue(tmp_path), tmp_path / "run"

    # interrupted after distillation: the rerun resumes at evaluation (no pruning or training again)
    def interrupted(self, models):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.SentencePipeline, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.main(_args(model, glue, out))
    record = json.loads((out / "run.json").read_text())
    assert set(record["done"]) == {"prune", "distill"}
    assert (out / "distill" / "checkpoints").is_dir()  # save_every=2: the distillation resumes too
    monkeypatch.undo()

    def never(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr("structprune.sentence.compress", never)
    monkeypatch.setattr("structprune.sentence.distill", never)
    assert cli.main(_args(model, glue, out)) == 0
    text = capsys.readouterr().out
    assert "spearman (stsb validation)" in text and "sentences/s (st.encode)" in text
    summary = json.loads((out / "summary.json").read_text())
    teacher, student = summary["models"]["teacher"], summary["models"]["student"]
    assert student["encoder_gflops"] <= 0.5 * teacher["encoder_gflops"] * 1.001
    assert student["params"] < teacher["params"] and student["sentences_per_s"] > 0
    assert -1 <= student["metrics"]["stsb validation"]["spearman"] <= 1

    # the student folder is a SentenceTransformer that gives the distilled model's embeddings, with its card
    saved = SentenceTransformer(str(out / "student"), device="cpu")
    distilled = SentenceTransformer(str(out / "distilled"), device="cpu")
    texts = sentences(5, seed=9)
    torch.testing.assert_close(
        saved.encode(texts, convert_to_tensor=True), distilled.encode(texts, convert_to_tensor=True)
    )
    card = (out / "student" / "README.md").read_text()
    assert (
        "sentence-similarity" in card
        and "embedding distillation (mse of the sentence embeddings + hidden states)" in card
        and "library_name: sentence-transformers" in card
    )

    # another recipe in the same folder is refused, and nothing there changes
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(SystemExit) as exit_:
        cli.main(_args(model, glue, out, "prune.flops=0.4"))
    assert exit_.value.code == 2 and "holds a different run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_run_checks_its_inputs_before_writing_anything(tmp_path, capsys):
    glue, out = _glue(tmp_path), tmp_path / "run"
    assert "is not a SentenceTransformer folder" in _refused(_args(tmp_path / "no-model", glue, out), capsys)
    model = tmp_path / "dense"
    tiny_st(tmp_path / "base").save(str(model))
    err = _refused(_args(model, glue, out, "data.calibration_sentences=500"), capsys)
    assert "none is left for distillation" in err
    err = _refused(_args(model, glue, out, f"data.sentences=[{tmp_path / 'missing.txt'}]"), capsys)
    assert "No file of sentences" in err
    assert not out.exists()
    assert "no teacher stage" in _refused(["teacher", "all-minilm-l6-v2"], capsys)
