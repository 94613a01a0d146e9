"""The paper's SVHN network, also its unaugmented CIFAR-10 network (32×32 RGB, latent 64×8×8).

Q: stem conv 3→16 3×3 p1 (no bias) → BN → σ, then BasicBlocks 16→16, 16→32 (stride 2),
   32→64 (stride 2); BasicBlock(d) = σ(drop(BN(conv(drop(σ(BN(conv d)))))) + shortcut(d)) with
   Dropout2d(0.1) and the option-A shortcut (subsample by the stride, zero-pad the new channels)
R: z₀ = u + Q(d); per block z ← BN_noaffine(z + σ(σ(conv σ(conv z)))); R = γ z_L; 1 block, γ = 0.9
S: σ(conv 64→16 3×3, no padding) (8 → 6) → Dropout2d (0.2 SVHN, 0.1 CIFAR-10) → Linear 576→10

163,744 parameters, of which 256 belong to two BatchNorm layers of 64 channels that the
reference implementation creates but never uses (its ``bn_1``/``bn_2``). They are kept, as
``encoder.unused_bn1``/``encoder.unused_bn2`` (with ``requires_grad=False``, as they get no
gradient anyway), so the reference checkpoints map one-to-one onto this module.
Solve: SVHN tol 1e-4, at most 200 iterations; CIFAR-10 unaugmented tol 0.1, at most 50.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .base import ArchConfig, ConvReadout, Parts, latent_operator

IMAGE_SIZE = 32
LATENT_CHANNELS = 64
LATENT_SIZE = 8


@dataclass(frozen=True)
class SVHNConfig(ArchConfig):
    in_channels: int = 3
    num_classes: int = 10
    gamma: float = 0.9
    latent_blocks: int = 1
    dropout: float = 0.2
    encoder_dropout: float = 0.1
    tol: float = 1e-4
    max_iter: int = 200
    jacobian_tol: float = 1e-4
    jacobian_max_iter: int = 200


@dataclass(frozen=True)
class CIFAR10UnaugmentedConfig(SVHNConfig):
    """The SVHN network as the reference trained it on CIFAR-10 without augmentation."""

    dropout: float = 0.1
    tol: float = 0.1
    max_iter: int = 50
    jacobian_tol: float = 0.1
    jacobian_max_iter: int = 50


class BasicBlock(nn.Module):
    """ResNet basic block with dropout and the option-A shortcut: (B, C, H, W) -> (B, C', H/s, W/s)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, dropout: float, negative_slope: float
    ) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.stride = stride
        self.pad = out_channels - in_channels
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.drop = nn.Dropout2d(dropout)

    def shortcut(self, d: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C', H/s, W/s)
        if self.stride == 1 and self.pad == 0:
            return d
        d = d[:, :, :: self.stride, :: self.stride]
        half = self.pad // 2
        return F.pad(d, (0, 0, 0, 0, half, self.pad - half))  # zero channels on both sides

    def forward(self, d: Tensor) -> Tensor:  # (B, C, H, W)
        s = self.negative_slope
        h = self.drop(F.leaky_relu(self.bn1(self.conv1(d)), s))  # (B, C', H/s, W/s)
        h = self.drop(self.bn2(self.conv2(h)))  # (B, C', H/s, W/s)
        return F.leaky_relu(h + self.shortcut(d), s)


class SVHNEncoder(nn.Module):
    """Q(d): (B, C_in, 32, 32) -> (B, 64, 8, 8)."""

    def __init__(self, in_channels: int, dropout: float = 0.1, negative_slope: float = 0.1) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(
            BasicBlock(16, 16, 1, dropout, negative_slope),  # (B, 16, 32, 32)
            BasicBlock(16, 32, 2, dropout, negative_slope),  # (B, 32, 16, 16)
            BasicBlock(32, LATENT_CHANNELS, 2, dropout, negative_slope),  # (B, 64, 8, 8)
        )
        # Never used in forward: the reference's bn_1/bn_2 (kept for one-to-one checkpoints).
        self.unused_bn1 = nn.BatchNorm2d(LATENT_CHANNELS)
        self.unused_bn2 = nn.BatchNorm2d(LATENT_CHANNELS)
        for p in (*self.unused_bn1.parameters(), *self.unused_bn2.parameters()):
            p.requires_grad_(False)

    def forward(self, d: Tensor) -> Tensor:  # (B, C_in, 32, 32)
        x = F.leaky_relu(self.bn(self.conv(d)), self.negative_slope)  # (B, 16, 32, 32)
        return self.blocks(x)  # (B, 64, 8, 8)


def build_parts(cfg: SVHNConfig, variant: str) -> Parts:
    encoder = SVHNEncoder(cfg.in_channels, cfg.encoder_dropout, cfg.negative_slope)
    operator = latent_operator(cfg, LATENT_CHANNELS, variant)
    readout = ConvReadout(
        LATENT_CHANNELS,
        16,
        LATENT_SIZE,
        cfg.num_classes,
        dropout=cfg.dropout,
        negative_slope=cfg.negative_slope,
    )  # (B, 64, 8, 8) -> (B, 16, 6, 6) -> (B, 576) -> (B, num_classes)
    return Parts(encoder, operator, readout, (cfg.in_channels, IMAGE_SIZE, IMAGE_SIZE))
