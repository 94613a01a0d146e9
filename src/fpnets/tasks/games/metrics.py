"""Loss and per-sample metrics for predicted equilibria x̂ (B, 2, n) against the true games.

Every metric is per sample (a (B,) float64 tensor) and lower is better (:data:`DIRECTIONS`):

- ``mse``: (1/2n) ‖x̂ − x*‖², the mean squared error to the exact QRE (the paper's test metric:
  ``nn.MSELoss`` over a batch is the mean of these values);
- ``qre_residual``: ‖x̂ − (softmax(−B x̂₂), softmax(Bᵀ x̂₁))‖₂ under the true payoff B(d), zero
  exactly at the QRE (it needs no target);
- ``duality_gap``: the regularised duality gap max_{y₂} f(x̂₁, y₂) − min_{y₁} f(y₁, x̂₂)
  = KL(x̂₁ ‖ softmax(−B x̂₂)) + KL(x̂₂ ‖ softmax(Bᵀ x̂₁)) ≥ 0, zero exactly at the QRE;
- ``iterations``: forward iterations of the model's solve (``model.solution.iterations``: fixed-point
  iterations for the N-FPNs, Newton steps for Payoff-Net; not comparable in cost per iteration).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .qre import duality_gap, qre_residual

__all__ = ["DIRECTIONS", "game_metrics", "mse", "mse_loss"]

DIRECTIONS: dict[str, str] = {
    "mse": "lower",
    "qre_residual": "lower",
    "duality_gap": "lower",
    "iterations": "lower",
}
"""Metric name → "lower" or "higher" (which is better)."""


def _check_pair(pred: Tensor, target: Tensor, what: str) -> None:
    if pred.shape != target.shape or pred.dim() != 3 or pred.shape[1] != 2:
        raise ValueError(
            f"{what}: prediction and target must both be (B, 2, n), got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def mse_loss(pred: Tensor, target: Tensor) -> Tensor:
    """The training loss: mean squared error over all entries (a scalar, with the graph of ``pred``)."""
    _check_pair(pred, target, "mse_loss")
    return torch.mean((pred - target.to(pred)) ** 2)


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """(1/2n) ‖x̂ − x*‖² per sample: (B,) float64."""
    _check_pair(pred, target, "mse")
    diff = pred.detach().to(torch.float64) - target.detach().to(torch.float64)
    return diff.pow(2).mean(dim=(1, 2))


def game_metrics(
    pred: Tensor, target: Tensor, payoff: Tensor, iterations: Tensor | None = None
) -> dict[str, Tensor]:
    """All metrics of :data:`DIRECTIONS` per sample, in float64.

    Args:
        pred: (B, 2, n) predicted profiles (points of Δⁿ × Δⁿ; zero entries allowed).
        target: (B, 2, n) exact QREs.
        payoff: (B, n, n) the true payoff matrices B(d) (``GameData.payoff(context)``).
        iterations: (B,) forward iterations (``model.solution.iterations``), if any.
    """
    _check_pair(pred, target, "game_metrics")
    x = pred.detach().to(torch.float64)
    B = payoff.detach().to(torch.float64)
    if B.shape != (x.shape[0], x.shape[2], x.shape[2]):
        raise ValueError(
            f"game_metrics: payoff must be (B, n, n) = {(x.shape[0], x.shape[2], x.shape[2])}, got {tuple(B.shape)}"
        )
    out = {"mse": mse(x, target), "qre_residual": qre_residual(B, x), "duality_gap": duality_gap(B, x)}
    if iterations is not None:
        out["iterations"] = iterations.detach().to(torch.float64)
    return out
