"""Image-quality metrics for CT reconstructions, per image, batched, in torch.

All take (B, 1, N, M) (or (B, N, M)) tensors ``x`` (reconstruction) and ``y`` (ground truth) and
return (B,) values; data range 1 by default (images in [0, 1]). Definitions follow
scikit-image's ``skimage.metrics`` (checked against it in the tests to 1e-4):

- MSE = mean_p (x_p − y_p)², lower is better.
- PSNR = 10 log₁₀(R² / MSE), R the data range, higher is better (+inf for identical images).
- SSIM with a 7 × 7 uniform window, K₁ = 0.01, K₂ = 0.03, sample covariances (normalised by
  n − 1 = 48), C₁ = (K₁R)², C₂ = (K₂R)², averaged over the pixels whose window lies inside the
  image (skimage crops (7 − 1)/2 = 3 pixels at each border); higher is better.

Computed in float64 and returned in the input's floating dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["METRIC_DIRECTIONS", "mse", "psnr", "ssim"]

METRIC_DIRECTIONS: dict[str, str] = {"psnr": "higher", "ssim": "higher", "mse": "lower"}
"""Whether a larger value of each metric is better ("higher") or worse ("lower")."""


def _pair(x: Tensor, y: Tensor, who: str) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{who} expects torch tensors")
    if x.shape != y.shape:
        raise ValueError(
            f"{who}: reconstruction and truth must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.dim() == 3:
        x, y = x.unsqueeze(1), y.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"{who} expects (B, 1, N, M) or (B, N, M) images, got {tuple(x.shape)}")
    return x.detach().to(torch.float64), y.detach().to(torch.float64, copy=False).to(x.device)


def _check_range(value: float, who: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{who}: data_range must be a finite number > 0, got {value!r}")


def _out_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float64


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per image, (B,); lower is better."""
    a, b = _pair(x, y, "mse")
    return (a - b).square().flatten(1).mean(1).to(_out_dtype(x))


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio 10 log₁₀(R² / MSE) in dB per image, (B,); higher is better."""
    _check_range(data_range, "psnr")
    a, b = _pair(x, y, "psnr")
    err = (a - b).square().flatten(1).mean(1)
    return (10.0 * torch.log10(data_range**2 / err)).to(_out_dtype(x))


def ssim(
    x: Tensor, y: Tensor, data_range: float = 1.0, win_size: int = 7, k1: float = 0.01, k2: float = 0.03
) -> Tensor:
    """Structural similarity per image (scikit-image's definition, uniform window), (B,); higher is better."""
    _check_range(data_range, "ssim")
    a, b = _pair(x, y, "ssim")
    if win_size % 2 != 1 or win_size < 3:
        raise ValueError(f"ssim: win_size must be odd and >= 3, got {win_size}")
    if min(a.shape[-2:]) < win_size:
        raise ValueError(
            f"ssim: images of size {tuple(a.shape[-2:])} are smaller than the {win_size}×{win_size} window"
        )
    n = win_size * win_size
    cov_norm = n / (n - 1)

    def mean(t: Tensor) -> Tensor:  # (B, 1, N, M) -> (B, 1, N − w + 1, M − w + 1): the cropped region
        return F.avg_pool2d(t, win_size, stride=1)

    ux, uy = mean(a), mean(b)
    vx = cov_norm * (mean(a * a) - ux * ux)
    vy = cov_norm * (mean(b * b) - uy * uy)
    vxy = cov_norm * (mean(a * b) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).to(_out_dtype(x))
