"""Each benchmark script runs end to end on a tiny random BERT (``--smoke``) so the scripts do not rot.

The numbers mean nothing here; the tests check that every script writes its results file with the
reproducibility header and a table, and its plot where it makes one. The scripts read SST-2 where the
library does by default, ``$STRUCTPRUNE_GLUE_DIR`` (see ``conftest.py``).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow  # reads real GLUE examples (tokenized by the MiniLM tokenizer)


@pytest.fixture(autouse=True)
def _needs_sst2(sst2_glue_dir):
    """The scripts get no --data-dir here: they find SST-2 through $STRUCTPRUNE_GLUE_DIR, as users do."""


def _script(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_header(text: str, title: str) -> None:
    assert text.startswith(f"# {title}")
    for field in ("- Command:", "- Date:", "- Machine:", "- Versions:"):
        assert field in text, f"missing {field!r} in the results header"
    assert re.search(r"^\|(-+\|)+$", text, re.M), "no Markdown table"


def _smoke(name: str, tmp_path: Path, title: str, *args: str) -> str:
    """Run ``benchmarks/<name>.py --smoke`` into ``tmp_path``; the text of its (first) results file, whose
    header is checked."""
    out = _script(name).main(["--smoke", "--out", str(tmp_path), *args])
    text = (out[0] if isinstance(out, list) else out).read_text()
    _check_header(text, title)
    return text


def _table_rows(text: str) -> list[list[str]]:
    """Every Markdown table row of ``text`` as its stripped cells (the tables pad their columns)."""
    return [
        [c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")
    ]


def test_latency_smoke(tmp_path):
    text = _smoke("latency", tmp_path, "Latency")
    assert {"PyTorch", "ONNX Runtime"} <= {row[0] for row in _table_rows(text)}
    assert "multiple_of" in text
    assert (tmp_path / "latency.png").stat().st_size > 1000


def test_cost_smoke(tmp_path):
    text = _smoke("cost", tmp_path, "Cost of each stage")
    for stage in ("score: taylor", "allocate", "prune_", "Calibration-set size", "Model size"):
        assert stage in text
    real = text.split("## Model size: real models", 1)[1]  # the MiniLM / MPNet table, on the tiny model here
    for stage in ("score: fisher", "search (constrained)", "reconstruct", "compress", "distill"):
        assert stage in real
    assert "minilm: tiny random BERT" in real and "mpnet: tiny random BERT" in real
    assert (tmp_path / "cost.png").exists()


def test_peers_smoke(tmp_path):
    methods = ["structprune taylor (global)", "Torch-Pruning taylor (uniform)"]
    text = _smoke("peers", tmp_path, "Peers side by side", "--methods", *methods)
    assert "Save and reload" in text
    # the pruned model's kept FLOPs are recomputed from its shapes and match the budget
    row = next(r for r in _table_rows(text) if r[:2] == ["structprune taylor (global)", "50%"])
    assert "50.0%" in row


def test_torch_pruning_ratio_raised_to_the_budget_on_mpnet():
    """Torch-Pruning's BERT-example setup prunes no MPNet head (its graph ties the query channels to the relative
    position bias all layers share), so a 0.5 ratio keeps more than half the FLOPs; the matched variant raises
    the ratio until the budget is met, and leaves BERT's exact ratio alone."""
    pytest.importorskip("torch_pruning")
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        MPNetConfig,
        MPNetForSequenceClassification,
    )

    peers = _script("peers")
    sizes = dict(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024
    )
    calib = [{"input_ids": torch.randint(5, 100, (4, 16), generator=torch.Generator().manual_seed(0)),
              "attention_mask": torch.ones(4, 16, dtype=torch.long), "labels": torch.tensor([0, 1, 0, 1])}]  # fmt: skip
    for cls, config in (
        (MPNetForSequenceClassification, MPNetConfig),
        (BertForSequenceClassification, BertConfig),
    ):
        torch.manual_seed(0)
        dense = cls(config(**sizes)).eval()
        plain, _, plain_ratio = peers.torch_pruning_method("taylor", False)(dense, calib, 0.5)
        matched, _, ratio = peers.torch_pruning_method("taylor", False, match_flops=True)(dense, calib, 0.5)
        kept, heads, _ = peers.kept_flops(matched)
        assert plain_ratio == 0.5 and kept <= 0.505
        assert matched(**calib[0]).logits.shape == (4, 2)
        if cls is MPNetForSequenceClassification:
            assert peers.kept_flops(plain)[0] > 0.55 and heads == 8  # no head pruned
            assert 0.55 < ratio < 0.7
        else:
            assert ratio == 0.5 and heads == 4
        assert all(p.grad is None for p in dense.parameters())  # the caller's model is left as it was


def test_pareto_smoke(tmp_path):
    text = _smoke("pareto", tmp_path, "Accuracy vs encoder FLOPs kept: SST2", "--scorers", "taylor")
    assert ["taylor", "none", "50%"] in [row[:3] for row in _table_rows(text)]
    assert "dense teacher" in text
    assert (tmp_path / "pareto_sst2.png").stat().st_size > 1000


def test_quantize_smoke(tmp_path):
    text = _smoke("quantize", tmp_path, "Pruning + int8 quantization")
    formats = [row[1] for row in _table_rows(text)]
    for fmt in ("PyTorch fp32 (safetensors)", "ONNX fp32", "ONNX int8 (dynamic)"):
        assert formats.count(fmt) == 2  # the dense and the pruned model
    assert "ONNX fp32 parity with PyTorch" in text


