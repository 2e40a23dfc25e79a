"""Pure tensor functions behind the scorers (unit-tested on small tensors)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def head_weight_norms(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    head_size: int,
    p: float = 2.0,
    extra: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """Norm of every head's weights: its rows of q/k/v (``[H*d, D]``) and its columns of o (``[D, H*d]``),
    plus its rows of any ``extra`` head-laid-out projections (DeBERTa's position projections).

    Returns ``[H]``. ``p=1`` gives the L1 norm, ``p=2`` the L2 norm.
    """
    heads = q.shape[0] // head_size
    parts = [w.reshape(heads, head_size * w.shape[1]) for w in (q, k, v, *extra)]  # [H, d*D] each
    parts.append(o.t().reshape(heads, head_size * o.shape[0]))  # o: [D, H*d] -> [H, d*D]
    return torch.linalg.vector_norm(torch.cat(parts, dim=1), ord=p, dim=1)


def neuron_weight_norms(up: torch.Tensor, down: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Norm of every FFN neuron's weights: its row of up (``[I, D]``) and column of down (``[D, I]``)."""
    return torch.linalg.vector_norm(torch.cat([up, down.t()], dim=1), ord=p, dim=1)


def head_output_norms(
    x: torch.Tensor, o_weight: torch.Tensor, head_size: int, attention_mask=None
) -> torch.Tensor:
    """Summed over tokens, the norm of each head's contribution to the attention output.

    ``x``: input of the output projection ``[B, T, H*d]``; ``o_weight``: ``[D, H*d]``. A head's
    contribution is ``x_h @ W_o[:, h].T``; its norm is bounded by ``|x_h| * |W_o[:, h]|``, which is what is
    returned (per head, summed over the real tokens of the batch). Returns ``[H]``.
    """
    b, t, _ = x.shape
    heads = x.shape[-1] // head_size
    x_norm = x.reshape(b, t, heads, head_size).norm(dim=-1)  # [B, T, H]
    if attention_mask is not None:
        x_norm = x_norm * attention_mask[..., None].to(x_norm.dtype)
    w_norm = o_weight.reshape(o_weight.shape[0], heads, head_size).norm(dim=(0, 2))  # [H]
    return x_norm.sum(dim=(0, 1)) * w_norm


def neuron_output_norms(x: torch.Tensor, down_weight: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """``sum_tokens |a_i| * |W_down[:, i]|`` for every neuron ``i``; ``x``: ``[B, T, I]``. Returns ``[I]``."""
    a = x.abs()
    if attention_mask is not None:
        a = a * attention_mask[..., None].to(a.dtype)
    return a.sum(dim=(0, 1)) * down_weight.norm(dim=0)


def taylor_from_gate_grads(grad: torch.Tensor) -> torch.Tensor:
    """First-order Taylor importance of a batch: ``|dL/dg|`` of the batch-mean loss.

    ``grad``: per-example gate gradients of the per-example losses ``[B, ...]``.
    """
    return grad.mean(dim=0).abs()


def fisher_from_gate_grads(grad: torch.Tensor) -> torch.Tensor:
    """Empirical Fisher diagonal of a batch: ``sum_examples (dL_e/dg)^2``; ``grad``: ``[B, ...]``."""
    return grad.pow(2).sum(dim=0)
