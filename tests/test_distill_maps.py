"""Layer/head maps from config.structprune, checked against real forwards of pruned tiny models."""

import copy

import pytest
import tiny
import torch

import structprune as sp
from structprune.recovery.distill import build_map
from structprune.recovery.distill.losses import attention_kd, hidden_mse


def _prune(model, drop_layer=None, heads=None):
    """Prune ``model`` in place: drop original layer ``drop_layer``; keep ``heads[l]`` of layer l."""
    mask = sp.Mask.full(model)
    if heads:
        for layer, keep in heads.items():
            mask.head[layer] = False
            mask.head[layer, keep] = True
    if drop_layer is not None:
        mask.head[drop_layer] = False
        mask.ffn[drop_layer] = False
    return sp.prune_(model, mask)


def test_identity_map_for_unpruned_student():
    teacher = tiny.model("bert")
    m = build_map(copy.deepcopy(teacher), teacher)
    assert m.layers == [0, 1, 2]
    assert m.heads == [[0, 1, 2, 3]] * 3
    assert m.hidden_pairs() == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_map_of_pruned_student_skips_dropped_layers_and_heads():
    teacher = tiny.model("bert")
    student = _prune(copy.deepcopy(teacher), drop_layer=1, heads={2: [1, 3]})
    m = build_map(student, teacher)
    assert m.layers == [0, 2]  # student layer 1 is original layer 2
    assert m.heads == [[0, 1, 2, 3], [1, 3]]
    assert m.hidden_pairs() == [(0, 0), (1, 1), (2, 3)]
    assert m.attention_pairs() == [(0, 0), (1, 2)]
    # a teacher that was itself pruned: indices are translated through both records
    mid = _prune(copy.deepcopy(teacher), heads={2: [0, 1, 3]})
    assert build_map(student, mid).heads == [[0, 1, 2, 3], [1, 2]]


@pytest.mark.parametrize("family", ["bert", "distilbert", "modernbert", "deberta-v2"])
def test_maps_match_real_attention_and_hidden_states(family):
    """Pruning heads of the last layer only: everything before it is identical, and the student's last
    attention equals the teacher's on the kept heads, so both losses vanish under the map."""
    teacher = tiny.model(family, initializer_range=0.3)  # sharp attention
    teacher.set_attn_implementation("eager")
    student = _prune(copy.deepcopy(teacher), heads={2: [0, 2]})
    m = build_map(student, teacher)
    batch = {k: v for k, v in tiny.batch().items() if k != "labels"}
    with torch.no_grad():
        t = teacher(**batch, output_hidden_states=True, output_attentions=True)
        s = student(**batch, output_hidden_states=True, output_attentions=True)
    assert len(s.attentions[2]) == len(t.attentions[2])
    mask = batch["attention_mask"]
    pairs = m.attention_pairs()
    assert attention_kd(s.attentions, t.attentions, pairs, m.attention_heads(), mask) < 1e-6
    assert hidden_mse(s.hidden_states, t.hidden_states, m.hidden_pairs()[:3], mask) < 1e-10
    assert hidden_mse(s.hidden_states, t.hidden_states, m.hidden_pairs(), mask) > 1e-6  # last layer differs
    wrong = [[1, 3] if i == 2 else h for i, h in enumerate(m.attention_heads())]
    assert attention_kd(s.attentions, t.attentions, pairs, wrong, mask) > 1e-4


def test_student_not_derived_from_teacher_needs_a_layer_map():
    teacher = tiny.model("bert")
    shallow = tiny.model("bert", num_hidden_layers=2)
    with pytest.raises(ValueError, match="layer_map"):
        build_map(shallow, teacher)
    m = build_map(shallow, teacher, layer_map=[0, 2])
    assert m.hidden_pairs() == [(0, 0), (1, 1), (2, 3)]
    assert m.heads == [[0, 1, 2, 3]] * 2
    with pytest.raises(ValueError, match="one teacher layer per student layer"):
        build_map(shallow, teacher, layer_map=[0])
    with pytest.raises(ValueError, match="teacher has 3 layers"):
        build_map(shallow, teacher, layer_map=[0, 5])


def test_student_with_more_than_the_teacher_is_rejected():
    full = tiny.model("bert")
    small_teacher = _prune(copy.deepcopy(full), drop_layer=0)
    with pytest.raises(ValueError, match="no longer has"):
        build_map(copy.deepcopy(full), small_teacher)
