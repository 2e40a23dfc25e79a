"""Pruned checkpoints: every loading path, atomic saves, damaged files, no code run from a checkpoint."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiny
import torch
from helpers import HAS_HIDDEN, NO_STRUCTPRUNE_SCRIPT, pruned, run_without_structprune, tokenizer
from safetensors.torch import save_file
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
)

import structprune as sp
from structprune.arch.head_bias import HEAD_BIAS_INDEX as BIAS_INDEX
from structprune.arch.record import decode_indices, encode_indices, validate_structure
from structprune.checkpoint import registry
from structprune.checkpoint import remote_modeling as rm

REPO = Path(__file__).resolve().parents[1]


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- path 1: with structprune -------------------------------------------------------------------------
@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_structprune_and_auto_load_identical_logits(family, tmp_path):
    model = pruned(family)
    b = tiny.batch()
    want = tiny.outputs(model, b)
    folder = sp.save_pretrained(model, tmp_path / "ckpt", tokenizer=None)

    assert {"config.json", "model.safetensors", rm.MODELING_FILE, "README.md", "structure.png"} <= files(
        folder
    )
    assert not [n for n in files(folder) if n.endswith((".bin", ".pt", ".pkl"))]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == rm.MODEL_TYPE_PREFIX + family
    assert config["structprune"]["layers"] == "0,2"  # kept indices as strings of ranges (or bit masks)
    assert config["structprune"]["heads"] == ["1-2", "1-3"]

    loaded = sp.from_pretrained(folder)
    auto = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    for other in (loaded, auto):
        assert type(other) is type(model)
        assert torch.equal(tiny.outputs(other, b), want)
        assert sp.arch.view(other).structure == sp.arch.view(model).structure
        assert sp.cost(other).total_params == sp.cost(model).total_params


@pytest.mark.skipif(not HAS_HIDDEN, reason="this structprune has no hidden-size pruning")
@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_hidden_pruned_checkpoints_load(family, tmp_path):
    for task in ("mlm", "qa"):  # tied word embeddings / decoder; a head reading the residual stream
        model = pruned(family, task, hidden=True)
        b = tiny.batch(labels=None)
        folder = sp.save_pretrained(model, tmp_path / task, tokenizer=None, card=False)
        hidden = json.loads((folder / "config.json").read_text())["structprune"]["hidden"]
        assert decode_indices(hidden, 32) == sp.arch.view(model).structure.hidden
        assert torch.equal(tiny.outputs(sp.from_pretrained(folder), b), tiny.outputs(model, b))


@pytest.mark.parametrize("task", ["base", "token-cls", "qa", "mlm"])
def test_every_task_head_round_trips(task, tmp_path):
    model = pruned("bert", task)
    b = tiny.batch(labels=None)
    folder = sp.save_pretrained(model, tmp_path / task, tokenizer=None, card=False)
    assert torch.equal(tiny.outputs(sp.from_pretrained(folder), b), tiny.outputs(model, b))
    auto = {"base": AutoModel}.get(task)
    if auto is not None:
        assert torch.equal(tiny.outputs(auto.from_pretrained(folder).eval(), b), tiny.outputs(model, b))


def test_plain_save_pretrained_and_from_config_after_adopt(tmp_path):
    model = registry.adopt(pruned("mpnet"))
    b = tiny.batch()
    record = copy.deepcopy(model.config.structprune)
    model.save_pretrained(tmp_path / "plain")  # transformers' own method writes the modeling file too
    assert rm.MODELING_FILE in files(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["structprune"]["layers"] == "0,2"
    assert model.config.structprune == record  # lists in memory, before and after the save
    assert torch.equal(tiny.outputs(sp.from_pretrained(tmp_path / "plain"), b), tiny.outputs(model, b))
    fresh = AutoModelForSequenceClassification.from_config(model.config)  # builds the pruned shapes
    assert sp.cost(fresh).total_params == sp.cost(model).total_params


@pytest.mark.parametrize("family", ["mpnet", "bert"])
def test_loaded_checkpoint_prunes_again(family, tmp_path):
    model = pruned(family)
    loaded = sp.from_pretrained(sp.save_pretrained(model, tmp_path / "a", tokenizer=None, card=False))
    again = sp.Mask.full(loaded)
    again.head[2, 3] = False
    again.ffn[0, 20:30] = False
    for m in (model, loaded):
        sp.prune_(m, again)
    b = tiny.batch()
    assert torch.equal(tiny.outputs(loaded, b), tiny.outputs(model, b))
    reloaded = sp.from_pretrained(sp.save_pretrained(loaded, tmp_path / "b", tokenizer=None, card=False))
    assert torch.equal(tiny.outputs(reloaded, b), tiny.outputs(model, b))
    if family == "mpnet":
        attn = sp.arch.view(reloaded).layers[1].attn
        assert getattr(attn, BIAS_INDEX).tolist() == [0, 1]  # union {1, 2}: layer 2 keeps heads 1, 2


# --- path 4: stock structures are stock checkpoints -----------------------------------------------------
@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_uniform_ffn_and_dropped_layers_save_a_stock_checkpoint(family, tmp_path):
    model = pruned(family, stock=True)
    b = tiny.batch()
    folder = sp.save_pretrained(model, tmp_path / "stock", tokenizer=None, card=False)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == family
    assert config["structprune"]["layers"] == "0,2"  # compact under a stock model type too
    assert "auto_map" not in config and rm.MODELING_FILE not in files(folder)
    assert sp.from_pretrained(folder).config.structprune == model.config.structprune  # lists again
    stock_cls = type(tiny.model(family))
    assert type(model) is stock_cls
    loaded = stock_cls.from_pretrained(folder).eval()  # the stock transformers class, nothing else
    assert torch.equal(tiny.outputs(loaded, b), tiny.outputs(model, b))


def test_a_pruned_model_saved_under_its_stock_model_type_gives_a_clear_error(tmp_path):
    # What a plain model.save_pretrained writes for a pruned model that was never adopted.
    folder = sp.save_pretrained(pruned("bert"), tmp_path / "plain", tokenizer=None, card=False)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="bert", architectures=["BertForSequenceClassification"])
    for key in ("auto_map", rm.ARCH_KEY):
        del config[key]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="structprune.save_pretrained"):
        sp.from_pretrained(folder)


def test_pruning_further_turns_a_stock_model_into_a_structprune_one_and_back(tmp_path):
    model = pruned("bert", stock=True)
    assert type(model) is BertForSequenceClassification
    mask = sp.Mask.full(model)
    mask.head[0, 0] = False
    registry.adopt(sp.prune_(model, mask))
    assert type(model).__name__ == "StructPruneBertForSequenceClassification"
    assert isinstance(model, BertForSequenceClassification)
    assert model.config.model_type == "structprune-bert"


# --- paths 2 and 3 (and 4 again): a Python that cannot import structprune -------------------------------
def test_loads_without_structprune_via_remote_code_and_stock_config(tmp_path):
    cases = []
    kinds = ["nonuniform", "stock"] + (["hidden"] if HAS_HIDDEN else [])
    for family in tiny.FAMILIES:
        for kind in kinds:
            model = pruned(family, stock=kind == "stock", hidden=kind == "hidden")
            b = tiny.batch()
            folder = sp.save_pretrained(model, tmp_path / f"{family}-{kind}", tokenizer=None, card=False)
            with torch.no_grad():
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            ref = tmp_path / f"{family}-{kind}.safetensors"
            save_file(
                {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "logits": logits}, ref
            )
            cases.append({"dir": str(folder), "ref": str(ref), "stock": kind == "stock", "family": family})
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    out = tmp_path / "results.json"
    proc = run_without_structprune(NO_STRUCTPRUNE_SCRIPT, [str(tmp_path / "cases.json"), str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for case in cases:
        r = results[case["dir"]]
        assert r["max_diff"] < 1e-5, (case, r)
        if case["stock"]:  # path 4: vanilla transformers classes
            assert r["module"].startswith("transformers.models."), r
        else:  # path 2: the modeling file the checkpoint carries; path 3: a clear error saying how
            assert r["module"].startswith("transformers_modules.") and r["module"].endswith(
                "modeling_structprune"
            )
            assert "trust_remote_code=True" in r["plain"] and "custom code" in r["plain"], r["plain"]


def _scattered(seed: int = 0):
    """A tiny BERT with 768 FFN neurons per layer pruned as importance scores prune: about half the neurons
    and a quarter of the residual stream kept at scattered positions, heads per layer, the middle layer
    dropped."""
    model = tiny.model("bert", intermediate_size=768)
    mask = sp.Mask.full(model)
    g = torch.Generator().manual_seed(seed)
    mask.ffn = torch.rand(mask.ffn.shape, generator=g) < 0.5
    mask.head[0, [0, 3]] = False
    mask.head[1], mask.ffn[1] = False, False
    mask.hidden = torch.rand(32, generator=g) < 0.75
    return sp.prune_(model, mask)


def _plain_lists(folder: Path, to: Path) -> Path:
    """A copy of ``folder`` whose config.json has the integer lists earlier versions wrote (same layout)."""
    shutil.copytree(folder, to)
    config = json.loads((to / "config.json").read_text())
    config["structprune"] = validate_structure(config["structprune"])
    (to / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")  # as transformers
    return to


def test_config_json_stays_small_and_loads_everywhere_as_before(tmp_path):
    model = _scattered()
    record = copy.deepcopy(model.config.structprune)
    b = tiny.batch()
    want = tiny.outputs(model, b)
    folder = sp.save_pretrained(model, tmp_path / "compact", tokenizer=None, card=False)
    assert model.config.structprune == record  # saving leaves the lists in memory
    old = _plain_lists(folder, tmp_path / "plain")

    compact = json.loads((folder / "config.json").read_text())["structprune"]
    assert all(f.startswith("0x") for f in compact["ffn"])  # scattered: bit masks
    assert compact["hidden"] == "0-1,3,5-6,8,10-16,19-22,24-31"  # short ranges stay ranges (readable)
    assert compact["layers"] == "0,2" and compact["heads"] == ["1-2", "0-3"]
    new_size, old_size = ((f / "config.json").stat().st_size for f in (folder, old))
    plain = json.loads((old / "config.json").read_text())["structprune"]
    assert len(json.dumps(compact, indent=2)) * 10 < len(json.dumps(plain, indent=2))  # the record: >10x
    assert new_size * 3 < old_size, (new_size, old_size)  # the whole file

    # path 1: structprune, and the Auto classes with structprune imported; both formats, the same lists
    for f in (folder, old):
        for loaded in (sp.from_pretrained(f), AutoModelForSequenceClassification.from_pretrained(f).eval()):
            assert torch.equal(tiny.outputs(loaded, b), want)
            assert loaded.config.structprune == record
            assert sp.arch.view(loaded).structure == sp.arch.view(model).structure
    # a loaded model saves the compact form again
    again = sp.save_pretrained(sp.from_pretrained(old), tmp_path / "again", tokenizer=None, card=False)
    assert (again / "config.json").read_text() == (folder / "config.json").read_text()

    # path 2: transformers alone, through the modeling file in the folder; both formats
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    ref = tmp_path / "ref.safetensors"
    save_file({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "logits": logits}, ref)
    cases = [{"dir": str(f), "ref": str(ref), "stock": False} for f in (folder, old)]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    out = tmp_path / "results.json"
    proc = run_without_structprune(NO_STRUCTPRUNE_SCRIPT, [str(tmp_path / "cases.json"), str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for case in cases:
        r = json.loads(out.read_text())[case["dir"]]
        assert r["max_diff"] == 0.0 and r["module"].endswith("modeling_structprune"), (case, r)


def test_modeling_file_is_self_contained():
    source = rm.modeling_source(("bert",))
    imports = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.startswith(("import ", "from ")) and not line.startswith("from __future__")
    }
    assert imports <= {"os", "re", "pathlib", "torch", "transformers"}, imports
    assert "BASE_MODEL_TYPES: tuple[str, ...] = ('bert',)" in source
    assert rm.HEAD_BIAS_INDEX == BIAS_INDEX  # the loaded model can be pruned again by surgery


# --- the structprune path never runs checkpoint code ---------------------------------------------------
def test_loading_never_runs_code_from_the_checkpoint(tmp_path):
    model = pruned("bert")
    folder = sp.save_pretrained(model, tmp_path / "ckpt", tokenizer=None, card=False)
    marker = tmp_path / "code-was-run"
    (folder / rm.MODELING_FILE).write_text(f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(1)\n")
    b = tiny.batch()
    assert torch.equal(tiny.outputs(sp.from_pretrained(folder), b), tiny.outputs(model, b))
    assert torch.equal(
        tiny.outputs(AutoModelForSequenceClassification.from_pretrained(folder), b), tiny.outputs(model, b)
    )
    # Even an explicit opt-in uses structprune's own classes once structprune is imported.
    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)
    assert not marker.exists()
    with pytest.raises(ValueError, match="never runs code"):
        sp.from_pretrained(folder, trust_remote_code=True)


# --- atomic writes and damaged checkpoints --------------------------------------------------------------
class Interrupted(Exception):
    pass


class InterruptingTokenizer:
    """Fails part-way through a save: after the model files are written, before the folder is complete."""

    def save_pretrained(self, folder):
        assert (Path(folder) / "model.safetensors").is_file()
        raise Interrupted


def test_interrupted_save_leaves_nothing_loadable(tmp_path):
    model = pruned("bert")
    target = tmp_path / "ckpt"
    with pytest.raises(Interrupted):
        sp.save_pretrained(model, target, tokenizer=InterruptingTokenizer())
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too

    # Over an existing checkpoint: the old one stays, whole.
    old = pruned("bert", stock=True)
    sp.save_pretrained(old, target, tokenizer=None, card=False)
    with pytest.raises(Interrupted):
        sp.save_pretrained(model, target, tokenizer=InterruptingTokenizer())
    b = tiny.batch()
    assert torch.equal(tiny.outputs(sp.from_pretrained(target), b), tiny.outputs(old, b))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


_KILLED_MID_SAVE = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
import tiny, structprune as sp
from helpers import nonuniform_mask

class Killed:
    def save_pretrained(self, folder):
        os._exit(3)  # a hard kill: no exception handler, no cleanup

model = tiny.model("bert")
sp.prune_(model, nonuniform_mask(model))
sp.save_pretrained(model, sys.argv[2], tokenizer=Killed())
"""


