"""config.json's compact form of the kept indices (structprune/arch/record.py): strings of ranges or hex bit
masks, read back exactly, every malformed string refused naming the field and the file."""

from __future__ import annotations

import copy
import json

import pytest
import tiny
from helpers import hidden_mask
from hypothesis import given, settings
from hypothesis import strategies as st

import structprune as sp
from structprune.arch.record import (
    RANGES_MAX,
    decode_indices,
    encode_indices,
    encode_structure,
    validate_structure,
)


@st.composite
def index_sets(draw):
    """A bound and sorted unique indices below it: scattered, runs, or mixed."""
    bound = draw(st.integers(1, 5000))
    kind = draw(st.sampled_from(["scattered", "runs", "dense"]))
    if kind == "scattered":
        ids = draw(st.sets(st.integers(0, bound - 1), max_size=min(bound, 400)))
    elif kind == "runs":
        ids = set()
        for start, length in draw(st.lists(st.tuples(st.integers(0, bound - 1), st.integers(1, 300)))):
            ids.update(range(start, min(bound, start + length)))
    else:
        ids = set(range(bound)) - draw(st.sets(st.integers(0, bound - 1), max_size=50))
    return bound, sorted(ids)


@settings(max_examples=300, deadline=None)
@given(index_sets())
def test_encode_then_decode_is_the_identity(case):
    bound, ids = case
    text = encode_indices(ids)
    assert decode_indices(text, bound) == ids
    assert json.loads(json.dumps(text)) == text  # plain ASCII, no escapes in config.json
    # the shorter form, ranges whenever they are short enough to read
    mask_len = 2 + (ids[-1] + 4) // 4 if ids else 0
    if text.startswith("0x"):
        assert (
            len(text) == mask_len
            and mask_len < len(encode_ranges(ids))
            and len(encode_ranges(ids)) > RANGES_MAX
        )
    else:
        assert text == encode_ranges(ids)
    assert len(text) <= max(RANGES_MAX, mask_len)


