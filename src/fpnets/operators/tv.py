"""Total variation: the discrete gradient ∇, TV, and TV-regularised CT reconstruction in the box by the
Chambolle–Pock primal–dual method.

Discretisation (pixel units): ∇u = (D_x u, D_y u) with forward differences along the columns (x,
last axis) and rows (y), zero at the last column/row (Neumann boundary); ∇ᵀ = −div. ‖∇‖₂² ≤ 8.
TV(u) = Σ_p ‖(∇u)_p‖₂ (isotropic).

Problem, per sample b:  min_{u ∈ [lo, hi]^{N×N}}  ½ ‖A u − d_b‖² + λ_b TV(u).

Chambolle–Pock (θ = 1) on K = [A; ∇] with dual variables p (sinogram) and q (gradient field):

    p ← (p + σ (A ū − d)) / (1 + σ),   q ← Π_{‖q_p‖ ≤ λ}(q + σ ∇ū),
    u⁺ ← Π_[lo,hi](u − τ (Aᵀ p + ∇ᵀ q)),   ū ← 2 u⁺ − u,

which converges when τ σ ‖K‖² < 1. Here ‖K‖² ≤ ‖A‖² + ‖∇‖² ≤ ‖A‖² + 8, with ‖A‖ from power
iteration enlarged by 2 % (power iteration approaches ‖A‖ from below), and τ = σ = 0.99 / ‖K‖ bound.

Duality gap (an upper bound on the distance of the primal objective to its minimum):
G = P(u) − D(p, q) ≥ 0 with P(u) = ½‖Au − d‖² + λ TV(u) and
D(p, q) = −½‖p‖² − ⟨d, p⟩ − Σ_p max(lo · w_p, hi · w_p), w = −(Aᵀp + ∇ᵀq), for ‖q_p‖ ≤ λ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .radon import RadonTransform

__all__ = [
    "TVResult",
    "divergence",
    "gradient",
    "select_tv_lambda",
    "smoothed_tv_gradient",
    "total_variation",
    "tv_reconstruct",
]


def gradient(u: Tensor) -> Tensor:
    """∇u by forward differences with a zero last difference: (B, 1, N, M) -> (B, 2, N, M), channel 0
    along x (last axis), channel 1 along y (rows)."""
    gx = torch.zeros_like(u)
    gy = torch.zeros_like(u)
    gx[..., :, :-1] = u[..., :, 1:] - u[..., :, :-1]
    gy[..., :-1, :] = u[..., 1:, :] - u[..., :-1, :]
    return torch.cat([gx, gy], dim=1)


def divergence(q: Tensor) -> Tensor:
    """div q = −∇ᵀ q, the negative adjoint of :func:`gradient`: (B, 2, N, M) -> (B, 1, N, M)."""
    qx, qy = q[:, :1], q[:, 1:]
    dx = torch.zeros_like(qx)
    dy = torch.zeros_like(qy)
    dx[..., :, 0] = qx[..., :, 0]
    dx[..., :, 1:-1] = qx[..., :, 1:-1] - qx[..., :, :-2]
    dx[..., :, -1] = -qx[..., :, -2]
    dy[..., 0, :] = qy[..., 0, :]
    dy[..., 1:-1, :] = qy[..., 1:-1, :] - qy[..., :-2, :]
    dy[..., -1, :] = -qy[..., -2, :]
    return dx + dy


def total_variation(u: Tensor) -> Tensor:
    """TV(u) = Σ_p ‖(∇u)_p‖₂ per sample: (B, 1, N, M) -> (B,)."""
    return torch.linalg.vector_norm(gradient(u), dim=1).flatten(1).sum(dim=1)


def smoothed_tv_gradient(u: Tensor, eps: float = 1e-2) -> Tensor:
    """∇_u TV_ε(u) with TV_ε(u) = Σ_p sqrt(‖(∇u)_p‖² + ε²): (B, 1, N, M) -> (B, 1, N, M).

    Equals −div(∇u / sqrt(‖∇u‖² + ε²)); a descent direction for TV_ε (used by superiorisation).
    """
    g = gradient(u)  # (B, 2, N, M)
    mag = torch.sqrt(g.square().sum(dim=1, keepdim=True) + eps * eps)
    return -divergence(g / mag)


@dataclass(frozen=True)
class TVResult:
    """What :func:`tv_reconstruct` returns.

    Attributes:
        image: (B, 1, N, N) the last primal iterate u (in the box).
        gap: (B,) the duality gap P(u) − D(p, q) ≥ 0 at the last iterate (an upper bound on
            P(u) − min P).
        primal: (B,) P(u) = ½‖Au − d‖² + λ TV(u).
        dual: (B,) D(p, q).
        iterations: iterations run (the same for the whole batch).
        converged: (B,) bool, gap ≤ tol · max(P(u), tiny) when a tolerance was given, else all False.
    """

    image: Tensor
    gap: Tensor
    primal: Tensor
    dual: Tensor
    iterations: int
    converged: Tensor


def _lambda_tensor(lam: float | Tensor, batch: int, like: Tensor) -> Tensor:
    lam_t = torch.as_tensor(lam, dtype=like.dtype, device=like.device)
    if lam_t.dim() == 0:
        lam_t = lam_t.expand(batch)
    if lam_t.shape != (batch,):
        raise ValueError(
            f"tv_reconstruct: lam must be a number or a (B,) = ({batch},) tensor, got {tuple(lam_t.shape)}"
        )
    if not torch.isfinite(lam_t).all() or (lam_t < 0).any():
        raise ValueError("tv_reconstruct: lam (the TV weight λ) must be finite and >= 0")
    return lam_t


def _objectives(
    radon: RadonTransform, u: Tensor, p: Tensor, q: Tensor, d: Tensor, lam: Tensor, box: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """(P(u), D(p, q)) per sample."""
    res = radon.forward(u) - d
    primal = 0.5 * res.square().flatten(1).sum(1) + lam * total_variation(u)
    w = -(radon.adjoint(p) - divergence(q))  # −Kᵀ y, (B, 1, N, N)
    support = torch.maximum(box[0] * w, box[1] * w).flatten(1).sum(1)
    dual = -0.5 * p.square().flatten(1).sum(1) - (d * p).flatten(1).sum(1) - support
    return primal, dual


def tv_reconstruct(
    radon: RadonTransform,
    d: Tensor,
    lam: float | Tensor,
    *,
    iterations: int = 300,
    tol: float | None = None,
    check_every: int = 25,
    u0: Tensor | None = None,
    box: tuple[float, float] = (0.0, 1.0),
) -> TVResult:
    """Chambolle–Pock for min_{u ∈ box} ½‖A u − d‖² + λ TV(u), batched (module docstring).

    Args:
        radon: A.
        d: (B, 1, n_angles, n_detectors) sinograms.
        lam: λ ≥ 0, a number or a (B,) tensor (one weight per sample).
        iterations: the most iterations.
        tol: stop when every sample's duality gap ≤ tol · P(u) (checked every ``check_every``
            iterations); None runs all iterations.
        u0: (B, 1, N, N) start (default: zeros); clamped to the box.
        box: (lo, hi).

    Returns:
        a :class:`TVResult` with the image and its duality gap. Runs without autograd.
    """
    g = radon.geometry
    if not isinstance(d, Tensor) or d.dim() != 4 or tuple(d.shape[1:]) != (1, *g.sinogram_shape):
        shape = tuple(d.shape) if isinstance(d, Tensor) else type(d).__name__
        raise ValueError(
            f"tv_reconstruct expects sinograms of shape (B, 1, {g.n_angles}, {g.n_detectors}), got {shape}"
        )
    if not torch.isfinite(d).all():
        raise ValueError("tv_reconstruct: the sinograms hold NaN or Inf values")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"tv_reconstruct: iterations must be a positive integer, got {iterations!r}")
    if not box[0] < box[1]:
        raise ValueError(f"tv_reconstruct: box must be (lo, hi) with lo < hi, got {box!r}")
    batch = d.shape[0]
    lam_t = _lambda_tensor(lam, batch, d)
    k_norm = math.sqrt((1.02 * radon.norm()) ** 2 + 8.0)  # ‖K‖ bound
    tau = sigma = 0.99 / k_norm  # τ σ ‖K‖² ≤ 0.98 < 1
    with torch.no_grad():
        if u0 is None:
            u = torch.zeros(batch, 1, *g.image_shape, dtype=d.dtype, device=d.device)
        else:
            if tuple(u0.shape) != (batch, 1, *g.image_shape):
                raise ValueError(
                    f"tv_reconstruct: u0 must have shape ({batch}, 1, {g.n}, {g.n}), got {tuple(u0.shape)}"
                )
            u = u0.detach().to(d).clamp(*box)
        u_bar = u.clone()
        p = torch.zeros_like(d)  # (B, 1, K, D)
        q = torch.zeros(batch, 2, *g.image_shape, dtype=d.dtype, device=d.device)  # (B, 2, N, N)
        lam_b = lam_t.view(batch, 1, 1, 1)
        done = 0
        converged = torch.zeros(batch, dtype=torch.bool, device=d.device)
        for k in range(1, iterations + 1):
            p = (p + sigma * (radon.forward(u_bar) - d)) / (1 + sigma)
            q = q + sigma * gradient(u_bar)
            mag = torch.linalg.vector_norm(q, dim=1, keepdim=True)  # (B, 1, N, N)
            q = q / torch.clamp(mag / lam_b.clamp_min(torch.finfo(d.dtype).tiny), min=1.0)
            if (lam_t == 0).any():
                q = torch.where(lam_b == 0, torch.zeros_like(q), q)
            u_new = (u - tau * (radon.adjoint(p) - divergence(q))).clamp(*box)
            u_bar = 2 * u_new - u
            u = u_new
            done = k
            if tol is not None and k % check_every == 0:
                primal, dual = _objectives(radon, u, p, q, d, lam_t, box)
                converged = (primal - dual) <= tol * primal.clamp_min(torch.finfo(d.dtype).tiny)
                if converged.all():
                    break
        primal, dual = _objectives(radon, u, p, q, d, lam_t, box)
        gap = primal - dual
        if tol is not None:
            converged = gap <= tol * primal.clamp_min(torch.finfo(d.dtype).tiny)
    return TVResult(image=u, gap=gap, primal=primal, dual=dual, iterations=done, converged=converged)


def select_tv_lambda(
    radon: RadonTransform,
    sinograms: Tensor,
    images: Tensor,
    lambdas: Sequence[float],
    score: Callable[[Tensor, Tensor], Tensor],
    *,
    iterations: int = 300,
    batch_size: int = 64,
) -> tuple[float, dict[float, float]]:
    """Pick λ on a validation set: the λ whose reconstructions have the highest mean ``score``.

    Args:
        sinograms: (n, 1, K, D) validation measurements; images: (n, 1, N, N) their ground truth.
        lambdas: the candidate λ values.
        score: per-sample quality, higher is better, ``score(reconstruction, truth) -> (B,)``
            (for example :func:`fpnets.tasks.ct.metrics.psnr`).
        iterations: Chambolle–Pock iterations per reconstruction.

    Returns:
        (best λ, {λ: mean score}).
    """
    if len(lambdas) == 0:
        raise ValueError("select_tv_lambda: give at least one candidate λ")
    if sinograms.shape[0] != images.shape[0]:
        raise ValueError(
            f"select_tv_lambda: {sinograms.shape[0]} sinograms but {images.shape[0]} images; they must pair up"
        )
    scores: dict[float, float] = {}
    for lam in lambdas:
        total = 0.0
        for start in range(0, sinograms.shape[0], batch_size):
            d = sinograms[start : start + batch_size]
            u = tv_reconstruct(radon, d, float(lam), iterations=iterations).image
            total += float(score(u, images[start : start + batch_size].to(u)).sum())
        scores[float(lam)] = total / sinograms.shape[0]
    best = max(scores, key=lambda k: scores[k])
    return best, scores
