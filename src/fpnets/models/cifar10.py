"""The paper's CIFAR-10 network for augmented training (32×32 RGB, latent 35×10×10).

Q: ConstantPad(4, value 0.449) (32 → 40) → conv 3→35 7×7 (replicate padding 3) → σ →
   32 residual blocks d ← BN_noaffine(σ(d + conv(Dropout2d(0.15)(σ(conv d))))), with
   AvgPool 2×2 after blocks 16 (40 → 20) and 32 (20 → 10)
R: z₀ = Q(d) + γ u; per block z ← BN_noaffine(σ(z + conv σ(conv z))); R = z_L; 5 blocks, γ = 0.5
S: σ(conv 35→35 3×3 stride 2 p1) (10 → 5) → Dropout(0.1) → Linear 875→10 (no bias)

843,430 parameters. Solve: tol 0.1, at most 50 iterations (Jacobian-based baseline: 1e-4, 500).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ArchConfig, ConvReadout, OuterBlock, Parts, latent_operator

IMAGE_SIZE = 32
CHANNELS = 35
LATENT_SIZE = 10
ENCODER_BLOCKS = 32
PAD_VALUE = 0.449


@dataclass(frozen=True)
class CIFAR10Config(ArchConfig):
    in_channels: int = 3
    num_classes: int = 10
    gamma: float = 0.5
    latent_blocks: int = 5
    dropout: float = 0.1
    encoder_dropout: float = 0.15
    tol: float = 0.1
    max_iter: int = 50
    jacobian_tol: float = 1e-4
    jacobian_max_iter: int = 500


class ResidualBlock(nn.Module):
    """d ← BN_noaffine(σ(d + conv₂(dropout(σ(conv₁ d))))): (B, 35, H, W) -> (B, 35, H, W)."""

    def __init__(self, channels: int, dropout: float, negative_slope: float) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.drop = nn.Dropout2d(dropout)
        self.norm = nn.BatchNorm2d(channels, affine=False)

    def forward(self, d: Tensor) -> Tensor:  # (B, C, H, W)
        s = self.negative_slope
        h = self.conv2(self.drop(F.leaky_relu(self.conv1(d), s)))  # (B, C, H, W)
        return self.norm(F.leaky_relu(d + h, s))


class CIFAR10Encoder(nn.Module):
    """Q(d): (B, C_in, 32, 32) -> (B, 35, 10, 10)."""

    def __init__(self, in_channels: int, dropout: float = 0.15, negative_slope: float = 0.1) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.pad = nn.ConstantPad2d(4, PAD_VALUE)
        self.conv = nn.Conv2d(in_channels, CHANNELS, 7, padding=3, padding_mode="replicate")
        self.blocks = nn.ModuleList(
            ResidualBlock(CHANNELS, dropout, negative_slope) for _ in range(ENCODER_BLOCKS)
        )
        self.pool = nn.AvgPool2d(2)

    def forward(self, d: Tensor) -> Tensor:  # (B, C_in, 32, 32)
        x = self.pad(d)  # (B, C_in, 40, 40)
        x = F.leaky_relu(self.conv(x), self.negative_slope)  # (B, 35, 40, 40)
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i % (ENCODER_BLOCKS // 2) == 0:
                x = self.pool(x)  # (B, 35, 20, 20) after block 16, (B, 35, 10, 10) after block 32
        return x


def build_parts(cfg: CIFAR10Config, variant: str) -> Parts:
    encoder = CIFAR10Encoder(cfg.in_channels, cfg.encoder_dropout, cfg.negative_slope)
    operator = latent_operator(cfg, CHANNELS, variant, OuterBlock)
    readout = ConvReadout(
        CHANNELS,
        CHANNELS,
        LATENT_SIZE,
        cfg.num_classes,
        stride=2,
        padding=1,
        dropout=cfg.dropout,
        channel_dropout=False,
        negative_slope=cfg.negative_slope,
    )  # (B, 35, 10, 10) -> (B, 35, 5, 5) -> (B, 875) -> (B, num_classes)
    return Parts(encoder, operator, readout, (cfg.in_channels, IMAGE_SIZE, IMAGE_SIZE))
