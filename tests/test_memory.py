"""Memory of a training step does not grow with depth for JFB and IFT; it does for Unrolled.

Measured as the bytes of tensors autograd saves for the backward pass (saved-tensor hooks), which is
what a deeper forward solve would add to the peak memory of a step.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fpnets import IFT, JFB, FixedPointLayer, Neumann, Picard, Unrolled
from fpnets.layers import SpectralConv2d


class SlowOperator(nn.Module):
    """T(u; x) = 0.95 · roll(u) + 0.04 · W u + x: contracts slowly, so every depth is really run."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = SpectralConv2d(channels, channels, 3)

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return 0.95 * torch.roll(u, 1, dims=-1) + 0.04 * self.conv(u) + x


def _saved_bytes(backward, depth: int) -> int:
    torch.manual_seed(0)
    op = SlowOperator(4)
    layer = FixedPointLayer(op, Picard(tol=0.0, max_iter=depth), backward, warn=False)
    x = torch.randn(8, 4, 6, 6)
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with warnings.catch_warnings(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        warnings.simplefilter("ignore")
        out = layer(x)
    assert layer.solution is not None and layer.solution.iterations.tolist() == [depth] * 8
    out.square().sum().backward()  # the step completes
    assert all(p.grad is not None for p in op.parameters())
    return total


@pytest.mark.parametrize("backward", [JFB(), IFT(Picard(tol=1e-4, max_iter=30), warn=False), Neumann(3)])
def test_jfb_and_ift_memory_is_constant_in_depth(backward) -> None:
    shallow, deep = _saved_bytes(backward, 10), _saved_bytes(backward, 60)
    assert shallow == deep > 0


def test_unrolled_memory_grows_with_depth() -> None:
    shallow, deep = _saved_bytes(Unrolled(), 10), _saved_bytes(Unrolled(), 60)
    assert deep > 4 * shallow
    assert deep > 4 * _saved_bytes(JFB(), 60)
