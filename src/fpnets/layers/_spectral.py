"""Linear and convolutional layers whose Lipschitz constant is bounded by construction.

The weight used is W_eff = W · c / max(‖W‖₂, c), with c = ``bound`` and ‖W‖₂ the exact spectral
norm of the linear map (SVD for dense layers; for a stride-1 convolution, the largest singular value
over the Fourier symbol of the circular convolution on a grid large enough to contain the
zero-padded one, which is an upper bound on the zero-padded operator's norm). There is no learnable
scale after the normalisation, so ‖W_eff‖₂ ≤ c holds for every parameter value. The norm is
differentiated through (the gradient is exact); under ``torch.no_grad`` it is cached per weight
version, so a fixed-point solve computes it once, not once per iteration.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_operator_norm(weight: Tensor, spatial: tuple[int, int]) -> Tensor:
    """Upper bound on ‖conv(·, weight)‖₂ for a stride-1 zero-padded 2-D convolution.

    weight: (C_out, C_in, k_h, k_w); spatial: the unpadded input's (H, W). Any zero-padded stride-1
    convolution of an H × W input keeps a subset of the outputs of the full linear convolution,
    which is the circular convolution on an (H + k_h − 1) × (W + k_w − 1) grid restricted to
    inputs supported on H × W; that circular operator's norm is the largest singular value of its
    Fourier symbol Ŵ(ω) over the grid's frequencies. With one input or one output channel Ŵ(ω) is
    a vector, whose spectral norm is its Euclidean norm (no SVD).
    """
    c_out, c_in, kh, kw = weight.shape
    n_h, n_w = spatial[0] + kh - 1, spatial[1] + kw - 1
    symbol = torch.fft.fft2(weight, s=(n_h, n_w))  # (C_out, C_in, n_h, n_w) complex
    if c_in == 1 or c_out == 1:
        return torch.sqrt((symbol.real**2 + symbol.imag**2).sum(dim=(0, 1)).amax())
    symbol = symbol.permute(2, 3, 0, 1).reshape(n_h * n_w, c_out, c_in)
    return torch.linalg.matrix_norm(symbol, ord=2).amax()


class _Bounded(nn.Module):
    """Shared rescaling W ↦ W · c / max(σ(W), c) with a no-grad cache of σ."""

    bound: float
    weight: nn.Parameter

    def _init_bound(self, bound: float) -> None:
        if not (isinstance(bound, (int, float)) and bound > 0 and math.isfinite(bound)):
            raise ValueError(f"{type(self).__name__}: bound must be a finite number > 0, got {bound!r}")
        self.bound = float(bound)
        self._cache: tuple[tuple, Tensor] | None = None

    def _sigma(self, key_extra: tuple) -> Tensor:
        raise NotImplementedError

    def _scale(self, key_extra: tuple = ()) -> Tensor:
        w = self.weight
        if torch.is_grad_enabled() and w.requires_grad:
            sigma = self._sigma(key_extra)
        else:
            key = (w._version, w.data_ptr(), w.dtype, w.device, key_extra)
            if self._cache is None or self._cache[0] != key:
                with torch.no_grad():
                    self._cache = (key, self._sigma(key_extra))
            sigma = self._cache[1]
        return self.bound / torch.clamp(sigma, min=self.bound)

    def spectral_norm(self, *key_extra: int) -> float:
        """‖W_eff‖₂ bound actually in force (≤ bound)."""
        with torch.no_grad():
            return float(self._sigma(tuple(key_extra)) * self._scale(tuple(key_extra)))


class SpectralLinear(_Bounded):
    """y = W_eff x + b with ‖W_eff‖₂ ≤ ``bound`` (so x ↦ y is ``bound``-Lipschitz)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bound: float = 1.0):
        super().__init__()
        lin = nn.Linear(in_features, out_features, bias=bias)
        self.weight = lin.weight
        self.bias = lin.bias
        self._init_bound(bound)

    def _sigma(self, key_extra: tuple) -> Tensor:
        return torch.linalg.matrix_norm(self.weight, ord=2)

    def effective_weight(self) -> Tensor:
        """W_eff = W · c / max(‖W‖₂, c)."""
        return self.weight * self._scale()

    def forward(self, x: Tensor) -> Tensor:  # (B, in) -> (B, out)
        return F.linear(x, self.effective_weight(), self.bias)


class SpectralConv2d(_Bounded):
    """Stride-1 2-D convolution with operator norm ≤ ``bound`` on every input size.

    ``padding`` defaults to "same" padding (k // 2); only zero padding and stride 1 are supported,
    the cases in which the Fourier bound holds.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: int | None = None,
        bias: bool = True,
        bound: float = 1.0,
    ) -> None:
        super().__init__()
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, bias=bias)
        self.weight = conv.weight
        self.bias = conv.bias
        self.padding = kernel_size // 2 if padding is None else int(padding)
        if self.padding < 0:
            raise ValueError(f"SpectralConv2d: padding must be >= 0, got {padding!r}")
        self._init_bound(bound)

    def _sigma(self, key_extra: tuple) -> Tensor:
        h, w = key_extra
        return conv_operator_norm(self.weight, (h, w))

    def effective_weight(self, spatial: tuple[int, int]) -> Tensor:
        """W_eff for inputs of spatial size (H, W)."""
        return self.weight * self._scale(tuple(spatial))

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H', W')
        if x.dim() != 4:
            raise ValueError(f"SpectralConv2d expects (B, C, H, W) input, got shape {tuple(x.shape)}")
        weight = self.effective_weight((x.shape[-2], x.shape[-1]))
        return F.conv2d(x, weight, self.bias, padding=self.padding)
