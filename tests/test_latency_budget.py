"""Latency as a budget: the latency model (tables, prediction, JSON, cache), allocate / search / compress
under ``latency=``, and the card. Deterministic: the latency models here are built from synthetic tables;
the one measurement only checks shapes and invariants, never timing values."""

from __future__ import annotations

import copy
import json
import math

import pytest
import tiny
import torch

import structprune as sp
from structprune.allocation.budget import prices
from structprune.allocation.latency_model import default_neuron_grid
from structprune.allocation.latency_setting import LatencySetting, ModelDims, cache_key, cache_path
from structprune.checkpoint.card import budget_text, recorded_card

SETTING = LatencySetting(
    device="cpu:Test CPU",
    threads=2,
    batch_size=32,
    seq_len=128,
    dtype="float32",
    torch="2.13.0",
    attention="sdpa",
)


def synthetic(model, *, overhead=2.0, per_head=1.0, per_neuron=0.05, step=0.0, outside=3.0, setting=SETTING):
    """A latency model of ``model`` with known tables: ``overhead + per_head * h`` per kept layer, FFN
    ``per_neuron * n`` (plus a ``step`` once any neuron is kept), ``outside`` ms outside the layers."""
    dims = ModelDims.of(model)
    heads = tuple(range(1, dims.num_heads + 1))
    neurons = tuple(default_neuron_grid(dims.intermediate_size))
    ffn = tuple(0.0 if n == 0 else step + per_neuron * n for n in neurons)
    return sp.LatencyModel(
        setting, dims, heads, tuple(overhead + per_head * h for h in heads), neurons, ffn, outside
    )


