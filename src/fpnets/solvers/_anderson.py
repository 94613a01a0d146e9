"""Anderson acceleration (type II) with per-sample mixing coefficients."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._base import Solver, State, _check_nonneg, _check_positive_int


@dataclass(frozen=True)
class Anderson(Solver):
    """Anderson acceleration of u = T(u) with a memory of ``m`` iterates.

    With G_i = T(u_i) − u_i for the last m_k = min(k, m) iterates, each sample solves
    min_α ‖Σ α_i G_i‖² + λ‖α‖² subject to Σ α_i = 1 (λ = ``ridge`` times the mean of diag GGᵀ),
    then mixes u_{k+1} = β Σ α_i T(u_i) + (1 − β) Σ α_i u_i with β = ``beta``.
    The small m_k × m_k systems are solved in float64 whatever the dtype of u.
    """

    m: int = 5
    beta: float = 1.0
    ridge: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive_int("m", self.m, "Anderson")
        _check_nonneg("ridge", self.ridge, "Anderson")
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"Anderson: beta must lie in (0, 1], got {self.beta!r}")

    def init(self, z: Tensor, fz: Tensor) -> State:
        batch, n = z.shape[0], z[0].numel()
        hist_x = z.new_zeros(batch, self.m, n)  # (B, m, n) past iterates u_i
        hist_f = z.new_zeros(batch, self.m, n)  # (B, m, n) past T(u_i)
        return (hist_x, hist_f)

    def update(self, z: Tensor, fz: Tensor, state: State, k: int) -> tuple[Tensor, State]:
        hist_x, hist_f = state
        batch = z.shape[0]
        slot = (k - 1) % self.m
        hist_x = _write(hist_x, slot, z.reshape(batch, -1))
        hist_f = _write(hist_f, slot, fz.reshape(batch, -1))
        used = min(k, self.m)
        xs, fs = hist_x[:, :used], hist_f[:, :used]  # (B, m_k, n)
        if used == 1:
            alpha = xs.new_ones(batch, 1)
        else:
            g = (fs - xs).double()
            gram = g @ g.transpose(1, 2)  # (B, m_k, m_k)
            scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-300)  # (B,)
            eye = torch.eye(used, dtype=gram.dtype, device=gram.device)
            gram = gram + (self.ridge * scale)[:, None, None] * eye
            ones = gram.new_ones(batch, used, 1)
            a = torch.linalg.solve(gram, ones).squeeze(-1)  # (B, m_k)
            total = a.sum(dim=1, keepdim=True)
            ok = torch.isfinite(a).all(dim=1, keepdim=True) & (total.abs() > 1e-300)
            latest = torch.zeros_like(a)
            latest[:, slot] = 1.0
            alpha = torch.where(ok, a / torch.where(ok, total, 1.0), latest).to(z.dtype)
        mix_f = (alpha.unsqueeze(1) @ fs).squeeze(1)  # (B, n)
        if self.beta == 1.0:
            new = mix_f
        else:
            mix_x = (alpha.unsqueeze(1) @ xs).squeeze(1)
            new = self.beta * mix_f + (1.0 - self.beta) * mix_x
        return new.reshape(z.shape), (hist_x, hist_f)


def _write(buf: Tensor, slot: int, value: Tensor) -> Tensor:
    """buf[:, slot] = value; in place without autograd, out of place when a graph is recorded."""
    if torch.is_grad_enabled() and (buf.requires_grad or value.requires_grad):
        mask = torch.zeros(buf.shape[1], 1, dtype=torch.bool, device=buf.device)
        mask[slot] = True
        return torch.where(mask, value.unsqueeze(1), buf)
    buf[:, slot] = value
    return buf
