"""The ``structprune`` record of config.json, validated field by field (standard library only).

A checkpoint's config.json is data: every field is checked before anything is built from it, with an
error naming the field and the file. Used by :class:`structprune.arch.Structure` and copied into each
checkpoint's self-contained modeling file (below the marker), so loading without structprune checks the
same way.
"""

from __future__ import annotations

# --- code ---
STRUCTURE_SIZES = ("num_layers", "num_heads", "head_size", "intermediate_size", "hidden_size")
STRUCTURE_FIELDS = (*STRUCTURE_SIZES, "layers", "heads", "ffn", "hidden")


def validate_structure(data, where: str = "") -> dict:
    """``data`` (a ``config.structprune`` record) checked: sizes positive integers, kept indices sorted,
    unique and in range, one list per kept layer. Returns it; a ValueError names the field otherwise."""
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
        if not isinstance(v, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in v):
            raise bad(name, f"must be a list of integers, got {v!r:.80}")
        if any(not 0 <= i < bound for i in v):
            raise bad(name, f"holds an index outside [0, {bound})")
        if any(a >= b for a, b in zip(v, v[1:], strict=False)):
            raise bad(name, "must be strictly increasing (sorted, no repeats)")
        return v

    sizes = {n: positive(n) for n in STRUCTURE_SIZES}
    layers = ids("layers", data["layers"], sizes["num_layers"])
    if not layers:
        raise bad("layers", "must keep at least one layer")
    for name, bound in (("heads", sizes["num_heads"]), ("ffn", sizes["intermediate_size"])):
        v = data[name]
        if not isinstance(v, list) or len(v) != len(layers):
            raise bad(name, f"must hold one list per kept layer ({len(layers)})")
        for i, x in enumerate(v):
            ids(f"{name}[{i}]", x, bound)
    if data.get("hidden") is not None and not ids("hidden", data["hidden"], sizes["hidden_size"]):
        raise bad("hidden", "must keep at least one dimension")
    unknown = sorted(set(data) - set(STRUCTURE_FIELDS))
    if unknown:
        raise bad(unknown[0], "is not a field structprune writes")
    return data


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
    for name in ("attn_head_count_attrs", "attn_all_head_size_attrs", "layer_norms"):
        if name in arch and not (
            isinstance(arch[name], list) and all(isinstance(a, str) for a in arch[name])
        ):
            raise ValueError(
                f"config.structprune_arch.{name}{src} must be a list of names; the checkpoint was edited."
            )
    return arch
