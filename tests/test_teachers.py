"""Task teachers: the content-keyed cache, `structprune teacher`, and the recorded validation curve."""

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from structprune import cli
from structprune.cache import CACHE_ENV, cache_root
from structprune.run.teachers import content_fingerprint, read_teacher_record, teacher_cache

MRPC = Path(__file__).resolve().parents[1] / "recipes" / "glue" / "mrpc.yaml"


def test_cache_root_follows_the_documented_settings(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "sp"))
    assert cache_root() == tmp_path / "sp"
    assert teacher_cache() == tmp_path / "sp" / "teachers"
    assert teacher_cache(tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "structprune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "structprune"


def test_the_teacher_key_is_the_content_not_the_path(tiny_teacher, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_teacher, copy)
    assert content_fingerprint(copy) == content_fingerprint(tiny_teacher)
    weights = load_file(copy / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    assert content_fingerprint(copy) != content_fingerprint(tiny_teacher)
    assert content_fingerprint("org/some-hub-model") == "org/some-hub-model"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json or weight files"):
        content_fingerprint(tmp_path / "empty")


def test_a_damaged_teacher_record_is_named(tmp_path):
    assert read_teacher_record(tmp_path) is None
    (tmp_path / "teacher.json").write_text("{not json")
    with pytest.raises(ValueError, match="teacher.json is not valid JSON"):
        read_teacher_record(tmp_path)
    (tmp_path / "teacher.json").write_text('{"curve": 3}')
    with pytest.raises(ValueError, match="not a teacher record"):
        read_teacher_record(tmp_path)


@pytest.mark.slow
def test_teacher_command_trains_once_records_its_curve_and_finds_it_again(
    tiny_teacher, glue_dir, tmp_path, capsys
):
    cache = tmp_path / "teachers"
    overrides = [
        f"teacher.model={tiny_teacher}",
        f"teacher.cache_dir={cache}",
        "teacher.train.num_epochs=2",
        f"data.data_dir={glue_dir}",
        "data.max_length=32",
        "data.train_examples=64",
        "data.eval_examples=32",
        f"output.dir={tmp_path / 'never-written'}",
    ]
    assert cli.main(["teacher", str(MRPC), *overrides]) == 0
    printed = capsys.readouterr().out
    assert "mrpc teacher, validation curve" in printed and "| f1" in printed
    (entry,) = [p for p in cache.iterdir() if not p.name.endswith(".run")]
    record = json.loads((entry / "teacher.json").read_text())
    assert [c["epoch"] for c in record["curve"]] == [1.0, 2.0]
    assert record["best"]["eval_f1"] == max(c["eval_f1"] for c in record["curve"])
    assert record["train"]["learning_rate"] == 1e-4 and record["task"] == "mrpc"
    assert not (entry.with_name(entry.name + ".run") / "checkpoints").exists()  # ours, removed after the save
    assert not (tmp_path / "never-written").exists()  # the teacher stage writes only to the cache

    # again, and from a copy of the base model at another path: the same entry, nothing retrained
    mtime = (entry / "model.safetensors").stat().st_mtime_ns
    copy = tmp_path / "copy-of-base"
    shutil.copytree(tiny_teacher, copy)
    assert cli.main(["teacher", str(MRPC), *overrides, f"teacher.model={copy}"]) == 0
    assert f"teacher: {entry}" in capsys.readouterr().out
    assert (entry / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_the_recipes_minilm_teacher_resolves(minilm_path, glue_dir):
    from structprune.run.pipeline import Pipeline, resolve_model
    from structprune.run.recipe import load_recipe

    assert resolve_model("minilm") == str(minilm_path)
    recipe = load_recipe(MRPC, [f"data.data_dir={glue_dir}"])
    Pipeline(recipe, teacher_only=True)  # inputs checked (teacher folder, data splits) without a crash