def test_quality_smoke(tmp_path):
    text = _smoke(
        "quality", tmp_path, "Quality against converged task teachers", "--distillation", "recipe", "staged"
    )
    assert "## Summary" in text and "## SST-2" in text
    assert text.count("|-") >= 2  # the summary table and the SST-2 table (structprune.report.markdown_table)
    assert "Kwon et al. 2022" in text and "CoFi" in text and "TinyBERT-4" in text  # the published anchors
    assert "## Targets of this round" in text and "compress: drop vs teacher" in text
    for method in ("dense teacher", "retraining-free sp.compress", "Taylor + sp.allocate (global)"):
        assert f"| {method} " in text
    for method in ("recipe: logits + hidden + attention", "TinyBERT stages"):  # both distillations asked for
        assert f"| pruned + distilled ({method}) " in text
    assert "| pruned + fine-tuned, no teacher " in text
    assert "choice: " in text  # compress reports the candidate it kept
    rows = json.loads((tmp_path / "quality.json").read_text())["tasks"]["sst2"]["rows"]
    assert all("metrics" in r for r in rows if not r["method"].startswith("Torch-Pruning"))
    # a rerun re-measures the dense teacher only and keeps every row already measured
    _script("quality").main(["--smoke", "--out", str(tmp_path)])
    again = json.loads((tmp_path / "quality.json").read_text())["tasks"]["sst2"]["rows"]
    measured = {(r["method"], r["budget"]): r.get("measured") for r in again}
    assert measured[("dense teacher", None)] == "run 2"
    assert all(m == "run 1" for (method, _), m in measured.items() if method != "dense teacher" and m)
    # a run with other settings stops before measuring (the stored rows stay), unless told to --replace them
    before = (tmp_path / "quality.json").read_bytes()
    with pytest.raises(
        SystemExit, match=r"sst2: .* other settings .*\(dense teacher; retraining-free sp.compress at 50%\)"
    ):
        _script("quality").main(["--smoke", "--out", str(tmp_path), "--seed", "1", "--methods", "compress"])
    assert (tmp_path / "quality.json").read_bytes() == before
    _script("quality").main(
        ["--smoke", "--out", str(tmp_path), "--seed", "1", "--methods", "compress", "--replace"]
    )
    replaced = json.loads((tmp_path / "quality.json").read_text())
    seeds = {
        (r["method"], r["budget"]): r["settings"]["seed"]
        for r in replaced["tasks"]["sst2"]["rows"]
        if "settings" in r
    }
    assert seeds[("dense teacher", None)] == seeds[("retraining-free sp.compress", 0.5)] == 1
    assert seeds[("Taylor + sp.allocate (global)", 0.5)] == 0  # not re-measured: shown as stale
    (tmp_path / "quality.json").write_bytes(before)
    # another run's tasks (its own --out) fold in, keeping which of its runs measured each row; render only
    state = json.loads((tmp_path / "quality.json").read_text())
    other = tmp_path / "other" / "quality.json"
    other.parent.mkdir()
    # other runs of the same names
    their_runs = [{**r, "date": f"elsewhere {r['date']}"} for r in state["runs"]]
    other.write_text(json.dumps({"runs": their_runs, "tasks": {"rte": state["tasks"]["sst2"]}}))
    text = (
        _script("quality")
        .main(["--smoke", "--out", str(tmp_path), "--merge", str(other), "--render"])
        .read_text()
    )
    assert "## SST-2" in text and "## RTE" in text and "other/run 1 (" in text
    merged = json.loads((tmp_path / "quality.json").read_text())
    assert len(merged["runs"]) == 4 and merged["tasks"]["sst2"]["rows"] == again  # nothing measured
    assert {r.get("measured") for r in merged["tasks"]["rte"]["rows"]} == {"other/run 1", "other/run 2"}
    with pytest.raises(SystemExit, match="rte rows measured in both: .*retraining-free sp.compress at 50%"):
        _script("quality").main(["--smoke", "--out", str(tmp_path), "--merge", str(other), "--render"])
    # a folder that began as a copy of this state holds its runs too: those stay one run each (rows keep their
    # names), and only the copy's own new run is prefixed
    copied = tmp_path / "copy" / "quality.json"
    copied.parent.mkdir()
    new_run = {**state["runs"][0], "run": "run 3", "date": "later"}
    mrpc = {
        **state["tasks"]["sst2"],
        "rows": [{**r, "measured": "run 3"} for r in state["tasks"]["sst2"]["rows"]],
    }
    copied.write_text(json.dumps({"runs": [*state["runs"], new_run], "tasks": {"mrpc": mrpc}}))
    mine = {"runs": [{**r, "seconds": 12.0} for r in state["runs"]], "tasks": {}}  # finished since the copy
    _script("quality").merge_state(mine, copied)
    assert [r["run"] for r in mine["runs"]] == [*(r["run"] for r in state["runs"]), "copy/run 3"]
    assert {r["measured"] for r in mine["tasks"]["mrpc"]["rows"]} == {"copy/run 3"}
    # a compress row measured before compress changed what it weighs (an older COMPRESS_PROTOCOL) is shown as
    # stale and re-measured only when asked to; the other rows stay
    quality = _script("quality")
    state = json.loads((tmp_path / "quality.json").read_text())
    (row,) = [r for r in state["tasks"]["sst2"]["rows"] if r["method"] == "retraining-free sp.compress"]
    assert row["settings"].pop("compress_protocol") == quality.COMPRESS_PROTOCOL
    (tmp_path / "quality.json").write_text(json.dumps(state))
    text = quality.main(["--smoke", "--out", str(tmp_path), "--render"]).read_text()
    (line,) = [
        x
        for x in text.split("## SST-2")[1].split("\n## ")[0].splitlines()
        if x.startswith("| retraining-free sp.compress ")
    ]
    assert "STALE" in line
    with pytest.raises(SystemExit, match=r"other settings .*\(retraining-free sp.compress at 50%\)"):
        quality.main(["--smoke", "--out", str(tmp_path), "--methods", "compress"])
    quality.main(["--smoke", "--out", str(tmp_path), "--methods", "compress", "--replace"])
    rows = {
        (r["method"], r["budget"]): r
        for r in json.loads((tmp_path / "quality.json").read_text())["tasks"]["sst2"]["rows"]
    }
    assert (
        rows[("retraining-free sp.compress", 0.5)]["settings"]["compress_protocol"]
        == quality.COMPRESS_PROTOCOL
    )
    assert rows[("retraining-free sp.compress", 0.5)]["measured"] == "run 5"
    assert rows[("Taylor + sp.allocate (global)", 0.5)]["measured"] == "run 1"


