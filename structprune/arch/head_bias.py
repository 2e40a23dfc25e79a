"""The per-head bias selector of families whose attention bias is shared by all layers (MPNet).

A pruned layer keeps its own heads, so it must pick its heads out of the shared relative-position bias
``[B, heads_all, T, T]``. :func:`install_head_bias_selector` adds a forward pre-hook and a buffer that
do that. Surgery installs it; the checkpoint's self-contained modeling file carries the same code (it is
copied in below the marker when a checkpoint is written), so a loaded model can be pruned again.
Keep this file torch-only.
"""

from __future__ import annotations

import torch
from torch import nn

# --- code ---
HEAD_BIAS_INDEX = "structprune_head_bias_index"


def install_head_bias_selector(attn: nn.Module, index: torch.Tensor, arg: tuple[str, int]) -> None:
    """Make ``attn`` pick its own heads ``index`` out of a per-head bias shared by all layers (MPNet).

    The buffer ``HEAD_BIAS_INDEX`` holds the kept heads' positions in the shared bias; installing again
    only updates it.
    """
    if hasattr(attn, HEAD_BIAS_INDEX):
        setattr(attn, HEAD_BIAS_INDEX, index.to(getattr(attn, HEAD_BIAS_INDEX).device))
        return
    attn.register_buffer(HEAD_BIAS_INDEX, index.clone(), persistent=False)
    name, pos = arg

    def select(module, args, kwargs):
        idx = getattr(module, HEAD_BIAS_INDEX)
        if name in kwargs and kwargs[name] is not None:
            kwargs[name] = kwargs[name].index_select(1, idx)  # [B, heads_all, T, T] -> [B, heads_kept, T, T]
        elif len(args) > pos and args[pos] is not None:
            args = (*args[:pos], args[pos].index_select(1, idx), *args[pos + 1 :])
        return args, kwargs

    attn.register_forward_pre_hook(select, with_kwargs=True)
