"""Saves never lose what structprune did not write, never replace the model being read, and recover
from a save that was killed part-way."""

import os
import subprocess
import sys

import pytest
import tiny
import torch

import structprune as sp
from structprune.checkpoint import files


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _marker(folder, pid):
    (folder / files._MARKER).write_text(f"{pid}@{os.uname().nodename}")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_resaving_keeps_unrelated_files(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    out = tmp_path / "model"
    sp.save_pretrained(tiny.model("bert"), out, tokenizer=None, card=False)
    (out / "notes.txt").write_text("my eval notes")
    (out / "runs").mkdir()
    (out / "runs" / "log.txt").write_text("log")
    model = tiny.model("bert", seed=1)
    sp.save_pretrained(model, out, tokenizer=None, card=False)
    assert (out / "notes.txt").read_text() == "my eval notes" and (
        out / "runs" / "log.txt"
    ).read_text() == "log"
    loaded = sp.from_pretrained(out)
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)  # the model files were replaced
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary left behind


def test_saving_over_the_model_being_read_is_refused(tmp_path):
    src = tmp_path / "teacher"
    sp.save_pretrained(tiny.model("bert"), src, tokenizer=None, card=False)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    model = sp.from_pretrained(src)
    sp.prune_(model, sp.allocate(sp.score(model, method="magnitude"), model, flops=0.5))
    with pytest.raises(ValueError, match="the folder the model was loaded from"):
        sp.save_pretrained(model, src, tokenizer=None, card=False)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    sp.save_pretrained(model, tmp_path / "pruned", tokenizer=None, card=False)  # elsewhere is fine


def test_a_save_killed_between_its_renames_is_undone_on_the_next_load(tmp_path):
    out = tmp_path / "model"
    model = tiny.model("bert")
    sp.save_pretrained(model, out, tokenizer=None, card=False)
    old = tmp_path / ".model.dead0001.old"
    os.replace(out, old)  # what a kill after the first rename leaves
    _marker(old, _dead_pid())
    loaded = sp.from_pretrained(out)
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)
    assert not old.exists() and not (out / files._MARKER).exists()


def test_stale_temporaries_of_ours_are_removed_and_nothing_else(tmp_path):
    out = tmp_path / "model"
    sp.save_pretrained(tiny.model("bert"), out, tokenizer=None, card=False)
    stale, live, foreign = (tmp_path / f".model.{t}.tmp" for t in ("aaaa0001", "bbbb0002", "cccc0003"))
    for folder in (stale, live, foreign):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 10)
    _marker(stale, _dead_pid())
    _marker(live, os.getpid())  # a save still running in this process
    sp.save_pretrained(tiny.model("bert"), out, tokenizer=None, card=False)
    assert not stale.exists() and live.exists() and foreign.exists()


def test_a_folder_with_foreign_files_and_no_model_is_still_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no model"):
        sp.save_pretrained(tiny.model("bert"), tmp_path, tokenizer=None, card=False)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


RECIPES = os.path.join(os.path.dirname(__file__), "..", "recipes", "glue")


def test_a_run_never_deletes_a_folder_of_the_users_files(tmp_path, capsys):
    from structprune import cli

    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    for extra in ([], ["output.overwrite=true"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["run", os.path.join(RECIPES, "sst2-demo.yaml"), f"output.dir={out}",
                      "teacher.model=/nonexistent", *extra])  # fmt: skip
        assert exit_.value.code == 2
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert "did not write (thesis.tex)" in capsys.readouterr().err
    # a bad input is found before the output folder is touched at all
    fresh = tmp_path / "fresh"
    with pytest.raises(SystemExit):
        cli.main(
            [
                "run",
                os.path.join(RECIPES, "sst2-demo.yaml"),
                f"output.dir={fresh}",
                "teacher.model=/nonexistent",
            ]
        )
    assert not fresh.exists()


def test_overwrite_replaces_only_what_a_run_wrote(tmp_path):
    import json

    from structprune.run.pipeline import RunRecord
    from structprune.run.recipe import load_recipe

    out = tmp_path / "run"
    (out / "student").mkdir(parents=True)
    (out / "student" / "config.json").write_text("{}")
    (out / "run.json").write_text(json.dumps({"fingerprint": "another", "done": {"save": "x"}}))
    recipe = load_recipe(os.path.join(RECIPES, "mrpc.yaml"), [f"output.dir={out}"])
    with pytest.raises(ValueError, match="holds a different run"):
        RunRecord(recipe)
    record = RunRecord(
        load_recipe(os.path.join(RECIPES, "mrpc.yaml"), [f"output.dir={out}", "output.overwrite=true"])
    )
    assert (out / "student").exists()  # nothing happens before open()
    record.open()
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]
    assert json.loads((out / "run.json").read_text())["done"] == {}
    (out / "run.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        RunRecord(recipe)


def test_cards_and_saved_files_name_no_local_path(tmp_path):
    teacher_dir = tmp_path / "secret-home" / "teacher"
    sp.save_pretrained(tiny.model("bert"), teacher_dir, tokenizer=None, card=False)
    model = sp.from_pretrained(teacher_dir)  # _name_or_path is now an absolute local path
    sp.prune_(model, sp.allocate(sp.score(model, method="magnitude"), model, flops=0.5))
    out = tmp_path / "out"
    sp.save_pretrained(
        model, out, tokenizer=None, card=sp.CardInfo(teacher=str(teacher_dir), base_model=str(teacher_dir))
    )
    for f in out.iterdir():
        if f.suffix in (".md", ".json", ".py"):
            assert str(tmp_path) not in f.read_text(), f.name
    assert "a local model (teacher)" in (out / "README.md").read_text()
    # reloaded and saved again, the card still names it once, the same way
    again = sp.save_pretrained(sp.from_pretrained(out), tmp_path / "again", tokenizer=None)
    card = (again / "README.md").read_text()
    assert "a local model (teacher)" in card and "a local model (a local" not in card


def test_the_cli_refuses_to_write_over_its_input_before_any_work(tmp_path, capsys):
    from structprune import cli

    src = tmp_path / "teacher"
    sp.save_pretrained(tiny.model("bert"), src, tokenizer=None, card=False)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    for argv in (["prune", str(src), "--task", "sst2", "--out", str(src)],
                 ["distill", str(src), "--teacher", str(src), "--task", "sst2", "--out", str(src)]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
        assert "is the model being read" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