def test_quality_shape_options_re_measure_the_shape_students_only(tmp_path):
    """--shape-* options shape the student at the shape budget alone: changing them marks stale and re-measures
    the 10% (shape) students, never the students at other budgets."""
    quality = _script("quality")
    quality.main(["--smoke", "--out", str(tmp_path), "--methods", "distilled", "fine-tuned", "--no-latency"])
    rerun = ["--smoke", "--out", str(tmp_path), "--methods", "distilled", "fine-tuned", "--no-latency"]
    with pytest.raises(SystemExit, match="other settings") as err:
        quality.main([*rerun, "--shape-reconstruct"])
    assert "at 10%" in str(err.value) and "at 50%" not in str(err.value)
    state = json.loads((tmp_path / "quality.json").read_text())
    entry = state["tasks"]["sst2"]
    students = [r for r in entry["rows"] if r["method"] != "dense teacher"]
    assert {r["budget"] for r in students} == {0.5, 0.1}
    quality.main([*rerun, "--shape-reconstruct", "--replace"])
    entry = json.loads((tmp_path / "quality.json").read_text())["tasks"]["sst2"]
    measured = {
        (r["method"], r["budget"]): r["measured"] for r in entry["rows"] if r["method"] != "dense teacher"
    }
    assert {b: m for (_, b), m in measured.items()} == {0.5: "run 1", 0.1: "run 2"}
    assert all(quality.is_current(entry, r) for r in entry["rows"])
    shape = entry["current"]["students"]["shape"]
    assert shape[-1] == "reconstruct" and not quality.same_settings(
        {**entry["current"]["students"], "shape": shape[:-1]}, entry["current"]["students"], shape[0]
    )


def test_quality_select_by_re_measures_what_compress_picks_only(tmp_path):
    """--select-by task_loss (not the default) changes what sp.compress keeps: the retraining-free rows are stale
    under it (and re-measured with --replace), the Taylor rows are not; the default adds nothing to the rows'
    settings. The students start from sp.compress, so their settings carry what it picks by too."""
    quality = _script("quality")
    base = ["--smoke", "--out", str(tmp_path), "--methods", "compress", "taylor", "--no-latency"]
    quality.main(base)
    state = json.loads((tmp_path / "quality.json").read_text())
    assert all("select_by" not in r["settings"] for r in state["tasks"]["sst2"]["rows"] if "settings" in r)
    current = state["tasks"]["sst2"]["current"]
    assert current["students"]["compress_protocol"] == current["distilled"]["compress_protocol"] == 4
    with pytest.raises(SystemExit, match="other settings") as err:
        quality.main([*base, "--select-by", "task_loss"])
    assert "sp.compress" in str(err.value) and "Taylor" not in str(err.value)
    quality.main([*base, "--select-by", "task_loss", "--replace"])
    state = json.loads((tmp_path / "quality.json").read_text())
    by_method = {}
    for r in state["tasks"]["sst2"]["rows"]:
        by_method.setdefault(r["method"], []).append(r.get("settings", {}).get("select_by"))
    assert set(by_method[quality.RETRAINING_FREE]) == {"task_loss"}
    assert set(by_method[quality.TAYLOR]) == {None}
    assert state["tasks"]["sst2"]["current"]["students"]["select_by"] == "task_loss"
    # the held-back losses listed under a task's table say what weighed them: the default of the row's protocol
    # (the task loss up to 3, the KL since 4) unless its settings name another
    rows = [{"settings": {"compress_protocol": p, **extra}} for p, extra in
            [(3, {}), (4, {}), (4, {"select_by": "task_loss"}), (3, {"select_by": "divergence"})]]  # fmt: skip
    assert [quality._weighed_by(r) for r in rows] == ["task loss", "KL from the teacher"] * 2