def _scores(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    full = sp.Mask.full(model)
    return sp.Scores(
        torch.rand(full.head.shape, generator=g).pow(2) * full.head,
        torch.rand(full.ffn.shape, generator=g).pow(2) * full.ffn,
        method="fisher",
    )


def _step_cost(lm, mask, multiple_of=1):
    """The most one more head or ``multiple_of`` neurons could add to any kept layer of ``mask``."""
    worst = 0.0
    for h, n in zip(mask.heads_per_layer(), mask.ffn_per_layer(), strict=True):
        if h:
            base = lm.layer_ms(h, n)
            worst = max(worst, lm.layer_ms(h + 1, n) - base, lm.layer_ms(h, n + multiple_of) - base)
    return worst


# --- the latency model ----------------------------------------------------------------------------


def test_predict_interpolates_and_dropped_layers_cost_nothing():
    m = tiny.model("bert")  # 3 layers, 4 heads, 48 neurons
    lm = synthetic(m)
    assert lm.neurons[:3] == (0, 1, 3) and lm.neurons[-1] == 48
    assert lm.attention_at(3) == pytest.approx(5.0)
    assert lm.ffn_at(0) == 0 and lm.ffn_at(48) == pytest.approx(2.4)
    assert lm.ffn_at(4) == pytest.approx(0.2)  # between grid points 3 and 6: linear
    assert lm.layer_ms(0, 0) == 0
    dense = 3.0 + 3 * (6.0 + 2.4)
    assert lm.dense_ms == pytest.approx(dense)
    assert lm.predict(m) == pytest.approx(dense) and lm.fraction(sp.Mask.full(m)) == pytest.approx(1.0)
    mask = sp.Mask.full(m)
    mask.head[1] = False
    mask.ffn[1] = False  # layer 1 dropped: costs nothing
    mask.head[0, 2:] = False
    mask.ffn[0, 10:] = False
    expected = 3.0 + (4.0 + 0.5) + (6.0 + 2.4)
    assert lm.predict(mask) == pytest.approx(expected)
    assert lm.fraction(mask) == pytest.approx(expected / dense)
    # a Structure (or its dict) and the pruned model predict the same
    pruned = sp.prune_(copy.deepcopy(m), mask)
    assert lm.predict(pruned) == pytest.approx(expected)
    assert lm.predict(pruned.config.structprune) == pytest.approx(expected)


def test_linear_prices_are_exact_for_the_dense_model_and_one_head():
    m = tiny.model("bert")
    lm = synthetic(m)
    lin = lm.linear()
    assert lin.per_layer + 1 * lin.head == pytest.approx(lm.attention_at(1))
    assert lin.per_layer + 4 * lin.head == pytest.approx(lm.attention_at(4))
    p = prices(m, "latency", 0.5, 128, latency_model=lm)
    assert p.of(3 * 4, 3 * 48) == pytest.approx(lm.dense_ms) == pytest.approx(p.total)
    assert p.budget == pytest.approx(0.5 * lm.dense_ms)
    assert p.exact([4, 0, 1], [48, 0, 0]) == pytest.approx(3.0 + 8.4 + 0 + 3.0)


def test_predict_rejects_what_it_cannot_describe():
    m = tiny.model("bert")
    lm = synthetic(m)
    with pytest.raises(ValueError, match="does not fit"):
        lm.predict(sp.Mask.full(tiny.model("bert", num_hidden_layers=2)))
    with pytest.raises(ValueError, match="measured for another model"):
        lm.predict(tiny.model("bert", intermediate_size=64))
    mask = sp.Mask.full(m)
    mask.hidden = torch.ones(32, dtype=torch.bool)
    mask.hidden[0] = False
    with pytest.raises(ValueError, match="full hidden size"):
        lm.predict(mask)
    with pytest.raises(TypeError, match="predict takes"):
        lm.predict([1, 2])


def test_json_round_trip_and_card_round_trip(tmp_path):
    m = tiny.model("bert")
    lm = synthetic(m, step=0.3)
    path = lm.save(tmp_path / "lm.json")
    back = sp.LatencyModel.load(path, m)
    assert back == lm and back.predict(m) == lm.predict(m)
    assert sp.LatencyModel.from_dict(json.loads(json.dumps(lm.to_dict()))) == lm


def _tampered(tmp_path, change):
    data = synthetic(tiny.model("bert")).to_dict()
    change(data)
    path = tmp_path / "lm.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format="other/1"), "format"),
        (lambda d: d.update(extra=1), "unknown fields"),
        (lambda d: d.pop("ffn_ms"), "missing fields"),
        (lambda d: d["attention_ms"].__setitem__(2, -1.0), "positive"),
        (lambda d: d["attention_ms"].__setitem__(3, 0.5), "must not decrease"),
        (lambda d: d["attention_ms"].__setitem__(0, "fast"), "finite numbers"),
        (lambda d: d["ffn_ms"].__setitem__(4, float("nan")), "finite numbers"),
        (lambda d: d["ffn_ms"].__setitem__(0, 0.01), "must be 0"),
        (lambda d: d["heads"].reverse(), "strictly increasing"),
        (lambda d: d["neurons"].__setitem__(-1, 47), "run from 0 to 48"),
        (lambda d: d["heads"].__setitem__(0, True), "integers"),
        (lambda d: d["attention_ms"].pop(), "one per grid point"),
        (lambda d: d["setting"].__setitem__("threads", 0), "setting.threads"),
        (lambda d: d["setting"].pop("device"), "exactly the fields"),
        (lambda d: d["dims"].__setitem__("num_heads", "4"), "dims.num_heads"),
        (lambda d: d.update(outside_ms=math.inf), "finite"),
    ],
)
def test_a_tampered_file_is_a_clear_error(tmp_path, change, message):
    path = _tampered(tmp_path, change)
    with pytest.raises(ValueError, match="not a valid structprune latency model") as err:
        sp.LatencyModel.load(path)
    assert message in str(err.value)


def test_a_file_for_another_model_or_not_json_is_rejected(tmp_path):
    path = synthetic(tiny.model("bert")).save(tmp_path / "lm.json")
    with pytest.raises(ValueError, match="num_layers"):
        sp.LatencyModel.load(path, tiny.model("bert", num_hidden_layers=2))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid"):
        sp.LatencyModel.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        sp.LatencyModel.load(tmp_path / "missing.json")