def test_killed_save_leaves_no_loadable_folder(tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(_KILLED_MID_SAVE)
    target = tmp_path / "out" / "ckpt"
    proc = subprocess.run(
        [sys.executable, str(script), str(REPO / "tests"), str(target)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert not target.exists()
    (leftover,) = (tmp_path / "out").iterdir()  # the temporary folder of the killed save
    assert leftover.name.startswith(".ckpt.") and "model.safetensors" in files(leftover)
    for load in (sp.from_pretrained, AutoModelForSequenceClassification.from_pretrained):
        with pytest.raises((OSError, ValueError)):
            load(leftover)


def test_refuses_to_replace_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "data.csv").write_text("keep me")
    with pytest.raises(ValueError, match="holds no model"):
        sp.save_pretrained(pruned("bert"), tmp_path, tokenizer=None, card=False)
    assert (tmp_path / "data.csv").read_text() == "keep me"


def test_truncated_or_corrupt_files_give_an_error_naming_the_file(tmp_path):
    folder = sp.save_pretrained(pruned("bert"), tmp_path / "ckpt", tokenizer=None, card=False)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()

    weights.write_bytes(data[: len(data) - 100])  # truncated
    with pytest.raises(ValueError, match=r"model\.safetensors is corrupt or truncated"):
        sp.from_pretrained(folder)
    weights.write_bytes(b"\xff" * 8 + data[8:])  # header length garbage
    with pytest.raises(ValueError, match=r"model\.safetensors is corrupt or truncated"):
        sp.from_pretrained(folder)
    weights.write_bytes(data)

    config = folder / "config.json"
    text = config.read_text()
    config.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"config\.json is corrupt or truncated"):
        sp.from_pretrained(folder)
    config.write_text(text)

    weights.unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        sp.from_pretrained(folder)


def test_weights_that_do_not_fit_the_config_are_an_error(tmp_path):
    folder = sp.save_pretrained(pruned("bert"), tmp_path / "ckpt", tokenizer=None, card=False)
    config = json.loads((folder / "config.json").read_text())
    ffn = decode_indices(config["structprune"]["ffn"][0], 48)
    config["structprune"]["ffn"][0] = encode_indices(ffn[:-1])  # one neuron fewer than stored
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not match"):
        sp.from_pretrained(folder)


# --- tokenizer beside the model --------------------------------------------------------------------------
def test_tokenizer_is_saved_beside_the_model(tmp_path):
    tok = tokenizer(tmp_path)
    model = pruned("bert")
    folder = sp.save_pretrained(model, tmp_path / "a", tokenizer=tok, card=False)
    text = "w1 w2 w3"
    assert AutoTokenizer.from_pretrained(folder)(text)["input_ids"] == tok(text)["input_ids"]

    # A model loaded from a folder with a tokenizer takes it along by default.
    again = sp.save_pretrained(sp.from_pretrained(folder), tmp_path / "b", card=False)
    assert AutoTokenizer.from_pretrained(again)(text)["input_ids"] == tok(text)["input_ids"]


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(TypeError, match="PreTrainedModel"):
        sp.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(TypeError, match="CardInfo"):
        sp.save_pretrained(pruned("bert"), tmp_path / "x", card={"base_model": "x"})
    with pytest.raises(ValueError, match="Auto class"):
        sp.from_pretrained(
            sp.save_pretrained(pruned("bert"), tmp_path / "y", card=False), auto_class="BertModel"
        )
    with pytest.raises(FileNotFoundError, match="config.json"):
        sp.from_pretrained(tmp_path / "x")


@pytest.mark.parametrize("task", ["base", "seq-cls"])
def test_adopted_models_still_return_hidden_states(task):
    """transformers gathers hidden states through a registry keyed on the model's class when it was built:
    a model whose class ``prune_`` swapped (to StructPruneBertModel) must still return them."""
    from helpers import nonuniform_mask

    model = tiny.model("bert", task)
    sp.prune_(model, nonuniform_mask(model))
    assert type(model).__name__.startswith("StructPrune")
    out = model(input_ids=torch.randint(5, tiny.VOCAB, (2, 6)), output_hidden_states=True)
    assert len(out.hidden_states) == 3  # the embeddings and the 2 kept layers
