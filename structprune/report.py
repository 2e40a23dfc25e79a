"""Plain-text / Markdown tables of what pruning kept and what it costs (used by the demo, CLI and cards)."""

from __future__ import annotations

from collections.abc import Sequence

from .allocation.cost import Cost


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub-flavoured Markdown table; readable as plain text too."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) < 1000 else f"{x:,.0f}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return str(x)


def summary_table(before: Cost, after: Cost, latency: dict | None = None) -> str:
    """Params, encoder FLOPs (and latency when given) before and after pruning."""
    rows = [
        [
            "parameters (total)",
            before.total_params,
            after.total_params,
            after.total_params / before.total_params,
        ],
        [
            "encoder parameters",
            before.encoder_params,
            after.encoder_params,
            after.encoder_params / before.encoder_params,
        ],
        [
            f"encoder GFLOPs (seq {before.seq_len})",
            before.encoder_flops / 1e9,
            after.encoder_flops / 1e9,
            after.encoder_flops / before.encoder_flops,
        ],
    ]
    if latency:
        b, a = latency["before"], latency["after"]
        rows.append([f"CPU latency ms ({latency['shape']})", b, a, a / b])
    return markdown_table(["", "before", "after", "after / before"], rows)


def layer_table(before: Cost, after: Cost) -> str:
    """Per original layer: heads and FFN neurons kept (a dropped layer shows 0 / 0)."""
    kept = {lc.layer: lc for lc in after.layers}
    rows = []
    for lc in before.layers:
        a = kept.get(lc.layer)
        heads, ffn = (a.heads, a.ffn) if a else (0, 0)
        rows.append([lc.layer, f"{heads}/{lc.heads}", f"{ffn}/{lc.ffn}", "dropped" if a is None else ""])
    return markdown_table(["layer", "heads kept", "FFN neurons kept", ""], rows)
