"""What ModernBERT and DeBERTa-v2/v3 add to the layouts of the other families, beyond the conformance suite
(``test_surgery.py``, ``test_hidden.py``, ``test_depth.py``, ``test_checkpoint.py`` run every family):
fused q/k/v and gated MLPs, a first layer unlike the others, per-layer attention types, disentangled
attention with its variants, the cost model against counted FLOPs, the multiple-choice heads,
reconstruction's layer replay and the ONNX / Hub paths of a first-layer-dropped ModernBERT."""

from __future__ import annotations

import copy
import json

import pytest
import tiny
import torch
from helpers import NO_STRUCTPRUNE_SCRIPT, nonuniform_mask, run_without_structprune
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForMultipleChoice, AutoModelForSequenceClassification

import structprune as sp
from structprune import gates
from structprune.allocation.cost import head_params, neuron_flops, neuron_params, units
from structprune.checkpoint import registry
from structprune.recovery.distill import DistillConfig, distill, flops_fraction
from structprune.recovery.reconstruct.run import _reference_targets, _Side
from structprune.run.compress import compress
from structprune.surgery import slice_vocab_


def _masked_then_pruned(m, mask, b):
    with sp.gates.Gates.from_mask(mask).attach(m):
        ref = tiny.outputs(m, b)
    predicted = sp.cost(m, seq_len=16, mask=mask)
    sp.prune_(m, mask)
    torch.testing.assert_close(tiny.outputs(m, b), ref, rtol=1e-5, atol=1e-6)
    assert predicted.total_params == sum(p.numel() for p in m.parameters())
    assert sp.cost(m, seq_len=16).encoder_flops == predicted.encoder_flops
    return ref


def _drop_first_layer(m) -> sp.Mask:
    mask = nonuniform_mask(m)  # layer 1 dropped
    mask.head[0], mask.ffn[0] = False, False  # and layer 0
    mask.head[1, 1:], mask.ffn[1, :20] = True, True  # layer 1 kept (heads 1-3, 20 neurons)
    return mask


# --- the slicing itself -------------------------------------------------------------------------------
def test_fused_qkv_and_gated_mlp_keep_each_unit_in_every_block():
    m = tiny.model("modernbert")
    lv = sp.arch.view(m).layers[0]
    qkv, wi = lv.q.weight.clone(), lv.up.weight.clone()  # [3 * 4 * 8, 32], [2 * 48, 32]
    mask = sp.Mask.full(m)
    mask.head[0] = torch.tensor([False, True, False, True])
    mask.ffn[0, 10:] = False
    sp.prune_(m, mask)
    lv = sp.arch.view(m).layers[0]
    heads = [1, 3]
    want = torch.cat([qkv[b * 32 + h * 8 : b * 32 + (h + 1) * 8] for b in range(3) for h in heads])
    assert torch.equal(lv.q.weight, want) and lv.q is lv.k is lv.v
    assert torch.equal(lv.up.weight, torch.cat([wi[:10], wi[48:58]]))  # neuron j: rows j and 48 + j
    assert lv.up.out_features == 20 and lv.down.in_features == 10


def test_modernbert_first_layer_dropped_keeps_its_norm_and_attention_types():
    m = tiny.model("modernbert", num_hidden_layers=4)  # layer types: global, local, local, global
    assert m.config.layer_types == [
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "full_attention",
    ]
    assert isinstance(m.base_model.layers[0].attn_norm, torch.nn.Identity)
    mask = sp.Mask.full(m)
    mask.head[0], mask.ffn[0] = False, False
    mask.head[2], mask.ffn[2] = False, False
    b = tiny.batch()
    _masked_then_pruned(m, mask, b)
    assert m.config.layer_types == ["sliding_attention", "full_attention"]  # the kept layers' entries
    assert m.config.num_hidden_layers == 2
    assert isinstance(m.base_model.layers[0].attn_norm, torch.nn.LayerNorm)  # original layer 1's norm
    assert (
        sp.dense_cost(m).total_params
        == sp.dense_cost(tiny.model("modernbert", num_hidden_layers=4)).total_params
    )
    assert not registry.is_stock(
        sp.arch.view(m).structure, sp.arch.view(m).spec
    )  # a stock layer 0 has no norm


