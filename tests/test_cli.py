"""The recipes, the command line and the end-to-end pipeline on a tiny configuration with real GLUE files."""

import glob
import json
from pathlib import Path

import pytest
import yaml
from transformers import BertConfig

from structprune import cli
from structprune.recovery.distill import DistillConfig
from structprune.run.compress import CompressConfig
from structprune.run.recipe import Recipe, load_recipe

RECIPES = sorted(glob.glob(str(Path(__file__).resolve().parents[1] / "recipes" / "glue" / "*.yaml")))


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
    for cmd in ([], ["run"], ["prune"], ["distill"], ["evaluate"], ["export"], ["push"], ["info"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*cmd, "--help"])
        assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--learning-rate" in out and "--flops" in out and "key=value" in out


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
