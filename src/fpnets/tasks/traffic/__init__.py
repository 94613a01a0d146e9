"""Traffic routing: learning to predict Wardrop equilibria of contextual traffic games (N-FPN).

McKenzie, Heaton, Li, Wu Fung, Osher, Yin, "Operator Splitting for Learning to Predict Equilibria
in Convex Games" (arXiv 2106.00906). Modules:

- :mod:`.tntp`: TNTP file readers; :mod:`.network`: :class:`Network`, BPR :class:`LinkCosts`,
  the contextual :class:`ContextModel`, shortest paths;
- :mod:`.assignment`: :func:`solve_equilibrium` (path-based gradient projection with column
  generation, certified by the relative gap);
- :mod:`.data`: :func:`build_dataset` (cached, certified contextual data sets);
- :mod:`.models`: :class:`TrafficNFPN` (Davis–Yin N-FPN), :class:`ExplicitTrafficNet`,
  :class:`MeanCapacityBaseline`, :func:`traffic_loss`;
- :mod:`.metrics`: relative error, TRAFIX score, MSE, Wardrop gap of predictions;
- :mod:`.plots`: figures (matplotlib, imported lazily).
"""

from .assignment import (
    AssignmentResult,
    PathSet,
    all_or_nothing,
    commodity_flows,
    relative_gap,
    solve_equilibrium,
)
from .data import DataParams, TrafficData, TrafficSplit, build_dataset
from .metrics import METRICS, evaluate, mse, relative_error, trafix_score, wardrop_gap
from .models import ExplicitTrafficNet, MeanCapacityBaseline, TrafficNFPN, traffic_loss
from .network import ContextModel, LinkCosts, Network
from .tntp import TNTPError

__all__ = [
    "METRICS",
    "AssignmentResult",
    "ContextModel",
    "DataParams",
    "ExplicitTrafficNet",
    "LinkCosts",
    "MeanCapacityBaseline",
    "Network",
    "PathSet",
    "TNTPError",
    "TrafficData",
    "TrafficNFPN",
    "TrafficSplit",
    "all_or_nothing",
    "build_dataset",
    "commodity_flows",
    "evaluate",
    "mse",
    "relative_error",
    "relative_gap",
    "solve_equilibrium",
    "traffic_loss",
    "trafix_score",
    "wardrop_gap",
]
