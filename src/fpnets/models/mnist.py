"""The paper's MNIST network (28×28 grey images, latent 32×9×9).

Q: conv 1→16 3×3 p1 → BN → σ → MaxPool(3) (28 → 9) → conv 16→32 3×3 p1 → BN → σ
R: z₀ = u + Q(d); per block z ← BN_noaffine(z + σ(σ(conv σ(conv z)))); R = γ z_L
S: σ(conv 32→16 3×3, no padding) (9 → 7) → Dropout2d(0.2) → Linear 784→10 (no bias)

σ∘σ in R's branch is the reference implementation's (see :class:`fpnets.models.LatentBlock`);
(docs/paper-facts.md writes one σ; with one σ the published explicit checkpoint scores 99.27%, not 99.29%).

Defaults (the paper's driver): 2 latent blocks, γ = 0.5, 54,352 parameters. The published
checkpoint used 1 block with γ = 0.9: 35,856 parameters. Solve: tol 0.1, at most 50 iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ArchConfig, ConvReadout, Parts, latent_operator

IMAGE_SIZE = 28
LATENT_CHANNELS = 32
LATENT_SIZE = 9


@dataclass(frozen=True)
class MNISTConfig(ArchConfig):
    in_channels: int = 1
    num_classes: int = 10
    gamma: float = 0.5
    latent_blocks: int = 2
    dropout: float = 0.2
    tol: float = 0.1
    max_iter: int = 50
    jacobian_tol: float = 0.1
    jacobian_max_iter: int = 50


class MNISTEncoder(nn.Module):
    """Q(d): (B, C_in, 28, 28) -> (B, 32, 9, 9)."""

    def __init__(self, in_channels: int, negative_slope: float = 0.1) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(3)
        self.conv2 = nn.Conv2d(16, LATENT_CHANNELS, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(LATENT_CHANNELS)

    def forward(self, d: Tensor) -> Tensor:  # (B, C_in, 28, 28)
        s = self.negative_slope
        x = F.leaky_relu(self.bn1(self.conv1(d)), s)  # (B, 16, 28, 28)
        x = self.pool(x)  # (B, 16, 9, 9)
        return F.leaky_relu(self.bn2(self.conv2(x)), s)  # (B, 32, 9, 9)


def build_parts(cfg: MNISTConfig, variant: str) -> Parts:
    encoder = MNISTEncoder(cfg.in_channels, cfg.negative_slope)
    operator = latent_operator(cfg, LATENT_CHANNELS, variant)
    readout = ConvReadout(
        LATENT_CHANNELS,
        16,
        LATENT_SIZE,
        cfg.num_classes,
        dropout=cfg.dropout,
        negative_slope=cfg.negative_slope,
    )  # (B, 32, 9, 9) -> (B, 16, 7, 7) -> (B, 784) -> (B, num_classes)
    return Parts(encoder, operator, readout, (cfg.in_channels, IMAGE_SIZE, IMAGE_SIZE))
