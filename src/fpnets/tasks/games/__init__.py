"""Contextual matrix games: learning to predict quantal response equilibria (QREs) from a context.

McKenzie, Heaton, Li, Wu Fung, Osher, Yin, "Operator Splitting for Learning to Predict Equilibria in
Convex Games" (arXiv 2106.00906), the matrix-games experiment, and its baseline Payoff-Net (Ling,
Fang, Kolter 2018). See docs/games.md.

- :mod:`.qre`: game gradient, certificates, the exact batched QRE solver and the differentiable QRE layer.
- :mod:`.data`: :class:`GameDataConfig`, :func:`load_games` (cached, checked), :class:`GameData`.
- :mod:`.models`: :class:`NashFPN`, :class:`ContractiveNashFPN`, :class:`LogitNashFPN`, :class:`PayoffNashFPN`, :class:`PayoffNet`,
  :func:`build_game_model`.
- :mod:`.metrics`: :func:`mse_loss`, :func:`game_metrics`, :data:`DIRECTIONS`.
"""

from .data import (
    GameData,
    GameDataConfig,
    GameDataError,
    GameSplit,
    generate_games,
    load_games,
    payoff_matrices,
)
from .metrics import DIRECTIONS, game_metrics, mse, mse_loss
from .models import (
    MODELS,
    ContractiveNashFPN,
    LogitNashFPN,
    NashFPN,
    PayoffNashFPN,
    PayoffNet,
    build_game_model,
    payoff_net_hidden_for,
)
from .qre import (
    QREConvergenceError,
    QREConvergenceWarning,
    QRESolution,
    antisymmetric,
    best_response,
    duality_gap,
    game_gradient,
    projected_residual,
    qre,
    qre_implicit,
    qre_residual,
    solve_qre,
)

__all__ = [
    "DIRECTIONS",
    "MODELS",
    "ContractiveNashFPN",
    "GameData",
    "GameDataConfig",
    "GameDataError",
    "GameSplit",
    "LogitNashFPN",
    "NashFPN",
    "PayoffNashFPN",
    "PayoffNet",
    "QREConvergenceError",
    "QREConvergenceWarning",
    "QRESolution",
    "antisymmetric",
    "best_response",
    "build_game_model",
    "duality_gap",
    "game_gradient",
    "game_metrics",
    "generate_games",
    "load_games",
    "mse",
    "mse_loss",
    "payoff_matrices",
    "payoff_net_hidden_for",
    "projected_residual",
    "qre",
    "qre_implicit",
    "qre_residual",
    "solve_qre",
]