def test_quality_merge_folds_one_task_measured_by_two_runs(tmp_path):
    """One task's rows measured by two processes (e.g. retraining-free rows and students at once) fold into
    one table; a clash of rows, settings or teachers is an error that leaves the state as it was."""
    import copy

    q = _script("quality")

    def row(method, budget, f1, run, seed=0):
        return {
            "method": method,
            "budget": budget,
            "metrics": {"f1": f1},
            "measured": run,
            "settings": {"seed": seed},
        }

    current = {"rows": {"seed": 0}, "students": {"seed": 0}, "distilled": {"seed": 0}}
    mine = {"runs": [{"run": "run 1", "command": "mine"}], "tasks": {"mrpc": {"current": current, "rows": [
        row(q.DENSE, None, 86.9, "run 1"), row(q.RETRAINING_FREE, 0.5, 86.0, "run 1")]}}}  # fmt: skip
    theirs = {"runs": [{"run": "run 1", "command": "theirs"}], "tasks": {"mrpc": {"current": current, "rows": [
        row(q.DENSE, None, 86.9, "run 1"), row(q.DISTILLED, 0.25, 85.6, "run 1")]}}}  # fmt: skip

    def merge(state, other):
        path = tmp_path / "students" / "quality.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(other))
        q.merge_state(state, path)

    def folded(state):
        return [(r["method"], r["budget"], r["measured"]) for r in state["tasks"]["mrpc"]["rows"]]

    want = [
        (q.DENSE, None, "run 1"),
        (q.RETRAINING_FREE, 0.5, "run 1"),
        (q.DISTILLED, 0.25, "students/run 1"),
    ]
    state = copy.deepcopy(mine)
    merge(state, theirs)
    assert folded(state) == want
    assert [r["run"] for r in state["runs"]] == ["run 1", "students/run 1"]
    # a row shown stale here (measured with other settings, e.g. before a protocol change) gives way to theirs
    stale = copy.deepcopy(mine)
    stale["tasks"]["mrpc"]["rows"].append(row(q.DISTILLED, 0.25, 80.0, "run 1", seed=1))
    merge(stale, theirs)
    assert folded(stale) == want
    for change, error in (
        (
            lambda t: t["rows"].append(row(q.RETRAINING_FREE, 0.5, 85.0, "run 1")),
            "rows measured in both: retr",
        ),
        (lambda t: t.update(current={**current, "rows": {"seed": 1}}), "measured with other settings"),
        (lambda t: t["rows"][0]["metrics"].update(f1=80.0), "dense teacher scores"),
    ):
        other = copy.deepcopy(theirs)
        change(other["tasks"]["mrpc"])
        state = copy.deepcopy(mine)
        with pytest.raises(SystemExit, match=error):
            merge(state, other)
        assert state == mine


