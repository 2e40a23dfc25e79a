"""The math of layer-wise reconstruction: Gram statistics of a block and the ridge solves.

Pure tensor functions, unit-tested on small tensors; :mod:`.run` feeds them calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BlockStats:
    """Sufficient statistics of ``y ~ W x + b`` over tokens, in float64."""

    xx: torch.Tensor  # [n, n]
    xy: torch.Tensor  # [n, D]
    x: torch.Tensor  # [n]
    y: torch.Tensor  # [D]
    yy: float = 0.0
    count: int = 0

    @classmethod
    def zeros(cls, n: int, d: int) -> BlockStats:
        z = torch.zeros
        return cls(z(n, n, dtype=torch.float64), z(n, d, dtype=torch.float64), z(n, dtype=torch.float64), z(d, dtype=torch.float64))  # fmt: skip

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """``x``: ``[tokens, n]``, ``y``: ``[tokens, D]`` (float32 products, float64 sums)."""
        x, y = x.float(), y.float()
        self.xx += (x.T @ x).double().cpu()
        self.xy += (x.T @ y).double().cpu()
        self.x += x.sum(0).double().cpu()
        self.y += y.sum(0).double().cpu()
        self.yy += float(y.double().pow(2).sum())
        self.count += x.shape[0]

    def centered(self):
        n = max(self.count, 1)
        mx, my = self.x / n, self.y / n
        cxx = self.xx - n * torch.outer(mx, mx)
        cxy = self.xy - n * torch.outer(mx, my)
        cyy = self.yy - n * float(my @ my)
        return mx, my, cxx, cxy, cyy


def block_error(stats: BlockStats, w: torch.Tensor, b: torch.Tensor) -> float:
    """``sum_tokens ||W x + b - y||^2`` from the statistics; ``w``: ``[D, n]``, ``b``: ``[D]``."""
    w, b = w.double(), b.double()
    mx, my, cxx, cxy, cyy = stats.centered()
    centered = (
        float((w @ cxx * w).sum()) - 2 * float((w.T * cxy).sum()) + cyy
    )  # tr(W C W^T) - 2 tr(W Cxy) + cyy
    offset = w @ mx + b - my
    return max(centered + stats.count * float(offset @ offset), 0.0)


def ridge(cxx: torch.Tensor, rhs: torch.Tensor, lam: float) -> torch.Tensor:
    """Solve ``(cxx + lam I) z = rhs`` (float64, Cholesky; least-squares fallback)."""
    a = cxx + lam * torch.eye(cxx.shape[0], dtype=cxx.dtype)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, chol)
    return torch.linalg.lstsq(a, rhs).solution


def solve_weights(
    stats: BlockStats, w0: torch.Tensor, b0: torch.Tensor, damp: float, max_change: float, fit_bias: bool
):
    """Ridge refit of ``W`` (toward ``w0``) and ``b``; returns ``(w, b, step)`` never worse than ``(w0, b0)``."""
    w0, b0 = w0.double(), b0.double()
    mx, my, cxx, cxy, _ = stats.centered()
    if not fit_bias:  # fit the un-centered problem with b fixed: y - b0 ~ W x
        cxx, cxy = stats.xx, stats.xy - torch.outer(stats.x, b0)
    lam = damp * float(cxx.diagonal().mean().clamp_min(1e-12))
    w_star = ridge(cxx, cxy + lam * w0.T, lam).T  # [D, n]
    step = 1.0
    if not torch.isfinite(w_star).all():
        return w0, b0, 0.0
    change = float((w_star - w0).norm() / w0.norm().clamp_min(1e-12))
    if change > max_change:
        step = max_change / change
    w = w0 + step * (w_star - w0)
    b = my - w @ mx if fit_bias else b0
    return w, b, step


def solve_scales(
    stats: BlockStats,
    w0: torch.Tensor,
    b0: torch.Tensor,
    group: int,
    damp: float,
    max_scale: float,
    fit_bias: bool,
):
    """Ridge fit (toward 1) of one factor per group of ``group`` input columns, plus ``b``. Returns ``(w, b, step)``."""
    w0, b0 = w0.double(), b0.double()
    mx, my, cxx, cxy, _ = stats.centered()
    if not fit_bias:
        cxx, cxy = stats.xx, stats.xy - torch.outer(stats.x, b0)
    n = w0.shape[1] // group
    # contribution of unit h: c_h = W0_h x_h; Gram of contributions M_hk = sum_{a in h, b in k} XX_ab (W0^T W0)_ab
    m = (cxx * (w0.T @ w0)).reshape(n, group, n, group).sum(dim=(1, 3))  # [n, n]
    r = (cxy * w0.T).sum(1).reshape(n, group).sum(1)  # [n]
    lam = damp * float(m.diagonal().mean().clamp_min(1e-12))
    ones = torch.ones(n, dtype=torch.float64)
    s_star = ridge(m, (r + lam * ones)[:, None], lam)[:, 0]
    if not torch.isfinite(s_star).all():
        return w0, b0, 0.0
    s = s_star.clamp(0.0, max_scale)

    def cost(sc):  # centered error up to a constant: s^T M s - 2 r.s
        return float(sc @ m @ sc - 2 * r @ sc)

    step = 1.0
    if cost(s) > cost(ones):  # clamping undid the gain: take the in-bounds part of the way instead
        d = s_star - 1
        hi = torch.where(
            d > 0, (max_scale - 1) / d, torch.where(d < 0, -1 / d, torch.full_like(d, torch.inf))
        )
        step = float(hi.min().clamp(0, 1))
        s = 1 + step * d
    w = w0 * s.repeat_interleave(group)[None, :]
    b = my - w @ mx if fit_bias else b0
    return w, b, step
