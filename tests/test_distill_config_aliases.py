"""DistillConfig takes the names of transformers.TrainingArguments (as aliases of its own), and report_to
names any tracker Accelerate supports (validated at config time, checked for installation before a run)."""

import copy
import dataclasses
import pickle
from pathlib import Path

import pytest
import tiny
import torch
from accelerate.utils import LoggerType, is_tensorboard_available, is_wandb_available
from torch.utils.data import DataLoader

from structprune import cli
from structprune.errors import MissingDependency
from structprune.recovery.distill import DistillConfig, finetune, runstate
from structprune.recovery.distill.config import TRACKERS

ALIASES = [
    ("num_train_epochs", 2, "num_epochs", 2),
    ("save_steps", 7, "save_every", 7),
    ("eval_steps", 5, "eval_every", 5),
    ("logging_steps", 3, "log_every", 3),
    ("resume_from_checkpoint", "runs/x/checkpoints/step-4", "resume_from", "runs/x/checkpoints/step-4"),
    ("resume_from_checkpoint", True, "resume_from", "latest"),
    ("resume_from_checkpoint", Path("runs/x/step-4"), "resume_from", str(Path("runs/x/step-4"))),
    ("load_best_model_at_end", False, "load_best_at_end", False),
    ("bf16", True, "mixed_precision", "bf16"),
    ("fp16", True, "mixed_precision", "fp16"),
]


@pytest.mark.parametrize(("alias", "value", "name", "expected"), ALIASES)
def test_an_alias_sets_its_field_and_only_the_field_is_recorded(alias, value, name, expected):
    from_kwargs = DistillConfig(output_dir="runs/x", **{alias: value})
    from_dict = DistillConfig.from_dict({"output_dir": "runs/x", alias: value})
    for cfg in (from_kwargs, from_dict):
        assert getattr(cfg, name) == expected
        assert alias not in cfg.to_dict() and cfg.to_dict()[name] == expected
    assert from_kwargs == from_dict == DistillConfig(output_dir="runs/x", **{name: expected})
    # the same alias and its field, agreeing, is fine
    assert DistillConfig(output_dir="runs/x", **{alias: value, name: expected}) == from_kwargs


def test_aliases_are_initvars_and_nothing_else():
    initvars = {
        f.name
        for f in DistillConfig.__dataclass_fields__.values()
        if f._field_type is dataclasses._FIELD_INITVAR  # type: ignore[attr-defined]
    }
    assert initvars == set(DistillConfig.aliases)
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    assert set(DistillConfig.aliases.values()) <= fields and not initvars & fields
    assert not set(DistillConfig.not_taken) & (fields | initvars)


def test_false_half_precision_flags_are_no_ops_and_both_true_is_an_error():
    assert DistillConfig(bf16=False, fp16=False).mixed_precision == "no"
    assert DistillConfig(bf16=False, mixed_precision="fp16").mixed_precision == "fp16"
    assert DistillConfig(resume_from_checkpoint=False).resume_from is None
    with pytest.raises(ValueError, match=r"bf16=True and fp16=True"):
        DistillConfig(bf16=True, fp16=True)
    with pytest.raises(ValueError, match=r"bf16=True and fp16=True"):
        DistillConfig.from_dict({"bf16": True, "fp16": True})
    with pytest.raises(ValueError, match="bf16 must be True or False"):
        DistillConfig(bf16="yes")
    with pytest.raises(ValueError, match="resume_from_checkpoint must be a path or True"):
        DistillConfig(output_dir="x", resume_from_checkpoint=3)


@pytest.mark.parametrize(
    ("given", "names"),
    [
        ({"num_train_epochs": 2, "num_epochs": 5}, ("num_epochs=5", "num_train_epochs=2")),
        # an explicit value equal to the field's default still counts as given
        ({"num_train_epochs": 2, "num_epochs": 3.0}, ("num_epochs=3.0", "num_train_epochs=2")),
        ({"save_steps": 4, "save_every": 8}, ("save_every=8", "save_steps=4")),
        ({"bf16": True, "mixed_precision": "fp16"}, ("mixed_precision='fp16'", "bf16=True")),
        ({"output_dir": "x", "resume_from_checkpoint": True, "resume_from": "x/step-2"}, ("resume_from=",)),
    ],
)
def test_an_alias_and_its_field_that_disagree_is_an_error_naming_both(given, names):
    for build in (lambda d: DistillConfig(**d), DistillConfig.from_dict):
        with pytest.raises(ValueError, match="disagree") as err:
            build(given)
        for name in names:
            assert name in str(err.value)


def test_replace_copy_and_pickle_still_work():
    cfg = DistillConfig(output_dir="runs/x", num_train_epochs=2, bf16=True, save_steps=5)
    assert dataclasses.replace(cfg) == cfg
    changed = dataclasses.replace(cfg, num_epochs=4, mixed_precision="no", report_to="none")
    assert (changed.num_epochs, changed.mixed_precision, changed.save_every) == (4, "no", 5)
    assert copy.deepcopy(cfg) == cfg and pickle.loads(pickle.dumps(cfg)) == cfg
    assert "num_train_epochs" not in repr(cfg)


def test_trainingarguments_names_we_do_not_take_say_why():
    with pytest.raises(ValueError, match=r"per_device_train_batch_size.*DataLoader") as err:
        DistillConfig.from_dict({"per_device_train_batch_size": 16, "lerning_rate": 1e-4})
    assert "lerning_rate" in str(err.value) and "valid options" in str(err.value)
    with pytest.raises(TypeError, match=r"takes no 'per_device_train_batch_size'.*DataLoader"):
        DistillConfig(per_device_train_batch_size=16)
    with pytest.raises(TypeError, match="eval_every"):
        DistillConfig(eval_strategy="steps")
    with pytest.raises(TypeError, match="lerning_rate"):  # any other unknown keyword: Python's own error
        DistillConfig(lerning_rate=1e-4)


