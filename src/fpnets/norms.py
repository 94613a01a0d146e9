"""Per-sample norms used for residuals: each maps a batch-first tensor (B, ...) to (B,)."""

from __future__ import annotations

import torch
from torch import Tensor


def l2_norm(t: Tensor) -> Tensor:
    """‖t_b‖₂ over all non-batch dimensions: (B, ...) -> (B,)."""
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)


def max_channel_norm(t: Tensor) -> Tensor:
    """max over pixels of the channel-wise 2-norm, per sample: (B, C, ...) -> (B,).

    This is the reference JFB implementation's stopping norm taken per sample (the reference takes
    the maximum over the batch as well).
    """
    if t.dim() < 3:
        raise ValueError(
            f"max_channel_norm needs (B, C, spatial...) tensors, got shape {tuple(t.shape)}; "
            "use l2_norm for flat latents"
        )
    # Σ_c t² then max, then one sqrt (monotone): 30× faster than vector_norm(dim=1) on NCHW tensors
    return t.square().sum(dim=1).reshape(t.shape[0], -1).amax(dim=1).sqrt()
