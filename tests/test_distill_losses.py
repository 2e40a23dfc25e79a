"""Pure distillation losses on small tensors, and DistillConfig validation."""

import math

import pytest
import torch
import torch.nn.functional as F

from structprune.recovery.distill import DistillConfig
from structprune.recovery.distill.losses import attention_kd, hidden_mse, logit_kd, task_loss


def test_task_loss_classification_and_regression():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, -100])
    assert torch.allclose(task_loss(logits, labels), F.cross_entropy(logits, labels, ignore_index=-100))
    reg, target = torch.randn(4, 1), torch.randn(4)
    assert torch.allclose(task_loss(reg, target), F.mse_loss(reg.squeeze(-1), target))


def test_logit_kd_is_kl_at_temperature_times_t_squared():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    for temp in (1.0, 2.0, 4.0):
        p_t = F.softmax(t / temp, -1)
        manual = (p_t * (p_t.log() - F.log_softmax(s / temp, -1))).sum(-1).mean() * temp**2
        assert torch.allclose(logit_kd(s, t, temp), manual, atol=1e-6)
        kl = F.kl_div(F.log_softmax(s / temp, -1), p_t, reduction="batchmean") * temp**2
        assert torch.allclose(logit_kd(s, t, temp), kl, atol=1e-6)
    assert logit_kd(t, t, 3.0).abs() < 1e-6
    assert logit_kd(s, t, 2.0) > 0


def test_logit_kd_gradient_reaches_student_only():
    s = torch.randn(3, 2, requires_grad=True)
    t = torch.randn(3, 2, requires_grad=True)
    logit_kd(s, t, 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_logit_kd_regression_is_mse_and_token_mask():
    s, t = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [4.0]])
    assert math.isclose(float(logit_kd(s, t, 5.0)), (1 + 4) / 2)
    tok_s, tok_t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    changed = tok_s.clone()
    changed[0, 2] += 10  # a padded position: must not matter
    changed[1, 1:] -= 5
    assert torch.allclose(logit_kd(tok_s, tok_t, 2.0, mask), logit_kd(changed, tok_t, 2.0, mask))
    with pytest.raises(ValueError, match="same number of labels"):
        logit_kd(torch.randn(2, 3), torch.randn(2, 2))


def test_hidden_mse_layer_map_mask_and_projection():
    g = torch.Generator().manual_seed(1)
    teacher = [torch.randn(2, 5, 8, generator=g) for _ in range(4)]
    student = [teacher[0], teacher[2] + 1.0]  # student layer 1 copies teacher layer 2 plus 1
    assert hidden_mse(student, teacher, [(0, 0)]) == 0
    assert torch.allclose(hidden_mse(student, teacher, [(1, 2)]), torch.tensor(1.0))
    assert torch.allclose(hidden_mse(student, teacher, [(0, 0), (1, 2)]), torch.tensor(0.5))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[:, 3:] = 0
    noisy = [student[0].clone()]
    noisy[0][:, 3:] += 100.0  # only padding differs
    assert hidden_mse(noisy, teacher, [(0, 0)], mask) == 0
    assert hidden_mse(noisy, teacher, [(0, 0)]) > 1000
    narrow = [torch.randn(2, 5, 4)]
    with pytest.raises(ValueError, match="projection"):
        hidden_mse(narrow, teacher, [(0, 0)])
    proj = torch.nn.Linear(4, 8)
    loss = hidden_mse(narrow, teacher, [(0, 0)], project=proj)
    loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def _probs(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=g), -1)


def test_attention_kd_uses_the_kept_heads():
    teacher = [_probs(2, 4, 5, 5, seed=0)]
    student = [teacher[0][:, [1, 3]].clone()]  # the student kept teacher heads 1 and 3
    assert attention_kd(student, teacher, [(0, 0)], [[1, 3]]).abs() < 1e-6
    assert attention_kd(student, teacher, [(0, 0)], [[0, 2]]) > 1e-3
    with pytest.raises(ValueError, match="head map"):
        attention_kd(student, teacher, [(0, 0)], [[0, 1, 2]])
    # padded query rows do not count
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    off = [student[0].clone()]
    off[0][0, :, 3:] = _probs(2, 2, 5, seed=3)
    assert attention_kd(off, teacher, [(0, 0)], [[1, 3]], mask).abs() < 1e-6


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"temperature": 0}, "temperature"),
        ({"logit_weight": -1}, "logit_weight"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"prune": {"to": 1.5}}, "prune.to"),
        ({"prune": {"to": 0.5, "start": 0.8, "end": 0.2}}, "prune.start"),
        ({"prune": {"to": 0.5, "method": "nope"}}, "prune.method"),
        ({"prune": {"too": 0.5}}, "Unknown prune option"),
        ({"prune": 0.5}, "prune must be a PruneSchedule"),
        ({"output_dir": "x", "overwrite": True, "resume_from": "latest"}, "only one"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
        ({"layer_map": [0, -1]}, "layer_map"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        DistillConfig(**bad)


def test_config_from_dict_rejects_unknown_keys():
    assert DistillConfig.from_dict({"num_epochs": 2}).num_epochs == 2
    with pytest.raises(ValueError, match="lerning_rate"):
        DistillConfig.from_dict({"lerning_rate": 1e-4})