def test_quality_model_takes_the_teachers_fine_tuned_from_it(tmp_path, monkeypatch):
    """``--model`` (e.g. all-mpnet-base-v2): each task's teacher is the best cached fine-tune of that model, the
    header names it, and a task with none is skipped saying how to make one."""
    from structprune.run.pipeline import prepare_teacher
    from structprune.run.recipe import load_recipe

    q = _script("quality")
    monkeypatch.setenv("STRUCTPRUNE_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "tiny-base"
    q.C.tiny_bert(layers=2).bert.save_pretrained(base)  # no task head: the recipe fine-tunes one
    q.C.tokenizer_for().save_pretrained(base)
    args = ["--model", str(base), "--tasks", "sst2", "--budgets", "0.5", "--methods", "compress",
            "--calibration-examples", "16", "--no-latency", "--threads", "1"]  # fmt: skip

    out = tmp_path / "none"
    q.main([*args, "--out", str(out)])
    state = json.loads((out / "quality.json").read_text())
    assert "benchmarks/teachers.py --model" in state["tasks"]["sst2"]["skipped"]

    overrides = [f"teacher.model={base}", "data.train_examples=32", "teacher.train.num_epochs=1",
                 "data.max_length=16"]  # fmt: skip
    teacher = Path(prepare_teacher(load_recipe(q.recipe_path("sst2"), overrides)))
    assert teacher.is_relative_to(tmp_path / "cache")
    text = q.main([*args, "--out", str(tmp_path / "q")]).read_text()
    state = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert state["tasks"]["sst2"]["teacher"]["path"] == str(teacher)
    assert f"fine-tunes of {base.name} (bert, 2 layers x 32) (`--model`)" in text
    assert "where ours is tiny-base (bert, 2 layers x 32)" in " ".join(text.split())
    assert [r["method"] for r in state["tasks"]["sst2"]["rows"]] == [q.DENSE, q.RETRAINING_FREE]
    with pytest.raises(SystemExit):
        q.parse_args(["--model", str(tmp_path / "missing")])


def test_quality_targets_are_checked_on_the_rows():
    """The targets table of quality.md computes each check from the rows (no hand arithmetic in the notes)."""
    q = _script("quality")
    args = q.parse_args([])

    def row(method, budget, f1):
        return {"method": method, "budget": budget, "metrics": {"f1": f1}}

    rows = [
        row(q.DENSE, None, 86.0),
        row(q.RETRAINING_FREE, 0.6, 85.7),  # -0.30: met (>= -0.5)
        row(q.TAYLOR, 0.6, 85.8),  # compress 0.1 behind: a tie within 0.2, met
        row(q.RETRAINING_FREE, 0.5, 84.5),  # -1.50: missed by 0.50
        row(q.TORCH_PRUNING, 0.5, 85.0),  # compress 0.5 behind: missed by 0.30
        row(q.DISTILLED, 0.25, 84.0),
        row(q.STAGED, 0.25, 85.5),  # the better distilled row counts: -0.50, met
        row(q.FINETUNED, 0.25, 84.8),  # 85.5 - 84.8 = +0.70: missed by 0.30
        row(q.DISTILLED, 0.1, 82.0),  # the TinyBERT-shaped MRPC student: -4.00, missed by 0.50
    ]
    text = q.targets_table({"tasks": {"mrpc": {"rows": rows}}}, args)
    got = {(r[1], r[2].split()[0]): (r[3], r[5]) for r in _table_rows(text)[1:]}
    assert got == {
        ("compress: drop vs teacher", "60%"): ("-0.30", "met"),
        ("compress - best simpler path", "60%"): ("-0.10", "met"),
        ("compress: drop vs teacher", "50%"): ("-1.50", "MISSED by 0.50"),
        ("compress - best simpler path", "50%"): ("-0.50", "MISSED by 0.30"),
        ("distilled: drop vs teacher", "25%"): ("-0.50", "met"),
        ("distilled - fine-tuned (same student)", "25%"): ("+0.70", "MISSED by 0.30"),
        ("distilled: drop vs teacher", "10%"): ("-4.00", "MISSED by 0.50"),
    }
    assert "no target" in q.targets_table({"tasks": {"mrpc": {"rows": rows[:1]}}}, args)
    # every --merge is kept, however the files are given
    assert q.parse_args(["--merge", "a", "--merge", "b", "c"]).merge == [Path("a"), Path("b"), Path("c")]


def test_distill_variants_smoke(tmp_path):
    variants = ("finetune", "logit", "+hidden", "+attention", "staged", "staged+aug", "gradual")
    title = "Distillation variants vs no-teacher fine-tuning of the same pruned student"
    text = _smoke("distill_variants", tmp_path, title, "--threads", "1")
    cells = {tuple(row[:2]) for row in _table_rows(text)}
    for budget in ("25%", "10%"):
        assert {(budget, v) for v in ("one-shot, no training", *variants)} <= cells
    assert "## Target" in text and "## Augmentation cost" in text
    state_path = tmp_path / "work" / "rows.json"
    rows = json.loads(state_path.read_text())["rows"]
    assert len(rows) == 14 and all("metrics" in r for r in rows.values())  # no variant failed
    assert len({r["steps"] for r in rows.values()}) == 1  # the same optimizer steps for every variant
    # a rerun keeps every row already measured with the same settings
    state = json.loads(state_path.read_text())
    state["rows"]["sst2|0.1|gradual"]["measured"] = "kept"
    state_path.write_text(json.dumps(state))
    _script("distill_variants").main(["--smoke", "--out", str(tmp_path), "--threads", "1"])
    assert json.loads(state_path.read_text())["rows"]["sst2|0.1|gradual"]["measured"] == "kept"
    # a run with another seed shows only its own rows: none of the seed-0 variants beside its fine-tuned student
    text = _script("distill_variants").main(
        ["--smoke", "--out", str(tmp_path), "--threads", "1", "--seed", "1", "--budgets", "0.25",
         "--variants", "finetune"]
    ).read_text()  # fmt: skip
    cells = {tuple(row[:2]) for row in _table_rows(text)}
    assert ("25%", "finetune") in cells and not {("25%", v) for v in variants[1:]} & cells
    assert not {("10%", v) for v in variants} & cells


def test_distill_variants_merges_two_processes(tmp_path):
    dv = _script("distill_variants")
    common = ["--smoke", "--threads", "1", "--variants", "finetune", "logit"]
    for name, budget in (("a", "0.25"), ("b", "0.1")):  # one budget per process, each in its own folder
        dv.main([*common, "--out", str(tmp_path / name), "--budgets", budget])
    out = dv.main([*common, "--out", str(tmp_path / "a"), "--budgets", "0.25", "0.1", "--render",
                   "--merge", str(tmp_path / "b" / "work" / "rows.json")])  # fmt: skip
    text = out.read_text()
    cells = {tuple(row[:2]) for row in _table_rows(text)}
    assert {(b, v) for b in ("25%", "10%") for v in ("finetune", "logit")} <= cells
    assert "- Earlier run" in text  # the processes' commands (one line here: under pytest both read the same)
    state = json.loads((tmp_path / "a" / "work" / "rows.json").read_text())
    assert len(state["rows"]) == 4 and all("metrics" in r for r in state["rows"].values())
    # another seed's rows (another calibration sample and data order) are not folded into these
    dv.main([*common, "--out", str(tmp_path / "c"), "--budgets", "0.1", "--seed", "1"])

    def render_with(other):
        return dv.main([*common, "--out", str(tmp_path / "a"), "--render", "--merge", str(other)])

    with pytest.raises(SystemExit, match="other settings"):
        render_with(tmp_path / "c" / "work" / "rows.json")
    with pytest.raises(SystemExit, match="not a distill_variants rows.json"):
        render_with(tmp_path / "a" / "distill_variants.md")


def test_distill_variants_merge_keeps_the_timed_augmentation(tmp_path):
    # the process that generated the set timed it; one reading the cache did not
    dv = _script("distill_variants")
    timed, untimed = {"task": "mrpc", "seconds": 12.0}, {"task": "mrpc", "seconds": None}
    state = {"rows": {}, "tasks": {}, "runs": [], "augment": {"mrpc|k": timed}}
    other = tmp_path / "rows.json"
    other.write_text(json.dumps({"rows": {}, "tasks": {}, "runs": [], "augment": {"mrpc|k": untimed}}))
    dv.merge_state(state, other)
    assert state["augment"]["mrpc|k"] == timed
    state["augment"]["mrpc|k"] = untimed
    other.write_text(json.dumps({"rows": {}, "tasks": {}, "runs": [], "augment": {"mrpc|k": timed}}))
    dv.merge_state(state, other)
    assert state["augment"]["mrpc|k"] == timed


def test_vocab_smoke(tmp_path):
    text = _smoke("vocab", tmp_path, "Vocabulary pruning")
    text, fallback = text.split("## Where the accuracy goes", 1)
    assert [r[0] for r in _table_rows(fallback)[1:]] == ["[UNK]", "nearest kept token"]
    rows = _table_rows(text)
    assert [r[0] for r in rows[1:]] == [
        "teacher (dense)",
        "student, 50% FLOPs",
        "student + vocab",
        "student + vocab",
    ]
    assert [r[1] for r in rows[3:]] == ["1", "2"]  # min_count
    kept = [int(r[2].replace(",", "")) for r in rows[1:]]
    assert kept[0] == kept[1] > kept[2] > kept[3]  # fewer tokens as min_count grows
    assert "## Target (min_count 1)" in text


def test_latency_budget_smoke(tmp_path):
    text = _smoke("latency_budget", tmp_path, "Latency as a budget")
    methods = {row[2] for row in _table_rows(text) if len(row) > 2}
    assert {"search, latency", "search, latency, min_heads=0", "allocate, latency"} <= methods
    assert "search, FLOPs (same fraction)" in methods
    assert "## The latency models" in text and "latency-budgeted models meet their budget within 10%" in text
    saved = json.loads((tmp_path / "latency_budget_b2.json").read_text())
    assert saved["format"] == "structprune.latency/1" and saved["setting"]["batch_size"] == 2


def test_sentence_smoke(tmp_path):
    saved = tmp_path / "saved"
    text = _smoke(
        "sentence", tmp_path, "Pruned sentence-transformers model: tiny random BERT (smoke)", "--threads", "1",
        "--save", str(saved),
    )  # fmt: skip
    rows = _table_rows(text)
    assert [r[1] for r in rows[1:]] == ["-", "no recovery", "reconstruction", "reconstruction + distillation"]
    assert all(r[2].endswith("%") for r in rows[1:]) and rows[1][2] == "100.0%"
    assert all(float(r[2].rstrip("%")) <= 50.0 for r in rows[2:])  # 50% of the encoder FLOPs
    assert all(float(r[6]) > 0 and float(r[8]) > 0 for r in rows[1:])  # sentences/s; encoder ms at 32 x 128
    assert "## Target" in text and "within 1.0 Spearman point" in text and ">= 1.8x" in text
    # the saved students measured again without rebuilding them (--students), with how each was made
    students = [saved / "reconstruction", saved / "reconstruction+distillation"]
    out = _script("sentence").main(
        ["--smoke", "--out", str(tmp_path), "--threads", "1", "--students", *map(str, students)]
    )
    again = out.read_text()
    _check_header(again, "Saved pruned sentence-transformers models vs tiny random BERT (smoke)")
    rows = {r[0]: r for r in _table_rows(again)}
    assert {"dense", "reconstruction", "reconstruction+distillation"} <= set(rows)
    assert "embedding distillation" in rows["reconstruction+distillation"][-1]
    assert again.count("Spearman") >= 2 and "throughput" in again


def test_families_latency_smoke(tmp_path):
    text = _smoke("families_latency", tmp_path, "Latency of ModernBERT and DeBERTa-v3 after pruning")
    rows = _table_rows(text)
    assert [r[0] for r in rows[1:]] == ["bert", "modernbert", "deberta-v2"]
    assert all(r[3] == "50.0%" for r in rows[1:])  # exactly half of each family's encoder FLOPs


def test_speed_smoke(tmp_path):
    text = _smoke("speed", tmp_path, "Speed: dense vs pruned, PyTorch and ONNX Runtime, with accuracy")
    rows = _table_rows(text)
    header, body = rows[0], rows[1:]
    for col in ("SST-2 acc %", "b1 ms", "b1 ms, after another model", "b1 efficiency", "b2 speedup",
                "b2 efficiency, same runtime", "b2 ms, after another model"):  # fmt: skip
        assert col in header  # --smoke's batches 1 and 2 are both timed in blocks (batch < 8)
    runtimes = [
        "PyTorch fp32",
        "PyTorch fp32, torch.compile",
        "ONNX Runtime fp32 (fused)",
        "ONNX Runtime int8",
        "ONNX Runtime int8, one scale per matrix",
    ]
    models = ["dense", "50% FLOPs", "50% FLOPs, 1 layer"]
    assert [(r[0], r[2]) for r in body] == [(m, rt) for m in models for rt in runtimes]
    acc = header.index("SST-2 acc %")
    for i in range(
        0, len(body), len(runtimes)
    ):  # compiled on statically padded batches: the same predictions
        assert body[i + 1][acc] == body[i][acc]
    eff = header.index("b1 efficiency")
    flops = header.index("FLOPs kept")
    speedup = header.index("b1 speedup")
    for r in body:  # efficiency = speedup x FLOPs kept
        assert float(r[eff]) == pytest.approx(float(r[speedup]) * float(r[flops].rstrip("%")) / 100, rel=0.02)
    assert "ONNX Runtime fusion" in text and "Attention 2" in text  # the tiny BERT's two layers fused


def test_ort_layernorm_smoke(tmp_path):
    text = _smoke(
        "ort_layernorm", tmp_path, "ONNX Runtime on CPU: SkipLayerNormalization vs Add + LayerNormalization"
    )
    rows = _table_rows(text)
    header, body = rows[0], rows[1:]
    forms = [r[header.index("form")] for r in body]
    assert forms == list(_script("ort_layernorm").FORMS)
    diff = header.index("max abs diff vs SkipLayerNormalization")
    assert all(float(r[diff]) < 1e-4 for r in body)  # the four forms compute the same thing


def test_breakdown_smoke(tmp_path):
    text = _smoke(
        "breakdown", tmp_path, "Where the time goes: dense vs pruned by part, kind of op and threads"
    )
    for section in ("## Parts of the forward", "## Kinds of op", "## Threads", "## Without Python"):
        assert section in text
    rows = _table_rows(text)
    assert {"dense", "50%", "10%, 1 layer"} <= {r[0] for r in rows}
    # every model's parts, at both smoke batch sizes; each kind-of-op row's shares add up to the whole pass
    assert sum(1 for r in rows if r[0] == "50%" and r[1] in ("1", "2")) == 2
    shares = [r for r in rows if r[0] == "dense" and all("%)" in c for c in r[1:])]
    assert (
        len(shares) == 1 and 95 <= sum(int(c.split("(")[1].rstrip("%)")) for c in shares[0][1:]) <= 105
    )  # rounded


def test_quality_student_row_resumes_where_a_killed_run_stopped(tmp_path):
    """A student row killed mid-training picks up at its last checkpoint (the compressed start is loaded, not
    compressed again) and ends with the weights of an uninterrupted run; its wall time counts the kept
    steps once. Stored rows delete their training folder."""
    from structprune.data import get_task
    from structprune.recovery.distill import LoopCallback

    q = _script("quality")

    class Killed(RuntimeError):
        pass

    class KillAt(LoopCallback):
        def __init__(self, step):
            self.step = step

        def on_step_begin(self, loop):
            if loop.rs.step == self.step:
                raise Killed(f"killed before step {self.step + 1}")

    teacher, tok = q.C.tiny_bert(num_labels=2), q.C.tokenizer_for()

    def context(work):
        args = q.parse_args(["--smoke", "--out", str(tmp_path / "out"), "--work-dir", str(work)])
        args.train_examples = 128  # 4 optimizer steps per epoch, a checkpoint after each
        task = get_task("sst2")
        return q.TaskContext(task, q.task_recipe("sst2", args), teacher, tok, "tiny", args, "run 1")

    def weights(model):
        return {k: v.clone() for k, v in model.state_dict().items()}

    ctx = context(tmp_path / "once")
    whole, _, _ = q.student_row(ctx, q.DISTILLED, 0.5)()
    marks = json.loads((ctx.run_dir(q.DISTILLED, 0.5) / "wall.json").read_text())
    assert (
        max(int(k) for k in marks) == 8
    )  # the last step too: a kill while the row is evaluated loses no time

    ctx = context(tmp_path / "killed")
    with pytest.raises(Killed):
        q.student_row(ctx, q.DISTILLED, 0.5, callbacks=(KillAt(6),))()
    run = ctx.run_dir(q.DISTILLED, 0.5)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-5", "step-6"]
    spent = json.loads((run / "wall.json").read_text())
    ctx = context(tmp_path / "killed")  # a new process: nothing in memory
    resumed, note, seconds = q.student_row(ctx, q.DISTILLED, 0.5)()
    assert "(resumed at step 6)" in note and "from " in note
    assert seconds >= max(spent.values())
    start = json.loads(next((tmp_path / "killed" / "sst2").glob("start-*/start.json")).read_text())
    assert note.startswith(f"from {start['choice']}; compress {start['seconds']:.0f} s")
    a, b = weights(whole), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # a run killed while writing its only checkpoint starts the row over
    ctx = context(tmp_path / "damaged")
    with pytest.raises(Killed):
        q.student_row(ctx, q.FINETUNED, 0.5, callbacks=(KillAt(2),))()
    run = ctx.run_dir(q.FINETUNED, 0.5)
    for checkpoint in (run / "checkpoints").iterdir():
        for f in checkpoint.rglob("*.safetensors"):
            f.write_bytes(b"torn")
    _, note, _ = q.student_row(context(tmp_path / "damaged"), q.FINETUNED, 0.5)()
    assert "resumed" not in note
    # bad records are data: a damaged start record means compressing again, not a crash
    (next((tmp_path / "killed" / "sst2").glob("start-*")) / "start.json").write_text('{"seconds": "x"}')
    ctx = context(tmp_path / "killed")
    _, seconds, choice = ctx.compressed(0.5)
    assert isinstance(seconds, float) and choice
    # a stored row's training folder goes; its compressed start stays for the next run
    q.main(["--smoke", "--out", str(tmp_path / "q"), "--methods", "fine-tuned", "--no-latency"])
    work = tmp_path / "q" / "work" / "sst2"
    assert [p.name.split("-")[0] for p in work.iterdir()] == ["start", "start"]


def test_quality_matched_torch_pruning_row_is_opt_in():
    q = _script("quality")
    args = q.parse_args([])
    assert q._selected(args, q.TORCH_PRUNING) and not q._selected(args, q.TORCH_PRUNING_MATCHED)
    args = q.parse_args(["--methods", "raised"])
    assert q._selected(args, q.TORCH_PRUNING_MATCHED) and not q._selected(args, q.TORCH_PRUNING)
    assert q._selected(args, q.DENSE)


def test_quality_lists_what_compress_chose_from():
    """The held-back losses of compress's candidates (stored in its row) are listed under the task, lowest first."""
    q = _script("quality")
    args = q.parse_args([])
    cands = {"search+rearrange, reconstructed": 0.52, "allocate (taylor), reconstructed": 0.41}
    settings = {"compress_protocol": 4}
    entry = {"rows": [{"method": q.RETRAINING_FREE, "budget": 0.5, "candidates": cands, "settings": settings},
                      {"method": q.TAYLOR, "budget": 0.5}]}  # fmt: skip
    text = q.candidates_text(entry, args)
    want = "- at 50% (KL from the teacher): allocate (taylor), reconstructed 0.4100; search+rearrange, reconstructed"
    assert want + " 0.5200" in text
    assert q.candidates_text({"rows": [{"method": q.RETRAINING_FREE, "budget": 0.5}]}, args) == ""


def test_rearrange_smoke(tmp_path):
    text = _smoke("rearrange", tmp_path, "Search masks with and without Kwon et al.'s rearrangement")
    rows = {r[0]: r for r in _table_rows(text)}
    assert {"search", "search + rearranged heads", "search + rearranged neurons", "allocate (Taylor)"} <= set(
        rows
    )
    # a rearrangement moves structures within layers: the counts per layer stay the search's
    assert rows["search + rearranged heads and neurons (Kwon et al.)"][1:4] == rows["search"][1:4]


def test_selection_smoke(tmp_path):
    sel = _script("selection")
    text = _smoke("selection", tmp_path, "How sp.compress chooses among its candidates")
    rows = _table_rows(text)
    rules = [r[0] for r in rows if r[0] in sel.RULES]
    assert rules == list(sel.RULES)  # one summary row per rule
    candidates = [r[0] for r in rows if r[0].endswith("reconstructed")]
    assert len(candidates) == 2 * len(sel.PATHS) * 2  # every path, with and without reconstruction, two seeds
    assert sum("configured path" in r[-1] for r in rows) == 2  # the configured path is marked once per seed
    marked = [r for r in sel.RULES if r.endswith(sel.DEFAULT_RULE)]
    assert marked == ["KL, margin 0 (sp.compress)"]  # the rule of CompressConfig's defaults, and only it

    # --summarize reads the file back: every rule over both seeds, against sp.compress's rule
    summary = sel.main(
        ["--summarize", str(tmp_path / "selection_smoke.md"), "--out", str(tmp_path)]
    ).read_text()
    _check_header(summary, "How sp.compress chooses: every selection result together")
    overall = {r[0]: r for r in _table_rows(summary.split("## Over every case")[1].split("## Mean")[0])}
    assert set(overall) - {"rule"} == set(sel.RULES)
    assert overall["KL, margin 0 (sp.compress)"][1:7] == ["2", "+0.00", "0", "0", "+0.00", "+0.00"]
    assert overall["oracle"][-1] == "+0.00" and float(overall["oracle"][2]) >= 0  # the oracle is never worse
    with pytest.raises(ValueError, match="in two of the files"):
        sel.summarize([tmp_path / "selection_smoke.md", tmp_path / "selection_smoke.md"])


def test_selection_reads_results_written_under_another_default():
    """The committed files were written when the task loss at margin 2 was sp.compress's rule (marked so): read
    back, the rules are named without the mark, so files written under either default sum up together."""
    sel = _script("selection")
    picks = sel.read_picks(Path(sel.__file__).parent / "results" / "selection_rte_25.md")
    assert list(picks) == ["RTE at 25%"]
    rte = picks["RTE at 25%"]
    assert set(rte) == {r.replace(sel.DEFAULT_RULE, "") for r in sel.RULES}
    assert rte["task loss, margin 2"] == [57.76, 44.40, 53.43, 58.12, 56.32] and len(rte["oracle"]) == 5


def test_selection_pick_keeps_the_configured_path_within_noise():
    sel = _script("selection")
    configured = torch.tensor([0.70, 0.60, 0.80, 0.65])
    noisy = {sel.CONFIGURED: configured, "other": configured - torch.tensor([0.3, -0.25, 0.2, -0.2])}
    assert float(noisy["other"].mean()) < float(configured.mean())
    assert sel.pick(noisy, 2.0) == sel.CONFIGURED  # lower on average, but not by 2 standard errors
    assert sel.pick(noisy, 0.0) == "other"
    clear = {sel.CONFIGURED: configured, "other": configured - 0.1}
    assert sel.pick(clear, 2.0) == "other"


def test_teacher_outputs_smoke(tmp_path):
    text = _smoke("teacher_outputs", tmp_path, "What a teacher's outputs say beyond the labels")
    rows = {r[1]: r for r in _table_rows(text) if r[0] == "SST-2"}
    assert set(rows) == {"train", "validation"}  # both splits of the task
    header = _table_rows(text)[0]
    col = {name: i for i, name in enumerate(header)}
    for row in rows.values():
        assert row[col["examples"]] == "32"
        p = [float(row[col[f"mean top p at T={t}"]]) for t in ("2", "4", "8")]
        # dividing the logits by a larger temperature can only flatten the softmax
        assert float(row[col["mean top p"]]) >= p[0] >= p[1] >= p[2] >= 0.5


def test_teacher_outputs_refuses_a_regression_task():
    with pytest.raises(SystemExit):
        _script("teacher_outputs").parse_args(["--tasks", "stsb"])
