"""Hidden-size (residual stream) pruning: surgery == the masked-LayerNorm reference, on every family x task."""

import copy

import pytest
import tiny
import torch
from torch import nn

import structprune as sp
from structprune.arch import Structure
from structprune.gates import masked_layer_norm


def _random_mask(m, seed=0, drop_layer=1, hidden_keep=0.6):
    s = sp.arch.view(m).structure
    g = torch.Generator().manual_seed(seed)
    head = torch.rand(s.num_layers, s.num_heads, generator=g) > 0.3
    ffn = torch.rand(s.num_layers, s.intermediate_size, generator=g) > 0.4
    head[:, 0] = True
    if drop_layer is not None:
        head[drop_layer], ffn[drop_layer] = False, False
    hidden = torch.rand(s.hidden_size, generator=g) < hidden_keep
    hidden[0] = True
    return sp.Mask(head, ffn, hidden)


def _outputs(m, b):
    b = {k: v for k, v in b.items() if k not in ("labels", "start_positions", "end_positions")}
    with torch.no_grad():
        return m(**b)


def _assert_same(pruned_out, ref_out, kept: torch.Tensor):
    """Outputs of the pruned model == the reference's; residual-stream outputs compared on kept dims."""
    for key, ref in ref_out.items():
        if not isinstance(ref, torch.Tensor):
            continue
        got = pruned_out[key]
        if key == "last_hidden_state":
            assert torch.equal(ref[..., ~kept], torch.zeros_like(ref[..., ~kept]))  # removed dims are 0
            ref = ref[..., kept]
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5, msg=f"output {key!r} differs")


@pytest.mark.parametrize("family", tiny.FAMILIES)
@pytest.mark.parametrize("task", list(tiny.TASKS))
def test_pruned_equals_masked_layernorm_reference_and_cost_is_exact(family, task):
    m = tiny.model(family, task)
    mask = _random_mask(m, seed=len(family) + len(task))
    b = tiny.batch(labels=None)
    dense_before = sp.dense_cost(m, seq_len=16)
    full = _outputs(m, b)
    with sp.gates.Gates.from_mask(mask).attach(m):
        ref = _outputs(m, b)
    predicted = sp.cost(m, seq_len=16, mask=mask)
    sp.prune_(m, mask)
    _assert_same(_outputs(m, b), ref, mask.hidden)
    # the mask changes the model: the reference is not a no-op
    assert not torch.allclose(
        tiny.outputs(m, b), torch.cat([t.flatten() for t in full.values()])[:1].expand(1)
    )
    real = sum(p.numel() for p in m.parameters())
    assert predicted.total_params == real
    after = sp.cost(m, seq_len=16)
    assert after.total_params == real and after.encoder_flops == predicted.encoder_flops
    assert after.hidden_size == int(mask.hidden.sum())
    dense_after = sp.dense_cost(m, seq_len=16)
    assert (dense_after.total_params, dense_after.encoder_flops) == (
        dense_before.total_params,
        dense_before.encoder_flops,
    )
    s = sp.arch.view(m).structure
    assert s.hidden == mask.hidden.nonzero().flatten().tolist()
    assert s.layers == mask.kept_layers
    assert sp.Mask.full(m) == mask & sp.Mask.full(m)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "mpnet"])
def test_tied_mlm_decoder_stays_tied(family):
    m = tiny.model(family, "mlm")
    assert m.get_output_embeddings().weight is m.get_input_embeddings().weight
    sp.prune_(m, _random_mask(m, drop_layer=None))
    assert m.get_output_embeddings().weight is m.get_input_embeddings().weight
    assert m.get_output_embeddings().in_features == sp.arch.view(m).structure.hidden_width


def test_electra_projection_keeps_the_embedding_space():
    m = tiny.model("electra", "mlm")  # embedding_size 16 != hidden 32: embeddings are not the stream
    emb = m.get_input_embeddings().weight.clone()
    mask = _random_mask(m, drop_layer=None)
    sp.prune_(m, mask)
    assert torch.equal(m.get_input_embeddings().weight, emb)
    assert m.electra.embeddings_project.out_features == int(mask.hidden.sum())
    assert m.generator_predictions.dense.in_features == int(mask.hidden.sum())


