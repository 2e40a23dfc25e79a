"""Everything read from a checkpoint is data: a config.json edited by hand (or by an attacker) gives a
clear error naming the field, and never reaches a class attribute of transformers."""

import json

import pytest
import tiny
import transformers

import structprune as sp
from structprune.arch.record import decode_indices
from structprune.checkpoint import remote_modeling as rm


@pytest.fixture()
def pruned_folder(tmp_path):
    model = tiny.model("bert")
    scores = sp.score(model, method="magnitude")
    sp.prune_(
        model, sp.allocate(scores, model, flops=0.5)
    )  # a non-uniform structure: the arch record is used
    path = tmp_path / "pruned"
    sp.save_pretrained(model, path, tokenizer=None, card=False)
    assert rm.ARCH_KEY in json.loads((path / "config.json").read_text())
    return path


def _edit(path, fn):
    config = json.loads((path / "config.json").read_text())
    fn(config)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("attn", "__class__", "not a plain dotted module path"),
        ("attn", "attention.__dict__", "not a plain dotted module path"),
        ("q", "attention.self._modules", "not a plain dotted module path"),
        ("layers", "encoder.forward", "no submodule"),
        ("attn_head_count_attrs", ["forward"], "does not hold as a count"),
        ("attn_head_count_attrs", ["__class__"], "does not hold as a count"),
    ],
)
def test_arch_paths_and_attributes_from_a_file_are_checked(pruned_folder, field, value, message):
    forward, cls_dict = transformers.BertModel.forward, dict(vars(transformers.BertLayer))
    _edit(pruned_folder, lambda c: c[rm.ARCH_KEY].__setitem__(field, value))
    with pytest.raises((ValueError, AttributeError), match=message):
        sp.from_pretrained(pruned_folder)
    assert transformers.BertModel.forward is forward and dict(vars(transformers.BertLayer)) == cls_dict


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: s.__setitem__("heads", [list(reversed(decode_indices(h, 4))) for h in s["heads"]]),
            r"heads\[0\] .*strictly increasing",
        ),
        (lambda s: s["heads"].__setitem__(0, s["heads"][0] + ",99"), r"heads\[0\] .*outside"),
        (
            lambda s: s["heads"].__setitem__(0, [*decode_indices(s["heads"][0], 4), 99]),
            r"heads\[0\] .*outside",
        ),
        (lambda s: s["ffn"].__setitem__(0, "5-3"), r"ffn\[0\] .*'5-3', which does not run upward"),
        (lambda s: s["ffn"].__setitem__(0, "0-5,3"), r"ffn\[0\] .*strictly increasing"),
        (lambda s: s["ffn"].__setitem__(0, "0x" + "f" * 13), r"ffn\[0\] .*outside \[0, 48\)"),
        (lambda s: s["ffn"].__setitem__(0, "0-3, 5"), r"ffn\[0\] .*' 5' is not an index"),
        (lambda s: s.__setitem__("layers", "0,0x3"), r"layers .*'0x3' is not an index"),
        (lambda s: s.__setitem__("ffn", s["ffn"][:-1]), "one list per kept layer"),
        (lambda s: s.__setitem__("num_heads", "4"), "num_heads .*positive integer"),
        (lambda s: s.__setitem__("layers", []), "at least one layer"),
        (lambda s: s.__setitem__("hidden", [3, 3]), "hidden .*strictly increasing"),
        (lambda s: s.__setitem__("extra", 1), "extra .*not a field"),
    ],
)
def test_every_field_of_the_structure_record_is_validated(pruned_folder, edit, message):
    _edit(pruned_folder, lambda c: edit(c[rm.CONFIG_KEY]))
    with pytest.raises(ValueError, match=message) as err:
        sp.from_pretrained(pruned_folder)
    assert str(pruned_folder / "config.json") in str(err.value)  # names the file