def test_modernbert_first_layer_dropped_loads_on_every_path(tmp_path):
    model = tiny.model("modernbert")
    sp.prune_(model, _drop_first_layer(model))
    b = tiny.batch()
    want = tiny.outputs(model, b)
    folder = sp.save_pretrained(model, tmp_path / "ckpt", tokenizer=None, card=False)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "structprune-modernbert" and config["structprune"]["layers"] == "1-2"
    assert config["layer_types"] == ["sliding_attention", "sliding_attention"]
    for loaded in (
        sp.from_pretrained(folder),
        AutoModelForSequenceClassification.from_pretrained(folder).eval(),
    ):
        assert isinstance(loaded.base_model.layers[0].attn_norm, torch.nn.LayerNorm)
        assert torch.equal(tiny.outputs(loaded, b), want)
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    ref = tmp_path / "ref.safetensors"
    save_file({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "logits": logits}, ref)
    (tmp_path / "cases.json").write_text(json.dumps([{"dir": str(folder), "ref": str(ref), "stock": False}]))
    out = tmp_path / "out.json"
    proc = run_without_structprune(NO_STRUCTPRUNE_SCRIPT, [str(tmp_path / "cases.json"), str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())[str(folder)]
    assert result["max_diff"] < 1e-5 and result["module"].endswith("modeling_structprune"), result


def test_modernbert_eager_attention_and_sdpa_agree_on_real_tokens():
    b = tiny.batch(labels=None)
    eager = tiny.model("modernbert", "token-cls", attn_implementation="eager")
    sdpa = tiny.model("modernbert", "token-cls")
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    mask = nonuniform_mask(eager)
    ref = _masked_then_pruned(eager, mask, b)  # pruned == masked under eager attention too
    sp.prune_(sdpa, mask)
    real = b["attention_mask"].bool()
    with torch.no_grad():
        a = eager(**b).logits
        c = sdpa(**b).logits
    torch.testing.assert_close(a[real], c[real], rtol=1e-5, atol=1e-6)
    assert ref.numel() == a.numel()


# --- DeBERTa-v2/v3 variants ----------------------------------------------------------------------------
DEBERTA_VARIANTS = {
    "v3-shared-keys": dict(share_att_key=True),  # DeBERTa-v3: q/k project the position table
    "no-table-norm": dict(norm_rel_ebd="none"),  # the raw table: hidden pruning must still zero its columns
    "c2p-only": dict(pos_att_type=["c2p"]),
    "absolute-positions": dict(position_biased_input=True, type_vocab_size=2, relative_attention=False),
    "embedding-projection": dict(embedding_size=16),  # embed_proj: the embedding space stays whole
}


@pytest.mark.parametrize("variant", list(DEBERTA_VARIANTS))
@pytest.mark.parametrize("task", ["seq-cls", "mlm"])
def test_deberta_variants_prune_equal_to_the_reference_and_round_trip(variant, task, tmp_path):
    m = tiny.model("deberta-v2", task, **DEBERTA_VARIANTS[variant])
    mask = nonuniform_mask(m)
    mask.hidden = torch.ones(32, dtype=torch.bool)
    mask.hidden[[1, 5, 7, 20, 31]] = False
    b = tiny.batch(labels=None)
    full = tiny.outputs(m, b)
    ref = _masked_then_pruned(m, mask, b)
    assert not torch.allclose(ref, full)
    table = sp.arch.view(m).rel_table
    if table is not None:
        assert table.embedding_dim == 27  # the table lives in the hidden space
    folder = sp.save_pretrained(m, tmp_path / "ckpt", tokenizer=None, card=False)
    assert torch.equal(tiny.outputs(sp.from_pretrained(folder), b), tiny.outputs(m, b))


def test_deberta_mlm_head_tied_by_matmul():
    m = tiny.model("deberta-v2", "mlm", legacy=False)  # logits = head(h) @ word_embeddings.T
    mask = nonuniform_mask(m)
    mask.hidden = torch.rand(32, generator=torch.Generator().manual_seed(0)) < 0.7
    _masked_then_pruned(m, mask, tiny.batch(labels=None))
    assert m.lm_predictions.lm_head.dense.out_features == int(mask.hidden.sum())


def test_deberta_without_the_table_layer_norm_needs_the_zeroed_reference(monkeypatch):
    """With norm_rel_ebd='none' no LayerNorm zeroes the removed columns of the position table in the masked
    model; the reference's pre-hooks on the head projections do, and without them it would be wrong."""
    m = tiny.model("deberta-v2", norm_rel_ebd="none")
    with torch.no_grad():
        sp.arch.view(m).rel_table.weight.mul_(20)  # a table that matters
    mask = sp.Mask.full(m)
    mask.hidden = torch.ones(32, dtype=torch.bool)
    mask.hidden[:8] = False
    b = tiny.batch(labels=None)
    with sp.gates.Gates.from_mask(mask).attach(m):
        ref = tiny.outputs(m, b)
    with monkeypatch.context() as patch:
        patch.setattr(gates, "_zero_removed_input", lambda pos: lambda module, args: None)
        with sp.gates.Gates.from_mask(mask).attach(m):
            unzeroed = tiny.outputs(m, b)
    v = sp.arch.view(m)
    assert all(not lin._forward_pre_hooks for lv in v.layers for lin, _ in lv.head_rows)  # hooks removed
    sp.prune_(m, mask)
    torch.testing.assert_close(tiny.outputs(m, b), ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(unzeroed, ref, rtol=1e-3, atol=1e-4)


def test_deberta_convolution_pins_the_first_layer_and_the_hidden_size():
    m = tiny.model("deberta-v2", conv_kernel_size=3)  # DeBERTa-v2 xlarge's layout
    assert sp.arch.view(m).first_layer_pinned()
    _masked_then_pruned(copy.deepcopy(m), nonuniform_mask(m), tiny.batch())  # heads, neurons, layer 1
    state = copy.deepcopy(m.state_dict())
    drop_first = sp.Mask.full(m)
    drop_first.head[0], drop_first.ffn[0] = False, False
    with pytest.raises(ValueError, match="first layer .* cannot be dropped"):
        sp.prune_(m, drop_first)
    hidden = sp.Mask.full(m)
    hidden.hidden = torch.ones(32, dtype=torch.bool)
    hidden.hidden[3] = False
    with pytest.raises(ValueError, match="hidden pruning cannot resize"):
        sp.prune_(m, hidden)
    assert all(torch.equal(state[k], t) for k, t in m.state_dict().items())
    assert not hasattr(m.config, "structprune")


@pytest.mark.parametrize(
    "family, overrides", [("modernbert", {}), ("deberta-v2", {}), ("deberta-v2", dict(legacy=False))]
)
def test_vocabulary_slicing_keeps_the_tied_decoders_and_vocabulary_biases(family, overrides):
    m = tiny.model(family, "mlm", **overrides)
    keep = torch.tensor([0, 1, 2, 3, 4, *range(10, 60)])
    ids = torch.randint(10, 60, (2, 7))
    with torch.no_grad():
        want = m(input_ids=ids).logits[..., keep]
    slice_vocab_(m, keep)
    with torch.no_grad():
        got = m(input_ids=ids - 5).logits  # token 10 + i is now token 5 + i
    assert torch.equal(got, want) and m.config.vocab_size == 55
    assert m.get_input_embeddings().weight.shape == (55, 32)


# --- the cost model against FLOPs counted by torch ------------------------------------------------------
@pytest.mark.parametrize(
    "family, overrides",
    [
        ("modernbert", dict(attn_implementation="eager")),  # FlopCounterMode does not count SDPA on CPU
        ("deberta-v2", {}),
        ("deberta-v2", DEBERTA_VARIANTS["v3-shared-keys"]),
        ("deberta-v2", dict(pos_att_type=["p2c"], share_att_key=True)),  # q and k both project the table
        ("deberta-v2", DEBERTA_VARIANTS["c2p-only"]),
    ],
)
def test_encoder_flops_equal_the_matrix_products_torch_counts(family, overrides):
    m = tiny.model(family, "base", **overrides)
    ids = torch.randint(5, tiny.VOCAB, (1, 16))
    for step in ("dense", "pruned"):
        if step == "pruned":
            sp.prune_(m, nonuniform_mask(m))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(input_ids=ids)
        assert sp.cost(m, seq_len=16).encoder_flops == counter.get_total_flops(), step


def test_gated_and_disentangled_units_are_priced_as_they_cost():
    gated = units(sp.arch.view(tiny.model("modernbert")))
    assert (gated.qkv, gated.row_biases, gated.up_blocks, gated.up_bias) == (3, 0, 2, 0)
    assert neuron_flops(32, 16, gated) == 3 * 2 * 16 * 32  # two up rows, one down column
    assert neuron_params(32, gated) == 3 * 32
    deberta = units(sp.arch.view(tiny.model("deberta-v2")))
    assert (deberta.extra_rows, deberta.rel_terms, deberta.rel_rows, deberta.table_projections) == (
        2,
        2,
        16,
        2,
    )
    assert head_params(32, 8, deberta) == 6 * 32 * 8 + 5 * 8  # q/k/v/pos_key/pos_query/o


@pytest.mark.parametrize("family", ["modernbert", "deberta-v2"])
@pytest.mark.parametrize("budget", ["flops", "params"])
def test_allocate_meets_budgets(family, budget):
    m = tiny.model(family)
    scores = sp.score(m, tiny.batches(2), method="taylor", progress=False)
    for fraction in (0.3, 0.5, 0.8):
        mask = sp.allocate(scores, m, seq_len=16, **{budget: fraction})
        kept = getattr(sp.cost(m, seq_len=16, mask=mask), f"encoder_{budget}")
        dense = getattr(sp.dense_cost(m, seq_len=16), f"encoder_{budget}")
        assert fraction - 0.12 < kept / dense <= fraction + 1e-9, (fraction, kept / dense)
    assert sp.allocate(scores, m, seq_len=16, **{budget: 1.0}) == sp.Mask.full(m)


# --- multiple choice --------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_multiple_choice_head_prunes_and_round_trips(family, tmp_path):
    torch.manual_seed(0)
    m = AutoModelForMultipleChoice.from_config(tiny.config(family)).eval()
    flat = tiny.batch(batch_size=6, labels=None)
    b = {k: v.view(2, 3, -1) for k, v in flat.items()}  # 2 questions x 3 choices
    mask = nonuniform_mask(m)
    _masked_then_pruned(m, mask, b)
    assert tiny.outputs(m, b).shape == (6,)
    folder = sp.save_pretrained(m, tmp_path / "mc", tokenizer=None, card=False)
    reloaded = sp.from_pretrained(folder)
    assert all(
        torch.equal(v, reloaded.state_dict()[k]) for k, v in m.state_dict().items()
    )  # the same weights
    # and the same outputs up to float rounding: with transformers 5.25 the 1-output classifier of the
    # reloaded model can take another matmul kernel than the pruned one (last-bit differences, ~1e-9)
    torch.testing.assert_close(tiny.outputs(reloaded, b), tiny.outputs(m, b), rtol=0, atol=1e-6)


# --- reconstruction ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "distilbert", "mpnet", "modernbert", "deberta-v2"])
def test_reconstruction_replays_each_layer_and_matches_the_block_sums(family):
    """Layer by layer, the replay gives the model's own layer outputs (ModernBERT's global and sliding
    layers get different masks), and the FFN target is the block sum the layer ends with: its output in a
    pre-norm layer (ModernBERT), the input of its last LayerNorm in a post-norm one."""
    m = tiny.model(family, num_hidden_layers=4)
    batches = tiny.batches(2, labels=None)
    side = _Side(m, None)
    side.capture(batches)
    outputs: list[torch.Tensor] = []
    hooks = [
        lv.module.register_forward_hook(
            lambda mod, a, out: outputs.append(out[0] if isinstance(out, tuple) else out)
        )
        for lv in side.view.layers
    ]
    try:
        for b, batch in enumerate(batches):
            outputs.clear()
            with torch.no_grad():
                m(**batch)
            h = side.first_input(b)
            for i, lv in enumerate(side.view.layers):
                with torch.no_grad():
                    h = side.run(lv.orig, b, h)
                torch.testing.assert_close(h, outputs[i], rtol=1e-5, atol=1e-5)
    finally:
        for hook in hooks:
            hook.remove()
    real = [batch["attention_mask"].bool() for batch in batches]
    h = [side.first_input(b) for b in range(len(batches))]
    for lv in side.view.layers:
        layer_in = list(h)
        targets = _reference_targets(side, lv.orig, h, real)  # moves h to the layer's outputs
        for b in range(len(batches)):
            with torch.no_grad():
                block_sum = (
                    targets["down"][b] if side.view.spec.pre_norm else lv.norms[-1](targets["down"][b])
                )
            torch.testing.assert_close(block_sum, h[b][real[b]], rtol=1e-5, atol=1e-5)
            assert not torch.allclose(targets["o"][b], layer_in[b][real[b]])  # attention adds something


# --- the whole pipeline -----------------------------------------------------------------------------------
def _rows(n=32, seed=0, seq_len=10):
    """A learnable toy task (the label is the second token id modulo 3), some rows padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, tiny.VOCAB, (n, seq_len), generator=g)
    mask = torch.ones(n, seq_len, dtype=torch.long)
    mask[::3, seq_len - 2 :] = 0
    rows = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": ids[i, 1] % 3} for i in range(n)]
    return DataLoader(rows, batch_size=8)


@pytest.mark.filterwarnings("ignore:Only .* calibration examples")
@pytest.mark.parametrize("family", ["modernbert", "deberta-v2"])
def test_compress_then_distill_depth_and_width_with_every_loss(family, tmp_path):
    """Fisher scores, the constrained search and reconstruction (``compress``); then gradual depth and
    width pruning while distilling logits, hidden states and attention maps; then a round trip."""
    teacher = tiny.model(family)
    model, report = compress(copy.deepcopy(teacher), _rows(), flops=0.6, progress=False)
    assert report.flops_kept <= 0.6
    assert report.reconstruction.error_after < report.reconstruction.error_before
    assert sp.Mask.full(model) == report.mask
    cfg = DistillConfig(
        task="mnli", progress=False, num_epochs=2, learning_rate=2e-3, warmup_ratio=0.0, hidden_weight=1.0,
        attention_weight=1.0, prune=dict(to=0.3, steps=2, end=0.6, batches=2, layers=2, hidden=24),
    )  # fmt: skip
    student, history = distill(copy.deepcopy(teacher), teacher, _rows(), _rows(seed=1), cfg)
    st = sp.arch.view(student).structure
    assert len(st.layers) == 2 and st.hidden_width == 24 and flops_fraction(student) <= 0.3 + 0.02
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history if "loss" in r)
    assert any("attention" in r for r in history)
    again = sp.from_pretrained(sp.save_pretrained(student, tmp_path / "s", tokenizer=None, card=False))
    b = tiny.batch(labels=None)
    assert torch.allclose(tiny.outputs(again, b), tiny.outputs(student, b), atol=1e-6)
