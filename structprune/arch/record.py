"""The ``structprune`` record of config.json, validated field by field (standard library only).

A checkpoint's config.json is data: every field is checked before anything is built from it, with an
error naming the field and the file. Used by :class:`structprune.arch.Structure` and copied into each
checkpoint's self-contained modeling file (below the marker), so loading without structprune checks the
same way.

In memory (``model.config.structprune``, :class:`structprune.arch.Structure`) every kept-index field is a
list of integers. config.json stores each one as a string (:func:`encode_indices`), which keeps the file
small: sorted inclusive ranges, ``"0-511,600,602-1535"`` (``""``: none), or, where those would be long
(the scattered neurons importance pruning keeps), a hex bit mask, ``"0x2f"`` = indices 0-3 and 5 (bit ``i``
set: index ``i`` kept). A BERT-base pruned to half its FLOPs would otherwise write some 20,000 integers,
one per line. :func:`encode_structure` gives that form for saving; :func:`validate_structure` reads either
form (plain integer lists are what earlier versions wrote) and returns the lists.
"""

from __future__ import annotations

# --- code ---
STRUCTURE_SIZES = ("num_layers", "num_heads", "head_size", "intermediate_size", "hidden_size")
STRUCTURE_FIELDS = (*STRUCTURE_SIZES, "layers", "heads", "ffn", "hidden")
RANGES_MAX = 64
"""Ranges up to this long are written as they are (readable); longer ones as a bit mask if that is shorter."""
INDICES_FORMAT = "a string of sorted ranges such as '0-511,600,602-1535' or a hex bit mask such as '0x2f'"


