import pytest
import tiny
import torch

import structprune as sp
from structprune.scoring import functional as fn


def test_head_weight_norms_on_small_tensors():
    d, heads, hs = 3, 2, 2
    q = torch.zeros(heads * hs, d)
    k, v = q.clone(), q.clone()
    o = torch.zeros(d, heads * hs)
    q[2:4] = 1.0  # head 1 only
    o[:, 0:2] = 2.0  # head 0 only
    l2 = fn.head_weight_norms(q, k, v, o, hs, p=2)
    torch.testing.assert_close(l2, torch.tensor([(6 * 4.0) ** 0.5, 6**0.5]))
    l1 = fn.head_weight_norms(q, k, v, o, hs, p=1)
    torch.testing.assert_close(l1, torch.tensor([12.0, 6.0]))


def test_neuron_norms_and_gate_gradient_reductions():
    up = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    down = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(fn.neuron_weight_norms(up, down), torch.tensor([5.0, 1.0]))
    grad = torch.tensor([[1.0, -2.0], [3.0, 2.0]])  # [B=2, units=2]
    torch.testing.assert_close(fn.taylor_from_gate_grads(grad), torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(fn.fisher_from_gate_grads(grad), torch.tensor([10.0, 8.0]))


def test_output_norms_respect_padding():
    x = torch.ones(1, 2, 4)  # [B, T, H*d] with H=2, d=2
    w = torch.ones(3, 4)
    mask = torch.tensor([[1, 0]])
    full = fn.head_output_norms(x, w, 2)
    masked = fn.head_output_norms(x, w, 2, mask)
    torch.testing.assert_close(masked * 2, full)
    torch.testing.assert_close(fn.neuron_output_norms(x, w, mask) * 2, fn.neuron_output_norms(x, w))


def test_fisher_per_example_gradients_match_one_example_at_a_time():
    m = tiny.model("bert")
    b = tiny.batch(batch_size=3)
    together = sp.score(m, [b], method="fisher", progress=False)
    singles = [{k: v[i : i + 1] for k, v in b.items()} for i in range(3)]
    separately = sp.score(m, singles, method="fisher", progress=False)
    torch.testing.assert_close(together.head, separately.head, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(together.ffn, separately.ffn, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("method", ["magnitude", "taylor", "fisher", "activation", "random"])
def test_scoring_leaves_no_trace(method):
    m = tiny.model("roberta")
    m.train()
    m.classifier.dense.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    s = sp.score(m, tiny.batches(), method=method, progress=False)
    assert s.head.shape == (3, 4) and s.ffn.shape == (3, 48)
    assert (s.head >= 0).all() and (s.ffn >= 0).all() and s.head.sum() > 0
    assert m.training
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    assert all(p.grad is None for p in m.parameters())
    for mod in m.modules():
        assert not mod._forward_pre_hooks and not mod._forward_hooks


def test_scores_differ_by_method_and_random_is_seeded():
    m = tiny.model("bert")
    mag = sp.score(m, method="magnitude")
    l1 = sp.score(m, method="magnitude", norm="l1")
    assert not torch.allclose(mag.head, l1.head)
    r0 = sp.score(m, method="random", seed=0)
    assert torch.equal(r0.head, sp.score(m, method="random", seed=0).head)
    assert not torch.equal(r0.head, sp.score(m, method="random", seed=1).head)
    taylor = sp.score(m, tiny.batches(), method="taylor", progress=False)
    fisher = sp.score(m, tiny.batches(), method="fisher", progress=False)
    assert not torch.allclose(taylor.head / taylor.head.sum(), fisher.head / fisher.head.sum())


def test_label_free_gradient_scoring_uses_own_predictions():
    m = tiny.model("bert")
    s = sp.score(m, tiny.batches(labels=None), method="fisher", label_free=True, progress=False)
    assert s.head.sum() > 0 and torch.isfinite(s.ffn).all()
    qa = tiny.model("bert", "qa")
    s = sp.score(qa, tiny.batches(labels=None), method="taylor", label_free=True, progress=False)
    assert s.ffn.sum() > 0


def test_gradient_scoring_for_token_and_qa_heads_with_labels():
    for task, labels in (("token-cls", "token-cls"), ("qa", "qa")):
        m = tiny.model("electra", task)
        s = sp.score(m, tiny.batches(labels=labels), method="fisher", progress=False)
        assert s.head.sum() > 0


def test_scores_of_a_pruned_model_are_zero_where_structure_is_gone():
    m = tiny.model("distilbert")
    mask = sp.Mask.full(m)
    mask.head[0, :2] = False
    mask.ffn[2, 10:] = False
    sp.prune_(m, mask)
    for method in ("magnitude", "taylor", "activation", "random"):
        s = sp.score(m, tiny.batches(), method=method, progress=False)
        assert (s.head[0, :2] == 0).all() and (s.ffn[2, 10:] == 0).all()
        assert (s.head[0, 2:] > 0).all()


def test_bad_scoring_input():
    m = tiny.model("bert")
    with pytest.raises(ValueError, match="no 'labels'"):
        sp.score(m, tiny.batches(labels=None), method="taylor", progress=False)
    with pytest.raises(ValueError, match="empty"):
        sp.score(m, [], method="fisher", progress=False)
    with pytest.raises(ValueError, match="needs data"):
        sp.score(m, None, method="activation")
    with pytest.raises(ValueError, match="Unknown scoring method"):
        sp.score(m, tiny.batches(), method="hessian")
    with pytest.raises(TypeError, match="dict of model inputs"):
        sp.score(m, [torch.zeros(2, 3)], method="taylor", progress=False)
    with pytest.raises(ValueError, match="logits"):
        sp.score(
            tiny.model("bert", "base"),
            tiny.batches(labels=None),
            method="taylor",
            label_free=True,
            progress=False,
        )
    regression = tiny.model("bert", num_labels=1)
    with pytest.raises(ValueError, match="regression"):
        sp.score(regression, tiny.batches(labels=None), method="fisher", label_free=True, progress=False)
    # the model is untouched after a failure
    assert not any(mod._forward_pre_hooks for mod in m.modules())
    assert all(p.requires_grad for p in m.parameters())