def test_pruning_twice_composes():
    m = tiny.model("bert")
    b = tiny.batch(labels=None)
    ref_model = copy.deepcopy(m)
    first = _random_mask(m, seed=1, drop_layer=None, hidden_keep=0.8)
    sp.prune_(m, first)
    second = _random_mask(m, seed=2, drop_layer=2, hidden_keep=0.8) & sp.Mask.full(m)
    with sp.gates.Gates.from_mask(second).attach(m):  # the reference also works on a hidden-pruned model
        masked = tiny.outputs(m, b)
    sp.prune_(m, second)
    torch.testing.assert_close(tiny.outputs(m, b), masked, rtol=1e-4, atol=1e-5)
    with sp.gates.Gates.from_mask(second).attach(ref_model):  # ... and equals the one-shot reference
        once = tiny.outputs(ref_model, b)
    torch.testing.assert_close(tiny.outputs(m, b), once, rtol=1e-4, atol=1e-5)
    assert sp.cost(m).total_params == sum(p.numel() for p in m.parameters())
    with pytest.raises(ValueError, match="no longer has"):
        sp.prune_(m, sp.Mask(second.head, second.ffn, torch.ones(32, dtype=torch.bool)))


def test_masked_layer_norm_is_the_sliced_layer_norm():
    ln = nn.LayerNorm(6, eps=1e-5)
    with torch.no_grad():
        ln.weight.copy_(torch.arange(1.0, 7.0))
        ln.bias.copy_(torch.arange(6.0) / 10)
    x = torch.randn(2, 3, 6)
    pos = torch.tensor([0, 2, 5])
    y = masked_layer_norm(x, ln, pos)
    sliced = nn.LayerNorm(3, eps=1e-5)
    with torch.no_grad():
        sliced.weight.copy_(ln.weight[pos])
        sliced.bias.copy_(ln.bias[pos])
    torch.testing.assert_close(y[..., pos], sliced(x[..., pos]))
    assert torch.equal(y[..., [1, 3, 4]], torch.zeros(2, 3, 3))


def test_mask_hidden_roundtrip_and_equality(tmp_path):
    m = tiny.model("bert")
    mask = _random_mask(m)
    for name in ("m.json", "m.safetensors"):
        assert sp.Mask.load(mask.save(tmp_path / name)) == mask
    plain = sp.Mask(mask.head, mask.ffn)
    assert plain == sp.Mask(mask.head, mask.ffn, torch.ones(32, dtype=torch.bool))  # None = keep all
    assert plain != mask and mask != plain
    assert (plain & mask).hidden is mask.hidden
    assert sp.Mask.full(m).hidden is None  # an unpruned model has no hidden record
    with pytest.raises(ValueError, match="no hidden dimension"):
        sp.Mask(mask.head, mask.ffn, torch.zeros(32, dtype=torch.bool))
    with pytest.raises(ValueError, match="original hidden size"):
        sp.prune_(m, sp.Mask(mask.head, mask.ffn, torch.ones(31, dtype=torch.bool)))


def test_old_structure_records_load_without_hidden():
    m = tiny.model("bert")
    record = sp.arch.view(m).structure.to_dict()
    del record["hidden"]
    s = Structure.from_dict(record)
    assert s.hidden is None and s.hidden_width == 32 and not s.is_pruned
    del record["layers"]
    with pytest.raises(ValueError, match="layers"):
        Structure.from_dict(record)


def test_allocate_hidden_keeps_the_best_scored_dimensions():
    m = tiny.model("bert", intermediate_size=64, num_hidden_layers=4)
    scores = sp.score(m, tiny.batches(), method="taylor", progress=False)
    with pytest.raises(ValueError, match="score_hidden"):
        sp.allocate(scores, m, hidden=16)
    scores.hidden = torch.arange(32.0)
    mask = sp.allocate(scores, m, hidden=12)
    assert mask.hidden.nonzero().flatten().tolist() == list(range(20, 32))
    assert bool(mask.head.all()) and bool(mask.ffn.all())  # a shape alone keeps every head and neuron
    assert int(sp.allocate(scores, m, hidden=0.5).hidden.sum()) == 16
    for bad in (33, 0, True, "16"):
        with pytest.raises(ValueError, match="hidden"):
            sp.allocate(scores, m, hidden=bad)
    mask = sp.allocate(scores, m, hidden=20, flops=0.3)
    c = sp.cost(m, mask=mask)
    assert c.hidden_size == 20
    assert 0.25 < c.encoder_flops / sp.dense_cost(m).encoder_flops <= 0.3 + 1e-9
    mask = sp.allocate(scores, m, hidden=20, params=0.3)
    assert 0.25 < sp.cost(m, mask=mask).encoder_params / sp.dense_cost(m).encoder_params <= 0.3 + 1e-9