def test_cache_key_follows_setting_and_dims():
    m = tiny.model("bert")
    dims = ModelDims.of(m)
    key = cache_key(SETTING, dims)
    assert key == cache_key(SETTING, ModelDims.of(tiny.model("bert", seed=1)))  # weights do not matter
    others = [
        cache_key(LatencySetting(**{**SETTING.__dict__, field: value}), dims)
        for field, value in [
            ("device", "cuda:Test GPU"),
            ("threads", 4),
            ("batch_size", 1),
            ("seq_len", 64),
            ("dtype", "float16"),
            ("torch", "2.14.0"),
            ("attention", "eager"),
        ]
    ]
    others.append(cache_key(SETTING, ModelDims.of(tiny.model("bert", intermediate_size=64))))
    others.append(cache_key(SETTING, ModelDims.of(tiny.model("bert", task="base"))))
    others.append(cache_key(SETTING, ModelDims.of(tiny.model("roberta"))))
    assert len({key, *others}) == len(others) + 1
    # a pruned model finds the entry of the model it was pruned from
    mask = sp.Mask.full(m)
    mask.head[0, :2] = False
    assert ModelDims.of(sp.prune_(copy.deepcopy(m), mask)) == dims


def test_cached_reads_the_cache_and_measures_only_when_missing_or_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv("STRUCTPRUNE_CACHE", str(tmp_path))
    m = tiny.model("bert")
    here = LatencySetting.current(m, 4, 16)
    calls = []

    def fake_measure(cls, model, **options):
        calls.append(options)
        return synthetic(model, setting=here)

    monkeypatch.setattr(sp.LatencyModel, "measure", classmethod(fake_measure))
    first = sp.LatencyModel.cached(m, batch_size=4, seq_len=16)
    path = cache_path(here, ModelDims.of(m))
    assert path.is_file() and path.parent == tmp_path / "latency" and len(calls) == 1
    assert sp.LatencyModel.cached(m, batch_size=4, seq_len=16) == first and len(calls) == 1
    path.write_text("{damaged")
    assert sp.LatencyModel.cached(m, batch_size=4, seq_len=16) == first and len(calls) == 2
    sp.LatencyModel.cached(m, batch_size=8, seq_len=16)  # another setting: measured
    assert len(calls) == 3
    mask = sp.Mask.full(m)
    mask.head[0, :2] = False
    pruned = sp.prune_(copy.deepcopy(m), mask)
    assert sp.LatencyModel.cached(pruned, batch_size=4, seq_len=16) == first and len(calls) == 3
    with pytest.raises(ValueError, match="unpruned model"):
        sp.LatencyModel.cached(pruned, batch_size=2, seq_len=16)


def test_measure_on_a_tiny_model_gives_valid_tables(tmp_path):
    m = tiny.model("bert")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    lm = sp.LatencyModel.measure(m, batch_size=2, seq_len=8, warmup=0, repeats=1, neurons=[0, 12, 48])
    assert {k: v for k, v in m.state_dict().items()}.keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # the model is untouched
    assert lm.heads == (1, 2, 3, 4) and lm.neurons == (0, 12, 48)
    assert lm.dims == ModelDims.of(m) and lm.setting.batch_size == 2 and lm.setting.seq_len == 8
    assert lm.setting.device.startswith("cpu:") and lm.setting.threads == torch.get_num_threads()
    assert all(t > 0 for t in lm.attention_ms) and lm.ffn_ms[0] == 0 and lm.outside_ms >= 0
    assert list(lm.attention_ms) == sorted(lm.attention_ms) and list(lm.ffn_ms) == sorted(lm.ffn_ms)
    assert lm.meta["repeats"] == 1 and lm.meta["dense_measured_ms"] > 0
    assert sp.LatencyModel.load(lm.save(tmp_path / "lm.json"), m) == lm
    mask = sp.Mask.full(m)
    mask.head[0, 1:] = False
    pruned = sp.prune_(copy.deepcopy(m), mask)
    with pytest.raises(ValueError, match="unpruned model"):
        sp.LatencyModel.measure(pruned, batch_size=2, seq_len=8, repeats=1)


