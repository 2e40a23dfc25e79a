"""One switch for every progress bar: ``STRUCTPRUNE_PROGRESS=0`` or ``structprune.set_progress(False)``."""

from __future__ import annotations

import pytest
import tiny

import structprune as sp
from structprune.progress import ENV, bar, progress_enabled


@pytest.fixture(autouse=True)
def _reset():
    yield
    sp.set_progress(None)


def test_switch_and_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert progress_enabled()
    for off in ("0", "false", "OFF", "no"):
        monkeypatch.setenv(ENV, off)
        assert not progress_enabled()
    monkeypatch.setenv(ENV, "1")
    assert progress_enabled()
    sp.set_progress(False)
    assert not progress_enabled() and bar(range(3)).disable
    sp.set_progress(True)
    monkeypatch.setenv(ENV, "0")
    assert progress_enabled()  # set_progress wins over the environment
    assert bar(range(3), enabled=False).disable  # a function's own progress=False still hides its bar
    sp.set_progress(None)
    assert not progress_enabled()
    with pytest.raises(TypeError):
        sp.set_progress("no")


def test_switch_silences_scoring_and_evaluation_bars(capsys, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    from structprune.data import TaskInfo

    model, batches = tiny.model("bert"), tiny.batches(3)
    task = TaskInfo.custom("tiny", text_keys="text", num_labels=3)
    sp.score(model, batches, method="taylor")  # progress=True by default
    sp.evaluate(model, batches, task)
    err = capsys.readouterr().err
    assert "scoring" in err and "eval tiny" in err
    sp.set_progress(False)
    sp.score(model, batches, method="taylor")
    sp.evaluate(model, batches, task)
    assert capsys.readouterr().err == ""


def test_the_command_line_switch_covers_the_bars_of_transformers_too(tmp_path, monkeypatch, capsys):
    import huggingface_hub.utils
    import transformers.utils.logging as tlog

    from structprune import cli

    folder = sp.save_pretrained(tiny.model("bert"), tmp_path / "m", tokenizer=None, card=False)
    monkeypatch.setenv(ENV, "0")
    capsys.readouterr()
    try:
        assert cli.main(["info", str(folder)]) == 0
        assert not tlog.is_progress_bar_enabled() and huggingface_hub.utils.are_progress_bars_disabled()
        assert capsys.readouterr().err == ""  # no "Loading weights" bar
    finally:
        tlog.enable_progress_bar()
        huggingface_hub.utils.enable_progress_bars()


def test_saving_and_loading_follow_the_switch(tmp_path, capsys):
    import transformers.utils.logging as tlog

    sp.set_progress(False)
    folder = sp.save_pretrained(tiny.model("bert"), tmp_path / "m", tokenizer=None, card=False)
    sp.from_pretrained(folder)
    assert capsys.readouterr().err == ""  # neither "Writing model shards" nor "Loading weights"
    assert tlog.is_progress_bar_enabled()  # transformers' own switch is left as it was
