"""Figures for traffic predictions (matplotlib, imported lazily).

- :func:`flow_scatter`: predicted vs true link flows, with the identity line.
- :func:`network_map`: the network drawn from its node coordinates, links coloured by a value per
  link (a flow, or the error of a prediction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .network import Network

__all__ = ["flow_scatter", "network_map"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("traffic plots need matplotlib: pip install 'fpnets[train]'") from exc
    return plt


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def flow_scatter(pred: Any, target: Any, path: str | Path | None = None, *, title: str = "") -> Any:
    """Scatter of predicted vs true link flows (all samples and links); returns the figure (saved to ``path``)."""
    plt = _pyplot()
    p, t = _array(pred).ravel(), _array(target).ravel()
    if p.shape != t.shape:
        raise ValueError(f"flow_scatter: prediction {p.shape} and target {t.shape} differ")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(t, p, s=2, alpha=0.3)
    hi = float(max(t.max(initial=0), p.max(initial=0)))
    ax.plot([0, hi], [0, hi], "k--", lw=0.8)
    ax.set_xlabel("equilibrium link flow")
    ax.set_ylabel("predicted link flow")
    ax.set_title(title or "predicted vs true link flows")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
        plt.close(fig)
    return fig


def network_map(
    network: Network,
    values: Any,
    path: str | Path | None = None,
    *,
    label: str = "link flow",
    cmap: str = "viridis",
    title: str = "",
) -> Any:
    """The network drawn from node coordinates, each link coloured by ``values`` (E,).

    Raises ValueError when the network has no coordinates (no ``*_node.tntp`` file).
    """
    plt = _pyplot()
    from matplotlib.collections import LineCollection

    if network.coordinates is None:
        raise ValueError(
            f"network_map: network {network.name!r} has no node coordinates (no *_node.tntp file)"
        )
    v = _array(values)
    if v.shape != (network.num_links,):
        raise ValueError(f"network_map: values must have shape ({network.num_links},), got {v.shape}")
    xy = network.coordinates
    a, b = xy[network.tail], xy[network.head]  # (E, 2)
    # offset the two directions of a two-way link sideways so both are visible
    d = b - a
    normal = np.stack([-d[:, 1], d[:, 0]], 1) / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    shift = 0.006 * np.ptp(xy[np.isfinite(xy).all(1)], axis=0).max() * normal
    segments = np.stack([a + shift, b + shift], 1)  # (E, 2, 2)
    fig, ax = plt.subplots(figsize=(6, 6))
    lines = LineCollection(segments, array=v, cmap=cmap, linewidths=2.0)
    ax.add_collection(lines)
    ax.scatter(xy[:, 0], xy[:, 1], s=8, c="k", zorder=3)
    ax.autoscale()
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(lines, ax=ax, label=label, shrink=0.8)
    ax.set_title(title or f"{network.name}: {label}")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=150)
        plt.close(fig)
    return fig
