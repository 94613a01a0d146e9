"""Convex-potential residual layers: 1-Lipschitz by construction, and able to take a learned
gradient step on a convex regulariser (a TV-like one included).

For a linear map W, a bias b and a monotone activation σ with slope in [0, 1] (σ = Φ' for a convex
Φ), the layer

    h(u) = u − (2 / L²) Wᵀ σ(W u + b),   L ≥ ‖W‖₂,

is a gradient step with step 2/L² on the convex potential ψ(u) = Σ_i Φ((W u + b)_i), whose gradient
Wᵀσ(Wu + b) is L²-Lipschitz (its Jacobian WᵀΣ'W has spectrum in [0, L²]). A gradient step of size
2/L² on a convex L²-smooth function is nonexpansive, so Lip(h) ≤ 1 for every parameter value
(Meunier, Delattre, Araujo, Allauzen 2022, "A dynamical system perspective for Lipschitz neural
networks"). Here W is a stride-1 zero-padded convolution and Wᵀ its exact adjoint (the transposed
convolution with the same kernel and padding); L is the largest singular value of the Fourier
symbol of the circular convolution on an (H + k − 1) × (W + k − 1) grid, an upper bound of the
zero-padded operator's norm (:func:`fpnets.layers.conv_operator_norm`). With W = α·(forward
differences along x and y) and σ = hardtanh, ψ is α·(a Huber-smoothed anisotropic TV) and h is a
gradient step on it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._spectral import conv_operator_norm

__all__ = ["POTENTIAL_ACTIVATIONS", "ConvexPotentialConv2d"]

POTENTIAL_ACTIVATIONS = ("hardtanh", "tanh", "relu", "leaky_relu")
"""Monotone activations σ with slope in [0, 1] (σ = Φ', Φ convex): hardtanh (Φ = Huber, a smoothed
|·|: TV-like potentials), tanh (Φ = log cosh), relu (Φ = ½ max(0, t)²), leaky_relu (slope 0.05
below 0)."""

_INITS = ("difference", "random")


class ConvexPotentialConv2d(nn.Module):
    """h(u) = u − (2/L²) Wᵀ σ(W u + b): a 1-Lipschitz residual layer (module docstring).

    Args:
        channels: channels of u (1 for a CT image).
        hidden: output channels of W (the number of potential terms per pixel).
        kernel_size: odd size k of W's kernel ("same" zero padding k // 2).
        activation: σ, one of :data:`POTENTIAL_ACTIVATIONS`.
        init: "difference": W's output channel i is α times a forward difference of input
            channel i mod ``channels`` along x, y, and the two diagonals in turn (plus 10 % noise),
            so with σ = hardtanh the layer starts as a gradient step on a Huber-smoothed
            anisotropic TV of scale α; "random": PyTorch's default convolution initialisation.
        scale: a fixed factor α > 0 with W = α V and V the trainable ``weight``: the layer is
            h(u) = u − (2/(α L_V²)) Vᵀσ(α V u + b), L_V ≥ ‖V‖₂, so the optimizer moves O(1) entries
            of V whatever α is. With the "difference" initialisation and hardtanh, α sets the TV
            scale: the Huber threshold on a pixel difference is 1/α and the step on the TV term
            2/(α L_V²), so a larger α makes the layer a weaker and sharper TV step.

    Shapes: (B, channels, H, W) -> (B, channels, H, W). Lip(h) ≤ 1 for every parameter value
    (:attr:`lipschitz_bound`); L is differentiated in grad mode and cached per weight version and
    grid size under ``torch.no_grad`` (a fixed-point solve computes it once).
    """

    lipschitz_bound = 1.0
    """Lip(h) ≤ 1, for every parameter value."""

    def __init__(
        self,
        channels: int = 1,
        hidden: int = 8,
        kernel_size: int = 3,
        activation: str = "hardtanh",
        init: str = "difference",
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("hidden", hidden), ("kernel_size", kernel_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ConvexPotentialConv2d: {name} must be a positive integer, got {value!r}")
        if kernel_size % 2 == 0:
            raise ValueError(
                f"ConvexPotentialConv2d: kernel_size must be odd (same padding), got {kernel_size}"
            )
        if activation not in POTENTIAL_ACTIVATIONS:
            raise ValueError(
                f"ConvexPotentialConv2d: unknown activation {activation!r}; valid activations (monotone, "
                f"slope in [0, 1]): {', '.join(POTENTIAL_ACTIVATIONS)}"
            )
        if init not in _INITS:
            raise ValueError(f"ConvexPotentialConv2d: unknown init {init!r}; valid: {', '.join(_INITS)}")
        if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
            raise ValueError(f"ConvexPotentialConv2d: scale (α) must be a finite number > 0, got {scale!r}")
        conv = nn.Conv2d(channels, hidden, kernel_size, padding=kernel_size // 2)
        self.weight = conv.weight  # W: (hidden, channels, k, k)
        self.bias = conv.bias  # b: (hidden,)
        self.padding = kernel_size // 2
        self.activation = activation
        self.scale = float(scale)
        if init == "difference":
            self._difference_init()
        self._cache: tuple[tuple, Tensor] | None = None

    @torch.no_grad()
    def _difference_init(self) -> None:
        hidden, channels, k, _ = self.weight.shape
        if k == 1:
            raise ValueError("ConvexPotentialConv2d: init='difference' needs kernel_size >= 3")
        c = k // 2
        stencils = [
            ((c, c + 1), (c, c)),
            ((c + 1, c), (c, c)),
            ((c + 1, c + 1), (c, c)),
            ((c + 1, c - 1), (c, c)),
        ]
        w = torch.zeros_like(self.weight)
        for i in range(hidden):
            (pi, pj), (mi, mj) = stencils[(i // channels) % len(stencils)]
            w[i, i % channels, pi, pj] = 1.0
            w[i, i % channels, mi, mj] = -1.0
        w += 0.1 * torch.randn_like(w) / k
        self.weight.copy_(w)
        self.bias.zero_()

    def _sigma(self, x: Tensor) -> Tensor:
        a = self.activation
        if a == "hardtanh":
            return F.hardtanh(x)
        if a == "tanh":
            return torch.tanh(x)
        if a == "relu":
            return F.relu(x)
        return F.leaky_relu(x, 0.05)

    def norm_bound(self, spatial: tuple[int, int]) -> Tensor:
        """L_V ≥ ‖V‖₂ on inputs of spatial size (H, W), V the trainable weight (L = α L_V ≥ ‖W‖₂);
        differentiable in grad mode, cached otherwise."""
        w = self.weight
        spatial = (int(spatial[0]), int(spatial[1]))
        if torch.is_grad_enabled() and w.requires_grad:
            return conv_operator_norm(w, spatial)
        key = (w._version, w.data_ptr(), w.dtype, w.device, spatial)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, conv_operator_norm(w, spatial))
        return self._cache[1]

    def step_size(self, spatial: tuple[int, int]) -> float:
        """The step 2/L² = 2/(α L_V)² on inputs of spatial size (H, W)."""
        with torch.no_grad():
            return float(2.0 / (self.scale * self.norm_bound(spatial)) ** 2)

    def forward(self, u: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        if u.dim() != 4 or u.shape[1] != self.weight.shape[1]:
            raise ValueError(
                f"ConvexPotentialConv2d expects (B, {self.weight.shape[1]}, H, W) input, got shape "
                f"{tuple(u.shape)}"
            )
        v, a = self.weight, self.scale  # W = α V
        lip = self.norm_bound((u.shape[-2], u.shape[-1]))  # L_V
        z = self._sigma(F.conv2d(u, a * v, self.bias, padding=self.padding))  # σ(Wu + b): (B, hidden, H, W)
        grad = F.conv_transpose2d(z, v, padding=self.padding)  # Vᵀσ(Wu + b): (B, C, H, W)
        return u - (2.0 / (a * lip.clamp_min(1e-12) ** 2)) * grad  # u − (2/L²) Wᵀσ(Wu + b)