# --- budgets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet"])
@pytest.mark.parametrize("budget", [0.55, 0.7, 0.9])
@pytest.mark.parametrize("how", ["search", "allocate"])
def test_latency_budget_is_met_and_nearly_spent(family, budget, how):
    m = tiny.model(family, num_hidden_layers=4, num_attention_heads=8, intermediate_size=64)
    lm = synthetic(m, overhead=1.0, per_head=0.5, per_neuron=0.08, step=0.4, outside=1.0)
    fn = sp.search if how == "search" else sp.allocate
    mask = fn(_scores(m, seed=int(budget * 100)), m, latency=budget, latency_model=lm)
    spent = lm.predict(mask)
    assert spent <= budget * lm.dense_ms * (1 + 1e-9)
    assert budget * lm.dense_ms - spent < _step_cost(lm, mask) + 1e-9  # nothing more fits
    assert min(mask.heads_per_layer()) >= 1
    sp.prune_(m, mask)  # a valid mask


def test_latency_budget_with_multiple_of():
    m = tiny.model("bert", num_hidden_layers=4, num_attention_heads=8, intermediate_size=64)
    lm = synthetic(m, step=0.5)
    for fn in (sp.search, sp.allocate):
        mask = fn(_scores(m), m, latency=0.6, latency_model=lm, multiple_of=8)
        assert all(n % 8 == 0 for n in mask.ffn_per_layer())
        assert lm.fraction(mask) <= 0.6 + 1e-9
        assert 0.6 * lm.dense_ms - lm.predict(mask) < _step_cost(lm, mask, 8) + 1e-9


def test_a_large_per_layer_cost_makes_the_search_drop_layers():
    m = tiny.model("bert", num_hidden_layers=4, num_attention_heads=8, intermediate_size=64)
    lm = synthetic(m, overhead=20.0, per_head=0.2, per_neuron=0.02, outside=1.0)  # like a GPU at batch 1
    s = _scores(m)
    with pytest.raises(ValueError, match="min_heads=0 lets the search drop whole layers"):
        sp.search(s, m, latency=0.5, latency_model=lm)
    with pytest.raises(ValueError, match="drops whole layers"):
        sp.allocate(s, m, latency=0.5, latency_model=lm)
    mask = sp.search(s, m, latency=0.5, latency_model=lm, min_heads=0)
    assert lm.fraction(mask) <= 0.5 + 1e-9
    assert len(mask.kept_layers) == 2  # two layers' fixed part fits in half the time, three do not
    assert all(mask.head[i].any() for i in mask.kept_layers)
    sp.prune_(m, mask)


def test_no_budget_below_the_smallest_mask():
    m = tiny.model("bert")
    lm = synthetic(m)
    with pytest.raises(ValueError, match="smallest feasible budget"):
        sp.search(_scores(m), m, latency=0.1, latency_model=lm, min_heads=0)


def test_one_budget_and_bad_latency_arguments():
    m = tiny.model("bert")
    lm = synthetic(m)
    s = _scores(m)
    with pytest.raises(ValueError, match="exactly one budget"):
        sp.search(s, m, flops=0.5, latency=0.5, latency_model=lm)
    with pytest.raises(ValueError, match="Give one budget"):
        sp.allocate(s, m, flops=0.5, latency=0.5, latency_model=lm)
    with pytest.raises(ValueError, match="fraction"):
        sp.search(s, m, latency=1.5, latency_model=lm)
    with pytest.raises(TypeError, match="latency_model must be"):
        sp.allocate(s, m, latency=0.5, latency_model=42)
    with pytest.raises(ValueError, match="measured for another model"):
        sp.allocate(s, m, latency=0.5, latency_model=synthetic(tiny.model("bert", intermediate_size=64)))


def test_latency_model_from_a_saved_file(tmp_path):
    m = tiny.model("bert")
    lm = synthetic(m)
    path = lm.save(tmp_path / "lm.json")
    s = _scores(m)
    assert sp.search(s, m, latency=0.8, latency_model=str(path)) == sp.search(
        s, m, latency=0.8, latency_model=lm
    )


def test_flops_search_is_unchanged_by_the_latency_path():
    """FLOPs/params budgets keep their exact linear prices (no trimming against a latency model)."""
    m = tiny.model("bert")
    s = _scores(m)
    mask = sp.search(s, m, flops=0.5)
    assert sp.cost(m, mask=mask).encoder_flops <= 0.5 * sp.dense_cost(m).encoder_flops


