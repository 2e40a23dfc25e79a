"""Layer and head maps between a (pruned) student and its teacher, read from ``config.structprune``.

A pruned student records, in original-model coordinates, which layer each of its layers was and which
heads it kept (:class:`structprune.arch.Structure`). The teacher (usually the unpruned model) records the
same for itself, so both sides are translated into current indices here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ...arch import view
from ...arch.view import CONFIG_KEY


@dataclass(frozen=True)
class DistillMap:
    """Which teacher layer/heads each student layer learns from (current, 0-based indices).

    ``layers[i]`` is the teacher layer matched to student layer ``i``; ``heads[i][j]`` is the teacher head
    matched to head ``j`` of student layer ``i`` (``None`` when head counts cannot be matched).
    """

    layers: list[int]
    heads: list[list[int]] | None

    def hidden_pairs(self) -> list[tuple[int, int]]:
        """``(student, teacher)`` indices into ``hidden_states`` (0 = embeddings, ``i + 1`` = layer ``i``)."""
        return [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(self.layers)]

    def attention_pairs(self) -> list[tuple[int, int]]:
        """``(student, teacher)`` layer indices into ``attentions``; layers with no head are skipped."""
        heads = self.heads or []
        return [(i, t) for i, t in enumerate(self.layers) if i < len(heads) and heads[i]]

    def attention_heads(self) -> list[list[int]]:
        heads = self.heads or []
        return [heads[i] for i, _ in self.attention_pairs()]


def build_map(student: nn.Module, teacher: nn.Module, layer_map: list[int] | None = None) -> DistillMap:
    """Match student layers/heads to the teacher's.

    With ``layer_map`` given, student layer ``i`` learns from teacher layer ``layer_map[i]`` and heads are
    matched by original id when both models record them, else one to one when counts agree. Without it,
    the student must be a pruned version of the teacher (``config.structprune``) or have the same depth.

    Example::

        m = build_map(pruned_student, teacher)
        m.layers      # e.g. [0, 1, 3, 5]: the student dropped teacher layers 2 and 4
    """
    sv, tv = view(student), view(teacher)
    ss, ts = sv.structure, tv.structure
    n_student, n_teacher = len(sv.layers), len(tv.layers)
    # Same original model shape: the records (or, unpruned, the identity) translate indices.
    derived = (ss.num_layers, ss.num_heads, ss.head_size, ss.hidden_size) == (
        ts.num_layers,
        ts.num_heads,
        ts.head_size,
        ts.hidden_size,
    )
    if layer_map is not None:
        if len(layer_map) != n_student:
            raise ValueError(
                f"layer_map has {len(layer_map)} entries but the student has {n_student} layers; give one "
                "teacher layer per student layer."
            )
        bad = [t for t in layer_map if t >= n_teacher]
        if bad:
            raise ValueError(f"layer_map names teacher layers {bad} but the teacher has {n_teacher} layers.")
        layers = list(layer_map)
    elif derived:
        where = {orig: i for i, orig in enumerate(ts.layers)}
        missing = [orig for orig in ss.layers if orig not in where]
        if missing:
            raise ValueError(
                f"The student keeps original layers {missing} that the teacher no longer has; distil from a "
                "teacher that contains the student, or pass layer_map."
            )
        layers = [where[orig] for orig in ss.layers]
    else:
        raise ValueError(
            f"The student ({n_student} layers) is not a pruned version of the teacher ({n_teacher} layers): "
            f"its config has no '{CONFIG_KEY}' record matching the teacher. Hidden-state/attention "
            "distillation needs a layer map: pass DistillConfig(layer_map=[teacher layer of each student "
            "layer]) or turn those terms off (hidden_weight=0, attention_weight=0)."
        )
    return DistillMap(layers=layers, heads=_head_map(sv, tv, layers, derived))


def _head_map(sv, tv, layers: list[int], derived: bool) -> list[list[int]] | None:
    heads = []
    for s_layer, t in zip(sv.layers, layers, strict=True):
        t_layer = tv.layers[t]
        if derived:
            where = {h: j for j, h in enumerate(t_layer.heads)}
            if any(h not in where for h in s_layer.heads):
                return None  # the student keeps heads the teacher lacks: no attention map
            heads.append([where[h] for h in s_layer.heads])
        elif len(s_layer.heads) == len(t_layer.heads):
            heads.append(list(range(len(s_layer.heads))))
        else:
            return None
    return heads