def encode_indices(ids) -> str:
    """Sorted, unique indices as config.json stores them: inclusive ranges (``[0, 1, 2, 5, 7, 8]`` ->
    ``"0-2,5,7-8"``; ``[]`` -> ``""``), or, where those run past :data:`RANGES_MAX` characters and a hex
    bit mask (bit ``i`` set: index ``i`` kept) is shorter, the mask. :func:`decode_indices` reads both."""
    ids = list(ids)
    parts, start, prev = [], None, None
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"indices must be non-negative integers, got {i!r}")
        if prev is not None and i <= prev:
            raise ValueError(f"indices must be strictly increasing, got {i} after {prev}")
        if prev is None or i != prev + 1:
            if start is not None:
                parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = i
        prev = i
    if start is None:
        return ""
    parts.append(str(start) if start == prev else f"{start}-{prev}")
    ranges = ",".join(parts)
    if len(ranges) <= max(RANGES_MAX, 2 + (prev + 4) // 4):  # the mask: "0x", one hex digit per 4 bits
        return ranges
    bits = ["0"] * (prev + 1)
    for i in ids:
        bits[prev - i] = "1"  # most significant first
    return "0x" + format(int("".join(bits), 2), "x")


def _index(text: str, item: str) -> int:
    """One decimal index as written by :func:`encode_indices` (ASCII digits, no sign, no leading zero)."""
    if not text or text.strip("0123456789") or (text[0] == "0" and text != "0"):
        raise ValueError(f"must be {INDICES_FORMAT}; {item!r:.40} is not an index or a range a-b")
    return int(text) if len(text) <= 18 else 10**18  # past any bound, without parsing a huge number


def decode_indices(text: str, bound: int) -> list[int]:
    """The indices a string of :func:`encode_indices` names, each checked to lie in ``[0, bound)``.

    Strict: a malformed item or mask (no spaces, signs, leading zeros or upper case), a range that does not
    run upward (``"5-3"``, ``"3-3"``), items out of order or overlapping (``"0-5,3"``) and indices out of
    bounds are a ValueError saying which (without the field's name: :func:`validate_structure` adds it)."""
    if not isinstance(text, str):
        raise ValueError(f"must be {INDICES_FORMAT}")
    if text.startswith("0x"):
        digits = text[2:]
        if not digits or digits.strip("0123456789abcdef") or digits[0] == "0":
            raise ValueError(
                f"must be {INDICES_FORMAT}; {text!r:.40} is not a hex bit mask (lower case, no leading "
                "zeros; no index kept is '')"
            )
        mask = int(digits, 16) if len(digits) <= (bound + 3) // 4 else 1 << bound  # no huge numbers
        if mask >> bound:
            raise ValueError(f"holds an index outside [0, {bound})")
        return [i for i, bit in enumerate(bin(mask)[:1:-1]) if bit == "1"]  # least significant first
    out: list[int] = []
    if text == "":
        return out
    prev = -1
    for item in text.split(","):
        first, dash, last = item.partition("-")
        start = _index(first, item)
        stop = _index(last, item) if dash else start
        if dash and stop <= start:
            raise ValueError(f"holds the range {item!r:.40}, which does not run upward")
        if start <= prev:
            raise ValueError(
                f"must be strictly increasing (sorted ranges that do not overlap); {item!r:.40} follows {prev}"
            )
        if stop >= bound:
            raise ValueError(f"holds an index outside [0, {bound})")
        out.extend(range(start, stop + 1))
        prev = stop
    return out


def validate_structure(data, where: str = "") -> dict:
    """``data`` (a ``config.structprune`` record) checked: sizes positive integers, kept indices sorted,
    unique and in range, one list per kept layer. Each index field may be a list of integers or a string
    of ranges (:func:`decode_indices`). Returns a copy whose index fields are lists; a ValueError names the
    field otherwise."""
    key = "structprune"
    src = f" in {where}" if where else ""
    if not isinstance(data, dict):
        raise ValueError(f"config.{key}{src} must be a mapping, got {type(data).__name__}.")
    missing = [k for k in STRUCTURE_FIELDS[:-1] if k not in data]
    if missing:
        raise ValueError(f"config.{key}{src} is missing the key {missing[0]!r}; the checkpoint is damaged.")

    def bad(name: str, what: str):
        return ValueError(f"config.{key}.{name}{src} {what}; the checkpoint is damaged or was edited.")

    def positive(name: str) -> int:
        v = data[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad(name, f"must be a positive integer, got {v!r}")
        return v

    def ids(name: str, v, bound: int) -> list:
        if isinstance(v, str):
            try:
                return decode_indices(v, bound)
            except ValueError as err:
                raise bad(name, str(err)) from None
        if not isinstance(v, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in v):
            raise bad(name, f"must be a list of integers or {INDICES_FORMAT}, got {v!r:.80}")
        if any(not 0 <= i < bound for i in v):
            raise bad(name, f"holds an index outside [0, {bound})")
        if any(a >= b for a, b in zip(v, v[1:], strict=False)):
            raise bad(name, "must be strictly increasing (sorted, no repeats)")
        return v

    sizes = {n: positive(n) for n in STRUCTURE_SIZES}
    out = dict(data)
    out["layers"] = layers = ids("layers", data["layers"], sizes["num_layers"])
    if not layers:
        raise bad("layers", "must keep at least one layer")
    for name, bound in (("heads", sizes["num_heads"]), ("ffn", sizes["intermediate_size"])):
        v = data[name]
        if not isinstance(v, list) or len(v) != len(layers):
            raise bad(name, f"must hold one list per kept layer ({len(layers)})")
        out[name] = [ids(f"{name}[{i}]", x, bound) for i, x in enumerate(v)]
    if data.get("hidden") is not None:
        out["hidden"] = ids("hidden", data["hidden"], sizes["hidden_size"])
        if not out["hidden"]:
            raise bad("hidden", "must keep at least one dimension")
    unknown = sorted(set(data) - set(STRUCTURE_FIELDS))
    if unknown:
        raise bad(unknown[0], "is not a field structprune writes")
    return out


def encode_structure(data, where: str = "") -> dict:
    """The record as config.json stores it: validated, every kept-index list a string of ranges or a bit
    mask (:func:`encode_indices`). Encoding a record that is encoded already changes nothing."""
    out = validate_structure(data, where)
    out["layers"] = encode_indices(out["layers"])
    out["heads"] = [encode_indices(h) for h in out["heads"]]
    out["ffn"] = [encode_indices(f) for f in out["ffn"]]
    if out.get("hidden") is not None:
        out["hidden"] = encode_indices(out["hidden"])
    return out


ARCH_REQUIRED = ("layers", "attn", "q", "k", "v", "o", "up", "down", "attn_head_count_attrs",
                 "attn_all_head_size_attrs")  # fmt: skip


def validate_arch(arch, structure: dict, where: str = "") -> dict:
    """The ``structprune_arch`` record: the keys a loader reads are present and of the right kind (the
    paths themselves are checked when they are followed)."""
    src = f" in {where}" if where else ""
    if not isinstance(arch, dict):
        raise ValueError(f"config.structprune_arch{src} must be a mapping, got {type(arch).__name__}.")
    needed = [*ARCH_REQUIRED, *(["hidden_sites"] if structure.get("hidden") is not None else [])]
    missing = [k for k in needed if k not in arch]
    if missing:
        raise ValueError(
            f"config.structprune_arch{src} is missing {missing[0]!r}; the checkpoint is damaged."
        )
    for name in ("attn_head_count_attrs", "attn_all_head_size_attrs", "layer_norms", "head_projections"):
        if name in arch and not (
            isinstance(arch[name], list) and all(isinstance(a, str) for a in arch[name])
        ):
            raise ValueError(
                f"config.structprune_arch.{name}{src} must be a list of names; the checkpoint was edited."
            )
    pairs = arch.get("first_layer_identity", [])
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(a, str) for a in p) for p in pairs
    ):
        raise ValueError(
            f"config.structprune_arch.first_layer_identity{src} must be a list of [path, template] pairs; the "
            "checkpoint was edited."
        )
    return arch