# --- compress, config and card --------------------------------------------------------------------


def test_compress_to_a_latency_budget_and_the_card(tmp_path):
    m = tiny.model("bert", num_hidden_layers=4, num_attention_heads=8, intermediate_size=64)
    lm = synthetic(m, step=0.3)
    # every candidate (search, Fisher and Taylor allocation, with and without reconstruction) under latency=
    model, report = sp.compress(
        m, tiny.batches(8, batch_size=8), latency=0.6, latency_model=lm, progress=False
    )
    assert len(report.candidates) >= 4
    assert report.latency_kept == pytest.approx(lm.fraction(model)) and report.latency_kept <= 0.6 + 1e-9
    info = recorded_card(model)
    assert info.budget.startswith("60% of predicted latency (cpu:Test CPU, 2 threads, batch 32 x seq 128")
    assert sp.LatencyModel.from_dict(info.latency) == lm
    folder = sp.save_pretrained(model, tmp_path / "pruned", tokenizer=None)
    card = (folder / "README.md").read_text()
    assert "## Latency" in card and "Predicted latency (ms)" in card and "cpu:Test CPU" in card
    assert sp.LatencyModel.from_card(folder) == lm
    reloaded = sp.from_pretrained(folder)
    assert lm.fraction(reloaded) == pytest.approx(report.latency_kept)


def test_compress_config_latency_options():
    cfg = sp.CompressConfig(latency=0.5)
    assert cfg.flops is None and cfg.latency == 0.5 and cfg.latency_batch_size == 32
    assert sp.CompressConfig().flops == 0.5
    with pytest.raises(ValueError, match="exactly one budget"):
        sp.CompressConfig(flops=0.5, latency=0.5)
    with pytest.raises(ValueError, match="hidden"):
        sp.CompressConfig(latency=0.5, hidden=16)
    with pytest.raises(ValueError, match="give latency="):
        sp.CompressConfig(latency_model="lm.json")
    with pytest.raises(ValueError, match="latency_batch_size"):
        sp.CompressConfig(latency=0.5, latency_batch_size=0)
    with pytest.raises(ValueError, match="latency_model must be"):
        sp.CompressConfig(latency=0.5, latency_model=3)


def test_budget_text_states_the_latency_budget():
    assert budget_text(latency=0.5) == "50% of predicted latency"
    text = budget_text(latency=0.25, latency_setting=SETTING.describe(), layers=4)
    assert text == (
        "25% of predicted latency (cpu:Test CPU, 2 threads, batch 32 x seq 128, float32, torch 2.13.0, sdpa "
        "attention), 4 layers"
    )
    assert budget_text(flops=0.5) == "50% of encoder FLOPs (seq 128)"
    with pytest.raises(ValueError, match="LatencyModel"):
        sp.CardInfo(latency="fast")


def test_card_info_checks_the_latency_model_it_records():
    lm = synthetic(tiny.model("bert"))
    assert sp.CardInfo(latency=lm.to_dict()).latency == lm.to_dict()
    bad = lm.to_dict()
    bad["ffn_ms"] = list(reversed(bad["ffn_ms"]))
    with pytest.raises(ValueError, match="CardInfo.latency is not a valid structprune latency model"):
        sp.CardInfo(latency=bad)


def test_compress_drops_layers_under_a_tight_latency_budget_with_min_heads_0():
    m = tiny.model("bert", num_hidden_layers=4, num_attention_heads=8, intermediate_size=64)
    lm = synthetic(m, overhead=20.0, per_head=0.2, per_neuron=0.02, outside=1.0)
    batches = tiny.batches(8, batch_size=8)
    with pytest.raises(ValueError, match="min_heads=0"):
        sp.compress(copy.deepcopy(m), batches, latency=0.5, latency_model=lm, progress=False)
    # only the search meets it (allocate cannot drop layers): the allocation candidates are skipped
    model, report = sp.compress(m, batches, latency=0.5, latency_model=lm, min_heads=0, progress=False)
    assert report.latency_kept <= 0.5 + 1e-9 and len(sp.arch.view(model).structure.layers) == 2
    assert report.choice.startswith("search")
