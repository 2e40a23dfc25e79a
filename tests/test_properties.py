"""A standing guard (property-based, hypothesis): random masks, budgets, scores (NaN/inf included) and
tampered ``config.structprune`` records over every family. Each case ends in a clear ValueError/TypeError
naming the problem, or in a result equal to the masked reference; a failed call leaves the model as it was."""

import copy
import math

import pytest
import tiny
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import structprune as sp
from structprune.arch import Structure
from structprune.arch.record import encode_structure
from structprune.gates import Gates

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
MODELS = {family: tiny.model(family) for family in tiny.FAMILIES}
BATCH = {k: v for k, v in tiny.batch().items() if k != "labels"}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _logits(model):
    with torch.no_grad():
        return model(**BATCH).logits


@SETTINGS
@given(family=st.sampled_from(tiny.FAMILIES), data=st.data())
def test_random_masks_prune_to_the_masked_reference_or_fail_cleanly(family, data):
    model = copy.deepcopy(MODELS[family])
    s = sp.arch.view(model).structure
    head = torch.tensor(data.draw(st.lists(st.booleans(), min_size=s.num_layers * s.num_heads,
                                           max_size=s.num_layers * s.num_heads))).view(s.num_layers, s.num_heads)  # fmt: skip
    ffn_keep = data.draw(
        st.lists(st.integers(0, s.intermediate_size), min_size=s.num_layers, max_size=s.num_layers)
    )
    ffn = torch.zeros(s.num_layers, s.intermediate_size, dtype=torch.bool)
    for layer, n in enumerate(ffn_keep):
        ffn[layer, torch.randperm(s.intermediate_size, generator=torch.Generator().manual_seed(n))[:n]] = True
    mask = sp.Mask(head, ffn)
    with Gates.from_mask(mask).attach(model):
        reference = _logits(model)
    before = _state(model)
    try:
        sp.prune_(model, mask)
    except (ValueError, TypeError) as err:
        assert str(err)  # a message that says what is wrong
        assert _same(_state(model), before)
        return
    assert torch.allclose(_logits(model), reference, atol=1e-5)


finite_or_not = st.one_of(st.floats(-10, 10), st.sampled_from([math.nan, math.inf, -math.inf]))


@SETTINGS
@given(
    family=st.sampled_from(tiny.FAMILIES),
    budget=st.one_of(st.floats(-0.5, 1.5), st.sampled_from([math.nan, math.inf, 0.0, 1.0])),
    poison=st.one_of(st.none(), finite_or_not),
    multiple_of=st.sampled_from([1, 4, 8, 100]),
    min_heads=st.integers(-1, 5),
)
def test_random_budgets_and_scores_allocate_within_budget_or_fail_cleanly(family, budget, poison, multiple_of,
                                                                         min_heads):  # fmt: skip
    model = MODELS[family]
    before = _state(model)
    scores = sp.score(model, method="random")
    if poison is not None:
        scores.ffn[0, 0] = poison
    dense = sp.dense_cost(model).encoder_flops
    try:
        mask = sp.allocate(scores, model, flops=budget, multiple_of=multiple_of, min_heads=min_heads)
    except (ValueError, TypeError) as err:
        assert str(err)
        return
    finally:
        assert _same(_state(model), before)
    assert math.isfinite(budget) and 0 < budget <= 1 and math.isfinite(float(scores.ffn[0, 0]))
    assert sp.cost(model, mask=mask).encoder_flops <= budget * dense * (1 + 1e-6)


RECORD = sp.arch.view(tiny.model("bert")).structure.to_dict()
# ... and strings like config.json's ranges / bit masks ("0-3,7", "0x2f"), well formed or not
values = st.one_of(st.integers(-3, 60), st.none(), st.text(max_size=3), st.lists(st.integers(-2, 60), max_size=5),
                   st.booleans(), st.floats(allow_nan=True), st.text("0123456789-,x abcdef", max_size=8))  # fmt: skip


@SETTINGS
@given(key=st.sampled_from([*RECORD, "extra"]), value=values, inner=st.booleans())
def test_tampered_structure_records_are_refused_naming_the_field(key, value, inner):
    record = copy.deepcopy(RECORD)
    if inner and isinstance(record.get(key), list) and record[key] and isinstance(record[key][0], list):
        record[key][0] = value  # one layer's list
    else:
        record[key] = value
    try:
        structure = Structure.from_dict(record)
    except ValueError as err:
        message = str(err)
        assert message.startswith("config.structprune")
        # it names the field at fault: the edited one, or one the edit made inconsistent
        assert any(f"config.structprune.{k}" in message for k in [*RECORD, "extra"]) or "missing" in message
        return
    # accepted: then it is a consistent record, the edited value read as config.json's form if a string
    assert encode_structure(structure.to_dict()) == encode_structure(record)
    assert structure.to_dict() == {k: record.get(k) for k in structure.to_dict()} or isinstance(value, str)
    assert len(structure.heads) == len(structure.ffn) == len(structure.layers)


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_the_all_kept_mask_is_bit_identical(family):
    model = copy.deepcopy(MODELS[family])
    reference = _logits(model)
    sp.prune_(model, sp.Mask.full(model))
    assert torch.equal(_logits(model), reference)