@pytest.mark.parametrize("method", ["activation", "taylor"])
def test_score_hidden_shape_and_no_trace(method):
    m = tiny.model("roberta")
    m.train()
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    h = sp.score_hidden(m, tiny.batches(), method=method, progress=False)
    assert h.shape == (32,) and (h >= 0).all() and h.sum() > 0
    assert m.training and flags == {n: p.requires_grad for n, p in m.named_parameters()}
    m.eval()
    mask = sp.allocate(sp.Scores(torch.ones(3, 4), torch.ones(3, 48), hidden=h), m, hidden=20)
    sp.prune_(m, mask)
    again = sp.score_hidden(m, tiny.batches(), method=method, progress=False)
    assert again.shape == (32,) and bool((again[~mask.hidden] == 0).all()) and again[mask.hidden].sum() > 0
    with pytest.raises(ValueError, match="Unknown hidden scoring"):
        sp.score_hidden(m, tiny.batches(), method="magnitude")


def test_a_hidden_pruned_model_trains():
    m = tiny.model("bert")
    sp.prune_(m, _random_mask(m))
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    b = tiny.batch()
    before = m(**b).loss.item()
    for _ in range(5):
        opt.zero_grad()
        m(**b).loss.backward()
        opt.step()
    assert m(**b).loss.item() < before


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_shaped_student_saves_reloads_and_exports(family, tmp_path):
    """A student with dropped layers, a pruned residual stream and pruned heads/FFN round-trips through
    sp.save_pretrained / sp.from_pretrained and ONNX export with identical outputs."""
    m = tiny.model(family, "seq-cls")
    sp.prune_(m, _random_mask(m, seed=3))
    b = tiny.batch(labels=None)
    expected = tiny.outputs(m, b)
    folder = sp.save_pretrained(m, tmp_path / "student", tokenizer=None, card=False)
    loaded = sp.from_pretrained(folder)
    assert sp.arch.view(loaded).structure == sp.arch.view(m).structure
    torch.testing.assert_close(tiny.outputs(loaded, b), expected, rtol=1e-5, atol=1e-6)
    if family not in ("roberta", "xlm-roberta"):  # same layout as bert: export once per layout
        sp.export_onnx(loaded, tmp_path / "student.onnx")  # checks onnxruntime == PyTorch on two batch shapes


@pytest.mark.slow
def test_real_teacher_to_a_tinybert_shape_is_exact_and_round_trips(sst2_teacher, sst2_glue_dir, tmp_path):
    """The SST-2 MiniLM teacher cut to 3 layers x hidden 256 (+ heads/FFN) to <= 10% FLOPs: pruned ==
    the masked reference, cost == real parameter count, save/reload/ONNX keep the logits."""
    import json

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = sst2_teacher
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    rows = [json.loads(line) for line in (sst2_glue_dir / "SST-2/train.jsonl").open()][:32]
    batches = []
    for i in range(0, 32, 16):
        enc = tok([r["sentence"] for r in rows[i : i + 16]], padding=True, return_tensors="pt")
        batches.append({**enc, "labels": torch.tensor([r["label"] for r in rows[i : i + 16]])})
    scores = sp.score_shape(model, batches, progress=False)
    mask = sp.allocate(scores, model, layers=3, hidden=256, flops=0.1, multiple_of=16)
    b = {k: v for k, v in batches[0].items() if k != "labels"}
    with torch.no_grad(), sp.gates.Gates.from_mask(mask).attach(model):
        ref = model(**b).logits
    predicted = sp.cost(model, mask=mask)
    sp.prune_(model, mask)
    with torch.no_grad():
        torch.testing.assert_close(model(**b).logits, ref, rtol=1e-4, atol=1e-4)
    assert predicted.total_params == sum(p.numel() for p in model.parameters())
    assert sp.cost(model).encoder_flops <= 0.1 * sp.dense_cost(model).encoder_flops
    loaded = sp.from_pretrained(sp.save_pretrained(model, tmp_path / "tiny", tokenizer=tok, card=False))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**b).logits, ref, rtol=1e-4, atol=1e-4)
    sp.export_onnx(loaded, tmp_path / "tiny.onnx")
