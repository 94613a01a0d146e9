"""CT reconstruction with feasibility-based fixed point networks (F-FPN; Heaton, Wu Fung, Gibali, Yin 2021).

Pieces for a Task wrapper (see docs/ct.md):

- data: :func:`load_ellipse_splits` (seeded random-ellipse phantoms, noisy sinograms, cached
  train/val/test :class:`CTSplit` tensors), :func:`load_ct_pairs` (user .npz / HDF5 pairs);
- models: :func:`build_ct_model` (``"ffpn"``, ``"ffpn-contractive"``, ``"ffpn-potential"``, ``"unrolled"``, ``"tvs"``,
  ``"tv"``, ``"fbp"``), every one called as ``model(d) -> u``;
- loss: :func:`reconstruction_loss` (MSE);
- metrics: :data:`METRICS` (name -> per-sample function) with :data:`METRIC_DIRECTIONS`;
- figures: :func:`fpnets.tasks.ct.figures.reconstruction_figure` (matplotlib, imported lazily).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ...operators.radon import ParallelBeamGeometry, geometry_preset
from .baselines import FBPReconstructor, TVReconstructor, TVSuperiorization
from .data import (
    CacheRebuildWarning,
    CTData,
    CTSplit,
    EllipseDataConfig,
    load_ct_pairs,
    load_ellipse_splits,
    measure,
    random_ellipses,
)
from .metrics import METRIC_DIRECTIONS, mse, psnr, ssim
from .models import (
    FFPN,
    ContractiveRegulariser,
    DifferenceRegulariser,
    FeasibilityOperator,
    PotentialRegulariser,
    UnrolledFFPN,
)

__all__ = [
    "FFPN",
    "METRICS",
    "METRIC_DIRECTIONS",
    "MODEL_KINDS",
    "CTData",
    "CTSplit",
    "CacheRebuildWarning",
    "ContractiveRegulariser",
    "DifferenceRegulariser",
    "EllipseDataConfig",
    "FBPReconstructor",
    "FeasibilityOperator",
    "PotentialRegulariser",
    "TVReconstructor",
    "TVSuperiorization",
    "UnrolledFFPN",
    "build_ct_model",
    "load_ct_pairs",
    "load_ellipse_splits",
    "measure",
    "mse",
    "psnr",
    "random_ellipses",
    "reconstruction_loss",
    "ssim",
]

METRICS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"psnr": psnr, "ssim": ssim, "mse": mse}
"""Per-sample metrics ``f(reconstruction, truth) -> (B,)``; directions in :data:`METRIC_DIRECTIONS`."""

MODEL_KINDS = ("ffpn", "ffpn-contractive", "ffpn-potential", "unrolled", "tvs", "tv", "fbp")
"""Kinds accepted by :func:`build_ct_model`."""


def reconstruction_loss(u: Tensor, target: Tensor) -> Tensor:
    """The training loss: mean squared error over batch and pixels (the paper's ``nn.MSELoss``)."""
    return F.mse_loss(u, target)


def build_ct_model(kind: str, geometry: ParallelBeamGeometry | str | int, **options: Any) -> nn.Module:
    """A CT reconstructor called as ``model(d) -> u`` for sinograms d of ``geometry``.

    kind: "ffpn" (:class:`FFPN`, the paper's difference regulariser), "ffpn-contractive"
    (:class:`FFPN` with :class:`ContractiveRegulariser`), "ffpn-potential" (:class:`FFPN` with
    :class:`PotentialRegulariser`), "unrolled" (:class:`UnrolledFFPN`), "tvs"
    (:class:`TVSuperiorization`), "tv" (:class:`TVReconstructor`), "fbp" (:class:`FBPReconstructor`).
    ``geometry`` may be a preset name ("paper"/"128", "small"/"64"). ``options`` go to the class
    (e.g. ``solver=fpnets.Anderson(...)``, ``backward=fpnets.IFT(...)``, ``channels=16``); an unknown
    option raises TypeError naming it.
    """
    geom = geometry if isinstance(geometry, ParallelBeamGeometry) else geometry_preset(geometry)
    if kind == "ffpn":
        return FFPN(geom, **options)
    if kind == "ffpn-contractive":
        return FFPN(geom, **{"regulariser": "contractive", **options})
    if kind == "ffpn-potential":
        return FFPN(geom, **{"regulariser": "potential", **options})
    if kind == "unrolled":
        return UnrolledFFPN(geom, **options)
    if kind == "tvs":
        return TVSuperiorization(geom, **options)
    if kind == "tv":
        return TVReconstructor(geom, **options)
    if kind == "fbp":
        return FBPReconstructor(geom, **options)
    raise ValueError(f"unknown CT model kind {kind!r}; valid kinds: {', '.join(MODEL_KINDS)}")
