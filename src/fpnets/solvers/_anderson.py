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
    G Gᵀ is kept and updated by one row per iteration (O(m n) work, not O(m² n)); the small
    m_k × m_k systems are solved in float64 whatever the dtype of u.
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
        hist_f = z.new_zeros(batch, self.m, n)  # (B, m, n) past T(u_i)
        hist_g = z.new_zeros(batch, self.m, n)  # (B, m, n) past residuals G_i = T(u_i) − u_i
        gram = torch.zeros(batch, self.m, self.m, dtype=torch.float64, device=z.device)  # (B, m, m) G Gᵀ
        return (hist_f, hist_g, gram)

    def update(self, z: Tensor, fz: Tensor, state: State, k: int) -> tuple[Tensor, State]:
        hist_f, hist_g, gram = state
        batch = z.shape[0]
        slot = (k - 1) % self.m
        used = min(k, self.m)
        g = (fz - z).reshape(batch, -1)  # (B, n)
        hist_f = _write(hist_f, slot, fz.reshape(batch, -1))
        hist_g = _write(hist_g, slot, g)
        # only the new row and column of G Gᵀ change; a multiply-and-sum is ~3× faster than bmm for
        # these batched matrix–vector products on CPU
        row = (hist_g[:, :used] * g.unsqueeze(1)).sum(dim=2).double()  # (B, m_k)
        gram = _write_gram(gram, slot, row)
        if used == 1:
            alpha = z.new_ones(batch, 1)
        else:
            h = gram[:, :used, :used]
            scale = h.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-300)  # (B,)
            eye = torch.eye(used, dtype=h.dtype, device=h.device)
            h = h + (self.ridge * scale)[:, None, None] * eye
            a = torch.linalg.solve(h, h.new_ones(batch, used, 1)).squeeze(-1)  # (B, m_k)
            total = a.sum(dim=1, keepdim=True)
            ok = torch.isfinite(a).all(dim=1, keepdim=True) & (total.abs() > 1e-300)
            latest = torch.zeros_like(a)
            latest[:, slot] = 1.0
            alpha = torch.where(ok, a / torch.where(ok, total, 1.0), latest).to(z.dtype)
        weights = alpha.unsqueeze(1)  # (B, 1, m_k)
        new = torch.bmm(weights, hist_f[:, :used]).squeeze(1)  # Σ α_i T(u_i)
        if self.beta != 1.0:  # β Σα T(u_i) + (1 − β) Σα u_i = Σα T(u_i) − (1 − β) Σα G_i
            new = new - (1.0 - self.beta) * torch.bmm(weights, hist_g[:, :used]).squeeze(1)
        return new.reshape(z.shape), (hist_f, hist_g, gram)


def _recording(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _write(buf: Tensor, slot: int, value: Tensor) -> Tensor:
    """buf[:, slot] = value; in place without autograd, out of place when a graph is recorded."""
    if _recording(buf, value):
        mask = torch.zeros(buf.shape[1], 1, dtype=torch.bool, device=buf.device)
        mask[slot] = True
        return torch.where(mask, value.unsqueeze(1), buf)
    buf[:, slot] = value
    return buf


def _write_gram(gram: Tensor, slot: int, row: Tensor) -> Tensor:
    """gram[:, slot, :m_k] = gram[:, :m_k, slot] = row (symmetric update of G Gᵀ)."""
    used = row.shape[1]
    if _recording(gram, row):
        full = torch.nn.functional.pad(row, (0, gram.shape[1] - used))  # (B, m)
        idx = torch.arange(gram.shape[1], device=gram.device)
        gram = torch.where((idx == slot)[None, :, None], full[:, None, :], gram)
        return torch.where((idx == slot)[None, None, :], full[:, :, None], gram)
    gram[:, slot, :used] = row
    gram[:, :used, slot] = row
    return gram
