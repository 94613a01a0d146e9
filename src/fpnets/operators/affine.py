"""Euclidean projection onto an affine set {x : M x = b}, batched.

P(x) = x − M⁺ (M x − b), with the pseudo-inverse M⁺ = V Σ⁻¹ Uᵀ from a truncated SVD of M (singular
values below ``rtol · σ_max`` are dropped, so rank-deficient M, such as a node–link incidence
matrix of rank n − 1, are handled). When b lies in the range of M, P(x) is the nearest point of
the set; otherwise P(x) is the nearest point of {x : M x = Π b}, Π the projection onto range(M)
(the least-squares consistent set), and :meth:`AffineProjection.inconsistency` reports ‖(I − Π) b‖.

Shapes: M is (m, n); x is (..., n) or, with ``dim``, has n along any dimension.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["AffineProjection", "project_affine"]


class AffineProjection(nn.Module):
    """x ↦ argmin_{y : M y = b} ‖y − x‖₂ for a fixed (m, n) matrix M (buffers, float64 SVD).

    Args:
        matrix: (m, n) M.
        rtol: singular values σ < rtol · σ_max are treated as zero (truncated SVD).

    Attributes:
        basis: (n, r) V_r, an orthonormal basis of the row space of M (r = rank).
        pinv: (n, m) M⁺ = V_r Σ_r⁻¹ U_rᵀ.
        rank: r.
    """

    def __init__(self, matrix: Tensor, *, rtol: float = 1e-10) -> None:
        super().__init__()
        if not isinstance(matrix, Tensor):
            matrix = torch.as_tensor(matrix)
        if matrix.dim() != 2:
            raise ValueError(
                f"AffineProjection: M must be a 2-D (m, n) matrix, got shape {tuple(matrix.shape)}"
            )
        if not torch.isfinite(matrix).all():
            raise ValueError("AffineProjection: M holds NaN or Inf")
        dtype = matrix.dtype if matrix.is_floating_point() else torch.get_default_dtype()
        m64 = matrix.detach().to(torch.float64)
        u, s, vh = torch.linalg.svd(m64, full_matrices=False)
        keep = s > rtol * (s.max() if s.numel() else 1.0)
        u, s, v = u[:, keep], s[keep], vh[keep].T
        self.rank = int(keep.sum())
        self.register_buffer("matrix", m64.to(dtype))
        self.register_buffer("basis", v.to(dtype))  # (n, r)
        self.register_buffer("pinv", (v / s) @ u.T)  # (n, m) float64 until cast below
        self.pinv = self.pinv.to(dtype)
        self.register_buffer("_range", u.to(dtype))  # (m, r)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)  # type: ignore[return-value]

    def offset(self, b: Tensor) -> Tensor:
        """M⁺ b: (..., m) -> (..., n), the minimum-norm point of the set."""
        return b @ self.pinv.to(b.dtype).T

    def inconsistency(self, b: Tensor) -> Tensor:
        """‖(I − Π) b‖ per row: (..., m) -> (...); 0 when M y = b has a solution."""
        r = self._range.to(b.dtype)
        return torch.linalg.vector_norm(b - (b @ r) @ r.T, dim=-1)

    def forward(
        self, x: Tensor, b: Tensor | None = None, *, offset: Tensor | None = None, dim: int = -1
    ) -> Tensor:
        """P(x) = x − V_r V_rᵀ x + M⁺ b, along dimension ``dim`` of x (size n).

        Args:
            x: (..., n, ...) points.
            b: right-hand side, broadcastable to x with m in place of n along ``dim``; or
            offset: the precomputed M⁺ b (broadcastable to x), instead of b.
        """
        n = self.matrix.shape[1]
        if x.shape[dim] != n:
            raise ValueError(
                f"AffineProjection: x must have size {n} along dim {dim}, got shape {tuple(x.shape)}"
            )
        if (b is None) == (offset is None):
            raise ValueError("AffineProjection: give exactly one of b and offset")
        xt = x.movedim(dim, -1)
        if offset is None:
            assert b is not None
            if b.shape[dim] != self.matrix.shape[0]:
                raise ValueError(
                    f"AffineProjection: b must have size {self.matrix.shape[0]} along dim {dim}, got {tuple(b.shape)}"
                )
            off = self.offset(b.movedim(dim, -1).to(x.dtype))
        else:
            off = offset.movedim(dim, -1)
        basis = self.basis.to(x.dtype)
        out = xt - (xt @ basis) @ basis.T + off
        return out.movedim(-1, dim)


def project_affine(x: Tensor, matrix: Tensor, b: Tensor, *, rtol: float = 1e-10) -> Tensor:
    """One-off projection of x (..., n) onto {y : M y = b} with b (..., m); see :class:`AffineProjection`."""
    return AffineProjection(matrix, rtol=rtol).to(x.device)(x, b)