def test_the_command_line_has_no_flag_for_an_alias(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["distill", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--num-epochs" in out and "--report-to" in out
    for alias in DistillConfig.aliases:
        assert "--" + alias.replace("_", "-") not in out


# --- report_to --------------------------------------------------------------------------------------------
def test_trackers_are_accelerates():
    assert set(TRACKERS) == {t.value for t in LoggerType} - {"all"}


@pytest.mark.parametrize(
    "value",
    ["auto", "all", "none", "tensorboard", "wandb", "comet_ml", ["tensorboard", "wandb"], "mlflow,wandb", []],
)
def test_report_to_takes_what_trainingarguments_takes(value):
    assert DistillConfig(report_to=value).report_to == value
    assert DistillConfig.from_dict({"report_to": value}).report_to == value


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("wandbb", r"unknown tracker\(s\) \['wandbb'\].*tensorboard, wandb"),
        (["tensorboard", "nope"], r"unknown tracker\(s\) \['nope'\]"),
        (["none", "wandb"], "'none' stands alone"),
        ("all,tensorboard", "'all' stands alone"),
        (3, "must be a string or a list"),
        (["wandb", 3], "must be a string or a list"),
    ],
)
def test_report_to_rejects_unknown_trackers_at_config_time(value, match):
    with pytest.raises(ValueError, match=match):
        DistillConfig(report_to=value)


def test_trackers_resolution(monkeypatch, tmp_path):
    monkeypatch.setattr(
        runstate, "get_available_trackers", lambda: [LoggerType.TENSORBOARD, LoggerType.WANDB]
    )
    run = str(tmp_path / "run")

    def resolve(**kw):
        return runstate.trackers(DistillConfig(**kw))

    assert resolve(output_dir=run) == ["tensorboard"]  # 'auto'
    assert resolve() is None  # 'auto' with no run folder: nothing, as before
    assert resolve(output_dir=run, report_to="all") == ["tensorboard", "wandb"]
    assert resolve(report_to="all") == ["wandb"]  # tensorboard writes under output_dir
    assert resolve(output_dir=run, report_to="none") is None and resolve(report_to=[]) is None
    assert resolve(report_to="wandb") == ["wandb"]  # wandb logs without a run folder
    assert resolve(output_dir=run, report_to="wandb,tensorboard") == ["wandb", "tensorboard"]
    with pytest.raises(ValueError, match="report_to='tensorboard' writes its logs under output_dir"):
        resolve(report_to=["tensorboard"])
    with pytest.raises(
        MissingDependency, match=r"comet_ml, mlflow, which are not installed: pip install comet-ml mlflow"
    ):
        resolve(output_dir=run, report_to=["wandb", "comet_ml", "mlflow"])
    monkeypatch.setattr(runstate, "get_available_trackers", lambda: [])
    assert resolve(output_dir=run) is None  # 'auto' without tensorboard: nothing
    assert resolve(output_dir=run, report_to="all") is None
    with pytest.raises(MissingDependency, match="pip install tensorboard"):
        resolve(output_dir=run, report_to="tensorboard")


# --- tiny real runs ----------------------------------------------------------------------------------------
def loader(n=16, seq_len=8):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, tiny.VOCAB, (n, seq_len), generator=g)
    rows = [{"input_ids": ids[i], "attention_mask": torch.ones(seq_len, dtype=torch.long),
             "labels": ids[i, 1] % 3} for i in range(n)]  # fmt: skip
    return DataLoader(rows, batch_size=8)


def tiny_run(**kw):
    cfg = DistillConfig(task="mnli", progress=False, num_train_epochs=1, logging_steps=1, **kw)
    return finetune(tiny.model("bert"), loader(), loader(), cfg)


@pytest.mark.skipif(
    is_wandb_available(), reason="wandb is installed here: the missing-package error cannot show"
)
def test_a_named_tracker_that_is_not_installed_stops_the_run_before_it_starts(tmp_path):
    with pytest.raises(
        MissingDependency, match=r"report_to names wandb, which is not installed: pip install wandb$"
    ):
        tiny_run(output_dir=str(tmp_path / "run"), report_to="wandb")
    assert not (tmp_path / "run").exists()  # nothing written: the run never started


@pytest.mark.skipif(not is_tensorboard_available(), reason="tensorboard is not installed")
def test_tensorboard_writes_event_files_in_the_run_folder(tmp_path):
    _, history = tiny_run(output_dir=str(tmp_path / "run"), report_to="tensorboard")
    events = list((tmp_path / "run" / "structprune").rglob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 0
    assert any("loss" in r for r in history)
    # 'auto' without a run folder reports nowhere and still trains
    _, history = tiny_run()
    assert any("eval_accuracy" in r for r in history)


def test_recipes_take_the_trainingarguments_names_and_record_ours():
    from structprune.run.recipe import load_recipe

    recipe = load_recipe("sst2", ["distill.eval_steps=100", "distill.logging_steps=5"])
    assert recipe.distill.eval_every == 100 and recipe.distill.log_every == 5
    with pytest.raises(ValueError, match="num_epochs=1.0 and num_train_epochs=2 disagree"):
        load_recipe("sst2", ["distill.num_train_epochs=2"])  # the recipe says num_epochs: 1
    with pytest.raises(ValueError, match="per_device_train_batch_size: the batch size is the DataLoader's"):
        load_recipe("sst2", ["distill.per_device_train_batch_size=8"])
