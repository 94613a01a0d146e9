"""A small FPN for scikit-learn's 8×8 digits (1 channel, 10 classes), the project's default dataset.

Not from the paper: the MNIST network scaled down, with the same structure (encoder, latent R
with latent BatchNorm and γ, convolutional readout).

Q: conv 1→16 3×3 p1 → BN → σ → conv 16→16 3×3 p1 → BN → σ           (B, 16, 8, 8)
R: z₀ = u + Q(d); per block z ← BN_noaffine(z + σ(σ(conv σ(conv z)))); R = γ z_L; 1 block, γ = 0.5
S: σ(conv 16→8 3×3, no padding) (8 → 6) → Dropout2d(0.1) → Linear 288→10 (no bias)

11,224 parameters. Solve: tol 0.01 (max over pixels of the channel norm), at most 30 iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ArchConfig, ConvReadout, Parts, latent_operator

IMAGE_SIZE = 8
LATENT_CHANNELS = 16
READOUT_CHANNELS = 8


@dataclass(frozen=True)
class DigitsConfig(ArchConfig):
    in_channels: int = 1
    num_classes: int = 10
    gamma: float = 0.5
    latent_blocks: int = 1
    dropout: float = 0.1
    tol: float = 1e-2
    max_iter: int = 30
    jacobian_tol: float = 1e-2
    jacobian_max_iter: int = 30


class DigitsEncoder(nn.Module):
    """Q(d): (B, C_in, 8, 8) -> (B, 16, 8, 8)."""

    def __init__(self, in_channels: int, negative_slope: float = 0.1) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.conv1 = nn.Conv2d(in_channels, LATENT_CHANNELS, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(LATENT_CHANNELS)
        self.conv2 = nn.Conv2d(LATENT_CHANNELS, LATENT_CHANNELS, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(LATENT_CHANNELS)

    def forward(self, d: Tensor) -> Tensor:  # (B, C_in, 8, 8)
        s = self.negative_slope
        x = F.leaky_relu(self.bn1(self.conv1(d)), s)  # (B, 16, 8, 8)
        return F.leaky_relu(self.bn2(self.conv2(x)), s)  # (B, 16, 8, 8)


def build_parts(cfg: DigitsConfig, variant: str) -> Parts:
    encoder = DigitsEncoder(cfg.in_channels, cfg.negative_slope)
    operator = latent_operator(cfg, LATENT_CHANNELS, variant)
    readout = ConvReadout(
        LATENT_CHANNELS,
        READOUT_CHANNELS,
        IMAGE_SIZE,
        cfg.num_classes,
        dropout=cfg.dropout,
        negative_slope=cfg.negative_slope,
    )  # (B, 16, 8, 8) -> (B, 8, 6, 6) -> (B, 288) -> (B, num_classes)
    return Parts(encoder, operator, readout, (cfg.in_channels, IMAGE_SIZE, IMAGE_SIZE))
