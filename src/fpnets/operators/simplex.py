"""Euclidean projection onto the probability simplex Δⁿ and onto products of simplices.

Δⁿ = {x ∈ ℝⁿ : x ≥ 0, Σᵢ xᵢ = 1}. The projection P_Δ(y) = argmin_{x ∈ Δ} ‖x − y‖₂ is
x = max(y − θ, 0) with the threshold θ chosen so that Σᵢ max(yᵢ − θ, 0) = 1. Sorting y in
decreasing order (u₁ ≥ … ≥ uₙ) with partial sums cₖ = Σ_{i≤k} uᵢ, let ρ be the largest k with
uₖ − (cₖ − 1)/k > 0; then θ = (c_ρ − 1)/ρ (Held, Wolfe, Crowder 1974; Duchi et al. 2008).

Everything is vectorised over leading dimensions (one sort per call, no loop over samples) and
differentiable with autograd (the map is piecewise affine; the gradient is that of the active piece).

- :func:`project_simplex`: P_Δ along one dimension of a tensor of any shape.
- :func:`project_simplex_product`: P_{Δ^{n₁} × … × Δ^{n_P}}, for a (…, P, n) tensor (equal blocks)
  or a (…, n₁ + … + n_P) tensor with a list of block sizes.
- :func:`simplex_threshold`: the threshold θ itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["project_simplex", "project_simplex_product", "simplex_threshold"]


def _check(y: Tensor, what: str) -> None:
    if not isinstance(y, Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, got {type(y).__name__}")
    if not y.is_floating_point():
        raise TypeError(
            f"{what}: expected a floating-point tensor, got dtype {y.dtype}; cast it with .float()"
        )
    if y.dim() == 0:
        raise ValueError(f"{what}: expected at least one dimension (the simplex coordinates), got a scalar")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(
            f"{what}: the input holds NaN or Inf; the projection is defined for finite vectors only"
        )


def simplex_threshold(y: Tensor, dim: int = -1) -> Tensor:
    """θ(y) with P_Δ(y) = max(y − θ, 0), along ``dim`` (kept with size 1).

    Args:
        y: (…, n, …) finite floating-point tensor; ``dim`` holds the n simplex coordinates.

    Returns:
        θ shaped like ``y`` with ``dim`` reduced to size 1.
    """
    _check(y, "simplex_threshold")
    n = y.shape[dim]
    if n == 0:
        raise ValueError("simplex_threshold: the simplex dimension has size 0; Δ⁰ is empty")
    u = torch.sort(y, dim=dim, descending=True).values  # u₁ ≥ … ≥ uₙ
    c = torch.cumsum(u, dim=dim) - 1.0  # cₖ − 1
    shape = [1] * y.dim()
    shape[dim] = n
    k = torch.arange(1, n + 1, dtype=y.dtype, device=y.device).reshape(shape)
    support = (u * k > c).sum(dim=dim, keepdim=True)  # ρ ≥ 1: the condition holds on a prefix
    return torch.gather(c, dim, support - 1) / support.to(y.dtype)  # θ = (c_ρ − 1)/ρ


def project_simplex(y: Tensor, dim: int = -1) -> Tensor:
    """P_Δ(y) = argmin_{x ∈ Δⁿ} ‖x − y‖₂ along ``dim``, batched over every other dimension.

    Args:
        y: (…, n, …) finite floating-point tensor.
        dim: the dimension holding the n coordinates.

    Returns:
        x shaped like ``y``: xᵢ ≥ 0 and Σᵢ xᵢ = 1 along ``dim``.
    """
    theta = simplex_threshold(y, dim)
    return torch.clamp(y - theta, min=0.0)


def project_simplex_product(y: Tensor, sizes: Sequence[int] | None = None) -> Tensor:
    """Projection onto a product of simplices Δ^{n₁} × … × Δ^{n_P} (each block projected on its own).

    The product set is convex and the squared distance separates over blocks, so the projection is
    the blockwise projection.

    Args:
        y: with ``sizes=None``, a (…, P, n) tensor: P blocks of n coordinates each (e.g. the mixed
            strategies of P players with n actions). With ``sizes``, a (…, n₁ + … + n_P) tensor whose
            last dimension is the concatenation of the blocks.
        sizes: the block sizes (n₁, …, n_P), positive integers summing to ``y.shape[-1]``.

    Returns:
        the projection, shaped like ``y``.
    """
    if sizes is None:
        if not isinstance(y, Tensor) or y.dim() < 2:
            raise ValueError(
                "project_simplex_product: without sizes the input must be (..., P, n) with P blocks of n "
                f"coordinates, got shape {tuple(getattr(y, 'shape', ()))}; pass sizes=[n1, ...] for a flat "
                "concatenation"
            )
        return project_simplex(y, dim=-1)
    sizes = [int(s) for s in sizes]
    if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f"project_simplex_product: block sizes must be positive integers, got {sizes}")
    _check(y, "project_simplex_product")
    if sum(sizes) != y.shape[-1]:
        raise ValueError(
            f"project_simplex_product: block sizes {sizes} sum to {sum(sizes)} but the last dimension of the "
            f"input has size {y.shape[-1]}"
        )
    if len(set(sizes)) == 1:  # equal blocks: one batched projection
        blocks = y.reshape(*y.shape[:-1], len(sizes), sizes[0])  # (..., P, n)
        return project_simplex(blocks, dim=-1).reshape(y.shape)
    return torch.cat([project_simplex(b, dim=-1) for b in torch.split(y, sizes, dim=-1)], dim=-1)
