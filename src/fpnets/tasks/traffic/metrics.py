"""Metrics of predicted link flows X̂ (N, E) against equilibrium flows X (N, E).

Per-sample values (N,) unless said otherwise, with their direction in :data:`METRICS`.

- relative error ‖X̂_i − X_i‖ / ‖X_i‖; over the whole set ‖X̂ − X‖_F / ‖X‖_F (:func:`relative_error_total`);
- TRAFIX score: share of links with |x̂ − x| / (|x| + 1e-3) < 5e-3 (in [0, 1]; the paper reports %);
- MSE (in vehicles², or in units of a scale);
- Wardrop gap of X̂ under the true costs of its context: (Σ t(x̂)·x̂ − Σ_w q_w κ_w(t(x̂))) / Σ t(x̂)·x̂,
  x̂ = max(X̂, 0), κ_w the shortest-path cost of OD pair w under t(x̂). For flows that conserve
  flow and meet the demand it is ≥ 0 and 0 exactly at the equilibrium. A prediction that violates
  conservation can score below 0 (Σ t·x̂ is not then the cost of a feasible assignment), so
  :func:`conservation_error` is reported with it: ‖Σ_k b_k − N x̂‖ / ‖Σ_k b_k‖ (link flows of a
  feasible assignment satisfy N x̂ = Σ_k b_k, the net inflow per node).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .assignment import relative_gap
from .network import ContextModel, Network

__all__ = [
    "METRICS",
    "conservation_error",
    "evaluate",
    "mse",
    "relative_error",
    "relative_error_total",
    "trafix_score",
    "wardrop_gap",
]

METRICS: dict[str, str] = {
    "relative_error": "lower",
    "trafix": "higher",
    "mse": "lower",
    "wardrop_gap": "lower",
    "conservation_error": "lower",
    "iterations": "lower",
}
"""Metric name -> whether "higher" or "lower" is better."""


def _check(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(
            f"predicted and true link flows must both be (N, E), got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def relative_error(pred: Tensor, target: Tensor) -> Tensor:
    """(N,) ‖X̂_i − X_i‖₂ / ‖X_i‖₂."""
    _check(pred, target)
    return torch.linalg.vector_norm(pred - target, dim=1) / torch.linalg.vector_norm(target, dim=1)


def relative_error_total(pred: Tensor, target: Tensor) -> float:
    """‖X̂ − X‖_F / ‖X‖_F over the whole set (the paper's figure)."""
    _check(pred, target)
    return float(torch.linalg.norm(pred - target) / torch.linalg.norm(target))


def trafix_score(pred: Tensor, target: Tensor, *, rtol: float = 5e-3, floor: float = 1e-3) -> Tensor:
    """(N,) share of links with |x̂ − x| / (|x| + floor) < rtol (in [0, 1])."""
    _check(pred, target)
    ok = (pred - target).abs() / (target.abs() + floor) < rtol
    return ok.to(pred.dtype).mean(1)


def mse(pred: Tensor, target: Tensor, scale: float = 1.0) -> Tensor:
    """(N,) mean over links of ((X̂ − X) / scale)²."""
    _check(pred, target)
    return (((pred - target) / scale) ** 2).mean(1)


def wardrop_gap(pred: Tensor, context: Tensor, network: Network, model: ContextModel) -> Tensor:
    """(N,) relative Wardrop gap of predicted link flows under the true costs t(·; d) of each context."""
    x = pred.detach().cpu().double().numpy()
    costs = model.costs(network, context.detach().cpu().double().numpy())
    return torch.as_tensor(relative_gap(network, costs, x))


def conservation_error(pred: Tensor, network: Network) -> Tensor:
    """(N,) ‖N x̂ − Σ_k b_k‖ / ‖Σ_k b_k‖ (0 for the link flows of any feasible assignment)."""
    n = torch.as_tensor(network.incidence, dtype=torch.float64)
    b = torch.as_tensor(network.commodity_demand("origin").sum(0), dtype=torch.float64)  # (n,)
    x = pred.detach().cpu().double()
    return torch.linalg.vector_norm(x @ n.T - b, dim=1) / torch.linalg.vector_norm(b)


def evaluate(
    model: torch.nn.Module,
    context: Tensor,
    target: Tensor,
    *,
    network: Network | None = None,
    context_model: ContextModel | None = None,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Per-sample metrics of ``model`` on (context (N, m), target (N, E)) plus set-level summaries.

    Returns a dict with per-sample tensors under the names of :data:`METRICS` (wardrop_gap and
    conservation_error only with ``network`` and ``context_model``; iterations only for models with a
    ``solution``), "prediction" (N, E), and "relative_error_total", "trafix_total" (floats).
    """
    preds, iters = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for lo in range(0, context.shape[0], batch_size):
                preds.append(model(context[lo : lo + batch_size]))
                sol = getattr(model, "solution", None)
                if sol is not None:
                    iters.append(sol.iterations.float())
    finally:
        model.train(was_training)
    pred = torch.cat(preds)
    target = target.to(pred.dtype)
    out: dict[str, Any] = {
        "prediction": pred,
        "relative_error": relative_error(pred, target),
        "trafix": trafix_score(pred, target),
        "mse": mse(pred, target),
        "relative_error_total": relative_error_total(pred, target),
    }
    out["trafix_total"] = float(out["trafix"].mean())
    if iters:
        out["iterations"] = torch.cat(iters)
    if network is not None and context_model is not None:
        out["wardrop_gap"] = wardrop_gap(pred, context, network, context_model)
        out["conservation_error"] = conservation_error(pred, network)
    return out
