"""Figures for CT runs (matplotlib, imported lazily: ``pip install 'fpnets[train]'``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from .metrics import psnr, ssim

__all__ = ["reconstruction_figure"]


def reconstruction_figure(
    truth: Tensor, reconstructions: Mapping[str, Tensor], path: str | os.PathLike, max_images: int = 4
) -> Path:
    """Save a grid: one row per image (up to ``max_images``), the ground truth then each named
    reconstruction, titled with its PSNR (dB) and SSIM; grey scale on [0, 1], ``origin="lower"``
    (rows of the image run along y).

    truth: (B, 1, N, N); reconstructions: name -> (B, 1, N, N). Returns the written path.
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is in the train extra
        raise ImportError("CT figures need matplotlib: pip install 'fpnets[train]'") from exc
    for name, rec in reconstructions.items():
        if rec.shape != truth.shape:
            raise ValueError(
                f"reconstruction_figure: {name!r} has shape {tuple(rec.shape)}, truth {tuple(truth.shape)}"
            )
    rows = min(max_images, truth.shape[0])
    cols = 1 + len(reconstructions)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    scores = {
        n: (psnr(r[:rows], truth[:rows]), ssim(r[:rows], truth[:rows])) for n, r in reconstructions.items()
    }
    for i in range(rows):
        panels = [("truth", truth[i, 0], "")] + [
            (n, r[i, 0], f"\n{float(scores[n][0][i]):.1f} dB, SSIM {float(scores[n][1][i]):.3f}")
            for n, r in reconstructions.items()
        ]
        for j, (name, img, note) in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(img.detach().float().cpu().numpy(), cmap="gray", vmin=0, vmax=1, origin="lower")
            ax.set_title(name + note, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
