"""Classical and learned baselines with the F-FPN's call signature ``model(d) -> u``:
(B, 1, n_angles, n_detectors) sinograms to (B, 1, N, N) images.

- :class:`FBPReconstructor`: filtered back-projection (ramp or Hann), clipped to [0, 1]; no parameters.
- :class:`TVReconstructor`: min_{u ∈ [0,1]} ½‖Au − d‖² + λ TV(u) by Chambolle–Pock; no parameters,
  λ chosen on validation data by :meth:`TVReconstructor.select_lambda`.
- :class:`TVSuperiorization`: K iterations u ← P_d(u − β_k ∇TV_ε(u)/‖∇TV_ε(u)‖) with
  β_k = α η^k and two learnable scalars, α = softplus(a) > 0 and η = sigmoid(b) ∈ (0, 1).
The unrolled network baseline is :class:`fpnets.tasks.ct.models.UnrolledFFPN`.

Every model has ``solution = None`` (no fixed point is solved), like the explicit variants elsewhere,
and a no-op ``after_optimizer_step()``, so that a training loop can treat all CT models alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ..._solution import Solution
from ...operators.radon import FILTERS, ParallelBeamGeometry, RadonTransform, RelaxedProjection
from ...operators.tv import TVResult, select_tv_lambda, smoothed_tv_gradient, tv_reconstruct
from .metrics import psnr
from .models import INITS, check_sinograms

__all__ = ["FBPReconstructor", "TVReconstructor", "TVSuperiorization"]


class _Baseline(nn.Module):
    solution: Solution | None = None

    def after_optimizer_step(self) -> float | None:
        """Per-step hook of the CT models; nothing to do for a baseline. Returns None."""
        return None


class FBPReconstructor(_Baseline):
    """u = Π_[0,1](FBP(d)) (``clip=False`` leaves it unclipped); ``filter`` "ramp" or "hann"."""

    def __init__(self, geometry: ParallelBeamGeometry, filter: str = "hann", clip: bool = True) -> None:
        super().__init__()
        if filter not in FILTERS:
            raise ValueError(f"unknown FBP filter {filter!r}; valid filters: {', '.join(FILTERS)}")
        self.geometry = geometry
        self.radon = RadonTransform(geometry)
        self.filter = filter
        self.clip = clip
        self.solution: Solution | None = None

    def forward(self, d: Tensor) -> Tensor:  # (B, 1, K, D) -> (B, 1, N, N)
        check_sinograms(d, self.geometry, "FBPReconstructor")
        u = self.radon.fbp(d, self.filter)  # type: ignore[arg-type]
        return u.clamp(0.0, 1.0) if self.clip else u


class TVReconstructor(_Baseline):
    """u = argmin_{u ∈ [0,1]} ½‖Au − d‖² + λ TV(u) (Chambolle–Pock, :func:`fpnets.operators.tv.tv_reconstruct`).

    ``self.last_result`` keeps the last :class:`~fpnets.operators.tv.TVResult` (with its duality gap).
    """

    def __init__(self, geometry: ParallelBeamGeometry, lam: float = 1e-3, iterations: int = 300) -> None:
        super().__init__()
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
            raise ValueError(f"TVReconstructor: lam (λ) must be a finite number >= 0, got {lam!r}")
        self.geometry = geometry
        self.radon = RadonTransform(geometry)
        self.lam = float(lam)
        self.iterations = iterations
        self.solution: Solution | None = None
        self.last_result: TVResult | None = None

    def forward(self, d: Tensor) -> Tensor:  # (B, 1, K, D) -> (B, 1, N, N)
        check_sinograms(d, self.geometry, "TVReconstructor")
        self.last_result = tv_reconstruct(self.radon, d, self.lam, iterations=self.iterations)
        return self.last_result.image

    def select_lambda(
        self,
        sinograms: Tensor,
        images: Tensor,
        lambdas: Sequence[float] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
        score: Callable[[Tensor, Tensor], Tensor] = psnr,
    ) -> dict[float, float]:
        """Set ``self.lam`` to the candidate with the best mean ``score`` (PSNR by default, higher is
        better) on the given validation pairs; returns {λ: mean score}."""
        best, scores = select_tv_lambda(
            self.radon, sinograms, images, lambdas, score, iterations=self.iterations
        )
        self.lam = best
        return scores


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class TVSuperiorization(_Baseline):
    """TV superiorisation with two learnable scalars (module docstring).

    u₀ = Π_[0,1](FBP d) or 0; for k = 0 … K − 1: g = ∇TV_ε(u_k), u_{k+1} = P_d(u_k − β_k g/‖g‖), with
    β_k = α η^k (summable perturbations), α = softplus(a), η = sigmoid(b); P_d the relaxed projection
    step. Gradients flow through all K iterations.

    Args:
        iterations: K.
        step, decay: initial α > 0 and η ∈ (0, 1).
        eps: smoothing ε of TV_ε.
    """

    def __init__(
        self,
        geometry: ParallelBeamGeometry,
        iterations: int = 20,
        step: float = 1.0,
        decay: float = 0.9,
        eps: float = 1e-2,
        init: str = "fbp",
        fbp_filter: str = "hann",
        relaxation: float = 1.99,
        weighting: Literal["landweber", "sart"] = "landweber",
    ) -> None:
        super().__init__()
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"TVSuperiorization: iterations must be a positive integer, got {iterations!r}")
        if not step > 0:
            raise ValueError(f"TVSuperiorization: step (α) must be > 0, got {step!r}")
        if not 0 < decay < 1:
            raise ValueError(f"TVSuperiorization: decay (η) must lie in (0, 1), got {decay!r}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; valid starting points: {', '.join(INITS)}")
        self.geometry = geometry
        self.radon = RadonTransform(geometry)
        self.projection = RelaxedProjection(self.radon, relaxation=relaxation, weighting=weighting)
        self.iterations = iterations
        self.eps = float(eps)
        self.init = init
        self.fbp_filter = fbp_filter
        self.step_param = nn.Parameter(torch.tensor(_inverse_softplus(step)))  # a
        self.decay_param = nn.Parameter(torch.tensor(math.log(decay / (1 - decay))))  # b
        self.solution: Solution | None = None

    @property
    def step(self) -> Tensor:
        """α = softplus(a)."""
        return nn.functional.softplus(self.step_param)

    @property
    def decay(self) -> Tensor:
        """η = sigmoid(b)."""
        return torch.sigmoid(self.decay_param)

    def forward(self, d: Tensor) -> Tensor:  # (B, 1, K, D) -> (B, 1, N, N)
        check_sinograms(d, self.geometry, "TVSuperiorization")
        if self.init == "zeros":
            u = torch.zeros(d.shape[0], 1, *self.geometry.image_shape, dtype=d.dtype, device=d.device)
        else:
            u = self.radon.fbp(d, self.fbp_filter).clamp(0.0, 1.0)  # type: ignore[arg-type]
        alpha, eta = self.step.to(d), self.decay.to(d)
        beta = alpha
        for _ in range(self.iterations):
            g = smoothed_tv_gradient(u, self.eps)  # (B, 1, N, N)
            norm = torch.linalg.vector_norm(g.flatten(1), dim=1).clamp_min(torch.finfo(g.dtype).tiny)
            u = self.projection(u - beta * g / norm.view(-1, 1, 1, 1), d)
            beta = beta * eta
        return u
