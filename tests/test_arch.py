import pytest
import tiny
import torch
from transformers import AutoModel, ErnieConfig, GPT2Config

import structprune as sp
from structprune.arch.spec import _REGISTRY


@pytest.mark.parametrize("family", tiny.FAMILIES)
@pytest.mark.parametrize("task", list(tiny.TASKS))
def test_view_resolves_every_family_and_task_head(family, task):
    m = tiny.model(family, task)
    v = sp.arch.view(m)
    assert len(v.layers) == 3
    for lv in v.layers:
        # q, k, v blocks of 4 heads x 8 (one fused Linear of 3 blocks in ModernBERT), o's input
        assert [w.shape for w in lv.head_row_weights()[:3]] == [(32, 32)] * 3 and lv.o.in_features == 32
        # 48 neurons: one up block, or the input and gate halves of a gated MLP (ModernBERT)
        assert [w.shape for w in lv.up_row_weights()] == [
            (48, 32)
        ] * lv.up_blocks and lv.down.in_features == 48
    assert v.structure.heads == [[0, 1, 2, 3]] * 3
    assert not v.structure.is_pruned


def test_unknown_family_names_supported_and_how_to_register():
    m = AutoModel.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(TypeError) as err:
        sp.arch.view(m)
    msg = str(err.value)
    assert "gpt2" in msg and "bert" in msg and "mpnet" in msg and "register_architecture" in msg


def test_unregistered_family_with_bert_layout_works_without_new_code():
    cfg = ErnieConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40
    )
    m = AutoModel.from_config(cfg).eval()
    assert cfg.model_type not in sp.arch.supported_families()
    mask = sp.Mask.full(m)
    mask.head[0, :2] = False
    mask.ffn[1, ::2] = False
    b = {"input_ids": torch.randint(0, 50, (2, 5))}
    with torch.no_grad(), sp.gates.Gates.from_mask(mask).attach(m):
        ref = m(**b).last_hidden_state
    sp.prune_(m, mask)
    with torch.no_grad():
        out = m(**b).last_hidden_state
    torch.testing.assert_close(out, ref)


def test_model_without_attention_layers_is_refused():
    with pytest.raises(TypeError, match="not a Hugging Face"):
        sp.arch.view(torch.nn.Linear(3, 3))


def test_registered_spec_with_wrong_layout_is_refused():
    m = tiny.model("bert", "base")
    del m.encoder.layer  # a model with no encoder layers where the spec expects them
    with pytest.raises(TypeError, match="no encoder layers"):
        sp.arch.view(m)


def test_register_architecture_refuses_silent_overwrite():
    spec = sp.ArchSpec(name="bert", layers="x", q="q", k="k", v="v", o="o", up="u", down="d", attn="a")
    with pytest.raises(ValueError, match="already registered"):
        sp.register_architecture(spec)
    custom = sp.ArchSpec(
        name="my-family",
        layers="x",
        q="q",
        k="k",
        v="v",
        o="o",
        up="u",
        down="d",
        attn="a",
        model_types=("my-family",),
    )
    try:
        assert sp.register_architecture(custom) is custom
        assert "my-family" in sp.arch.supported_families()
    finally:
        _REGISTRY.pop("my-family", None)
