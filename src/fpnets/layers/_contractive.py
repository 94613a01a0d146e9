"""Operators T(u; x) that are γ-contractions in u by construction, and Lipschitz tools."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._spectral import SpectralConv2d


def _check_gamma(gamma: float, who: str) -> float:
    if not (isinstance(gamma, (int, float)) and 0.0 < gamma < 1.0):
        raise ValueError(f"{who}: gamma (the contraction factor γ) must lie in (0, 1), got {gamma!r}")
    return float(gamma)


class Contraction(nn.Module):
    """T(u; x) = γ · B(u, x) for a body B that is 1-Lipschitz in u, hence Lip_u(T) ≤ γ < 1.

    The body's 1-Lipschitz property is the caller's promise (build it from
    :class:`SpectralLinear`, :class:`SpectralConv2d`, 1-Lipschitz activations and averages);
    check it with :func:`lipschitz_estimate`.
    """

    def __init__(self, body: nn.Module, gamma: float) -> None:
        super().__init__()
        self.body = body
        self.gamma = _check_gamma(gamma, "Contraction")

    def forward(self, u: Tensor, x: Tensor) -> Tensor:
        return self.gamma * self.body(u, x)


class ContractiveConvOperator(nn.Module):
    """A convolutional latent operator with Lip_u(T) ≤ γ, shaped like the paper's R.

    z₀ = u + x;  per block  z ← ½ (z + σ(W₂ σ(W₁ z + b₁) + b₂));  T(u; x) = γ z_L,
    with σ = LeakyReLU (1-Lipschitz) and ‖W_i‖₂ ≤ 1 (:class:`SpectralConv2d`), so every block is
    1-Lipschitz and T is a γ-contraction in u for every parameter value. No BatchNorm inside, so
    the operator never couples the samples of a batch.

    Shapes: u, x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(
        self,
        channels: int,
        gamma: float,
        blocks: int = 1,
        kernel_size: int = 3,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"ContractiveConvOperator: blocks must be >= 1, got {blocks!r}")
        if not 0.0 <= negative_slope <= 1.0:
            raise ValueError(
                f"ContractiveConvOperator: negative_slope must lie in [0, 1], got {negative_slope!r}"
            )
        self.gamma = _check_gamma(gamma, "ContractiveConvOperator")
        self.negative_slope = negative_slope
        self.convs = nn.ModuleList(
            nn.ModuleList(
                [
                    SpectralConv2d(channels, channels, kernel_size),
                    SpectralConv2d(channels, channels, kernel_size),
                ]
            )
            for _ in range(blocks)
        )

    def forward(self, u: Tensor, x: Tensor) -> Tensor:  # (B, C, H, W), (B, C, H, W)
        z = u + x
        for first, second in self.convs:  # type: ignore[misc]
            h = F.leaky_relu(first(z), self.negative_slope)
            h = F.leaky_relu(second(h), self.negative_slope)
            z = 0.5 * (z + h)
        return self.gamma * z


def lipschitz_estimate(
    f: Callable[[Tensor], Tensor],
    z: Tensor,
    *,
    iters: int = 30,
    per_sample: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """‖∂f/∂z‖₂ at z by power iteration on JᵀJ (Jacobian–vector products).

    Returns (B,) estimates when ``per_sample`` (J is block diagonal for a map that does not couple
    samples), else a 0-d tensor for the whole batch. Power iteration approaches the largest singular
    value from below, so the result is a lower bound of the local, hence the global, Lipschitz
    constant. Costs one evaluation of f with a graph and two vector–Jacobian products per iteration.
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"lipschitz_estimate: iters must be a positive integer, got {iters!r}")
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        y = f(z)
        if y.shape != z.shape:
            raise ValueError(
                f"lipschitz_estimate: f(z) has shape {tuple(y.shape)} but z has {tuple(z.shape)}"
            )
        dummy = torch.zeros_like(y, requires_grad=True)
        (jt_dummy,) = torch.autograd.grad(y, z, dummy, create_graph=True)  # Jᵀ·dummy

        def dims(t: Tensor) -> tuple[int, ...]:
            return tuple(range(1, t.dim())) if per_sample else tuple(range(t.dim()))

        def normalize(t: Tensor) -> tuple[Tensor, Tensor]:
            n = torch.linalg.vector_norm(t, dim=dims(t), keepdim=True)
            return t / n.clamp_min(torch.finfo(t.dtype).tiny), n

        v, _ = normalize(torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator))
        sigma = torch.zeros(())
        for _ in range(iters):
            (jv,) = torch.autograd.grad(jt_dummy, dummy, v, retain_graph=True)  # J v
            (jtjv,) = torch.autograd.grad(y, z, jv, retain_graph=True)  # Jᵀ J v
            v, n = normalize(jtjv)
            sigma = n.sqrt()
    return sigma.reshape(-1) if per_sample else sigma.reshape(())


def _channel_norm(t: Tensor) -> Tensor:
    """‖t‖ over channels at each position: (B, C, ...) -> (B, ...); (B, n) -> (B,)."""
    return torch.linalg.vector_norm(t, dim=1)


@torch.no_grad()
def reference_rescale_(
    operator: Callable[[Tensor, Tensor], Tensor],
    u: Tensor,
    x: Tensor,
    gamma: float,
    params: Sequence[Tensor],
    blocks: int,
    generator: torch.Generator | None = None,
) -> float:
    """The reference implementation's Lipschitz rule, offered to reproduce the paper's models.

    Draws w = u + Δu and x' = x + Δx with Δu, Δx ~ N(0, I), estimates the ratio
    ρ = mean ‖T(w; x') − T(u; x')‖ / mean ‖w − u‖ (channel-wise norms, each averaged over samples
    and positions; both evaluations share the perturbed x', as in the reference, so ρ measures the
    dependence on u only) and, if ρ > γ, multiplies every
    tensor in ``params`` (the latent blocks' conv weights and biases) in place by (γ/ρ)^(1/blocks).
    This is a heuristic on a random direction, not a bound: prefer :class:`ContractiveConvOperator`
    for a guarantee. Returns ρ measured before any rescaling.
    """
    _check_gamma(gamma, "reference_rescale_")
    du = torch.randn(u.shape, dtype=u.dtype, device=u.device, generator=generator)
    dx = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    delta_t = operator(u + du, x + dx) - operator(u, x + dx)
    ratio = float(_channel_norm(delta_t).mean() / _channel_norm(du).mean().clamp_min(1e-12))
    rescale_to_gamma_(params, ratio, gamma, blocks)
    return ratio


@torch.no_grad()
def rescale_to_gamma_(params: Sequence[Tensor], ratio: float, gamma: float, blocks: int) -> bool:
    """The rescaling step of the reference Lipschitz rules (JFB's and F-FPN's), written once: if the
    measured ratio ρ exceeds γ, multiply every tensor in ``params`` in place by (γ/ρ)^(1/blocks)
    (``blocks`` layers composed, so the product of the factors is γ/ρ). Returns whether it rescaled."""
    if not (math.isfinite(ratio) and ratio > gamma):
        return False
    factor = (gamma / ratio) ** (1.0 / blocks)
    for p in params:
        p.mul_(factor)
    return True