def encode_ranges(ids: list[int]) -> str:
    """The ranges form, written naively."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def test_examples():
    assert encode_indices([]) == ""
    assert encode_indices([3]) == "3"
    assert encode_indices([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert encode_indices(range(1536)) == "0-1535"
    assert decode_indices("0-511,600,602-1535", 1536) == [*range(512), 600, *range(602, 1536)]
    assert decode_indices("0x2f", 6) == [0, 1, 2, 3, 5]
    assert decode_indices("0-3,5", 6) == [0, 1, 2, 3, 5]
    assert decode_indices("0-1,2-3", 4) == [0, 1, 2, 3]  # adjacent ranges are fine, only overlaps are not
    every_other = list(range(0, 3072, 2))
    assert (
        encode_indices(every_other) == "0x" + "5" * 768
        and decode_indices("0x" + "5" * 768, 3072) == every_other
    )


@pytest.mark.parametrize("ids", [[2, 1], [1, 1], [-1, 2], [True], [0.5]])
def test_encode_refuses_what_is_not_sorted_unique_indices(ids):
    with pytest.raises(ValueError, match="indices must be"):
        encode_indices(ids)


WHERE = "/models/pruned/config.json"
MALFORMED = [
    ("5-3", "range '5-3', which does not run upward"),
    ("3-3", "range '3-3', which does not run upward"),
    ("0-5,3", r"strictly increasing \(sorted ranges that do not overlap\); '3' follows 5"),
    ("0-5,4-7", "strictly increasing"),
    ("7,2", "strictly increasing"),
    ("2,2", "strictly increasing"),
    ("0-48", r"outside \[0, 48\)"),
    ("47,48", r"outside \[0, 48\)"),
    ("99999999999999999999999", r"outside \[0, 48\)"),
    ("0x1" + "0" * 12, r"outside \[0, 48\)"),
    ("0x" + "f" * 40, r"outside \[0, 48\)"),
    ("1,,2", "'' is not an index or a range a-b"),
    ("1,", "'' is not an index or a range a-b"),
    ("0-", "'0-' is not an index or a range a-b"),
    ("1-2-3", "'1-2-3' is not an index or a range a-b"),
    ("-1", "'-1' is not an index or a range a-b"),
    ("+1", "'\\+1' is not an index or a range a-b"),
    (" 1", "' 1' is not an index or a range a-b"),
    ("1, 2", "' 2' is not an index or a range a-b"),
    ("01", "'01' is not an index or a range a-b"),
    ("1.5", "'1.5' is not an index or a range a-b"),
    ("\u00b2", "is not an index or a range a-b"),  # a digit to str.isdigit, not to int()
    ("0x", "'0x' is not a hex bit mask"),
    ("0x0", "'0x0' is not a hex bit mask"),
    ("0x0f", "'0x0f' is not a hex bit mask"),
    ("0xFF", "'0xFF' is not a hex bit mask"),
    ("0xfg", "'0xfg' is not a hex bit mask"),
    ("0x-1", "'0x-1' is not a hex bit mask"),
]


def _record() -> dict:
    return sp.arch.view(sp.prune_(tiny.model("bert"), hidden_mask(tiny.model("bert")))).structure.to_dict()


@pytest.mark.parametrize("text, message", MALFORMED)
def test_malformed_strings_are_refused_naming_the_field_and_the_file(text, message):
    record = encode_structure(_record())
    record["ffn"][1] = text
    with pytest.raises(ValueError, match=message) as err:
        validate_structure(record, WHERE)
    assert str(err.value).startswith(f"config.structprune.ffn[1] in {WHERE} ")
    assert str(err.value).endswith("the checkpoint is damaged or was edited.")


@pytest.mark.parametrize("field", ["layers", "heads", "hidden"])
def test_every_index_field_reads_strings(field):
    record = encode_structure(_record())
    value = "0x1" + "0" * 20
    if field == "heads":
        record["heads"][0] = value
    else:
        record[field] = value
    name = "heads[0]" if field == "heads" else field
    with pytest.raises(
        ValueError, match=rf"config\.structprune\.{re_escape(name)} in {WHERE} holds an index"
    ):
        validate_structure(record, WHERE)


def re_escape(text: str) -> str:
    return text.replace("[", r"\[").replace("]", r"\]")


def test_compact_and_plain_lists_read_the_same_and_the_input_is_left_alone():
    plain = _record()
    compact = encode_structure(plain)
    assert isinstance(compact["layers"], str) and all(isinstance(f, str) for f in compact["ffn"])
    assert compact["layers"] == "0,2" and compact["heads"] == ["1-2", "1-3"]
    assert compact["hidden"] == "0,2-4,6,8-19,21-30"
    before = copy.deepcopy(compact)
    assert validate_structure(compact) == plain == validate_structure(plain)  # earlier versions' lists
    assert compact == before
    assert encode_structure(compact) == compact  # encoding what is encoded changes nothing
    mixed = dict(plain, ffn=[compact["ffn"][0], plain["ffn"][1]])
    assert validate_structure(mixed) == plain
    no_hidden = {k: v for k, v in plain.items() if k != "hidden"}  # records from before hidden pruning
    assert "hidden" not in encode_structure(no_hidden)
    assert sp.arch.Structure.from_dict(compact) == sp.arch.Structure.from_dict(plain)


def test_empty_strings_are_empty_lists_where_a_list_may_be_empty():
    record = encode_structure(_record())
    record["ffn"][0] = ""
    assert validate_structure(record)["ffn"][0] == []
    for field, message in (("layers", "at least one layer"), ("hidden", "at least one dimension")):
        with pytest.raises(ValueError, match=message):
            validate_structure(dict(record, **{field: ""}))
    with pytest.raises(ValueError, match="one list per kept layer"):
        validate_structure(dict(record, ffn="0-3"))  # the per-layer fields stay lists (of strings)
