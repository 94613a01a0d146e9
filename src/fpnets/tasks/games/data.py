"""Contextual matrix-game data: contexts d, payoff matrices B(d) and their exact QREs.

The generative model (McKenzie et al. 2021, the matrix-games experiment; the authors' values as
defaults):

- context d ~ U[0, 1]^k (k = ``context_dim``, 3 in the paper);
- a fixed random matrix W ∈ ℝ^{m × k}, m = n(n−1)/2, entries ~ U[low, high] (the authors: U[0, 10]);
- the payoff matrix B(d) is antisymmetric with free (strictly upper triangular) entries W d;
- the target is the QRE x*(d) of the entropy-regularised zero-sum game with payoff B(d)
  (:mod:`fpnets.tasks.games.qre`), solved to float64 precision and stored with its certificate
  ‖x* − (softmax(−B x₂*), softmax(Bᵀ x₁*))‖₂. (The authors' stored targets came from a projected
  gradient run stopped early; they are 4e-3 to 2e-2 away in mean squared distance from exact QREs.)

A :class:`GameDataConfig` fixes everything (sizes, seed, W's range, the solver tolerance).
:func:`load_games` caches the generated data in ``data_dir`` under a name holding a hash of the
config; the file records the config, and loading checks it, the shapes, finiteness and the stored
certificates against a recomputation. Another config means another file (never a silent reuse).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...data import DataError
from .qre import antisymmetric, qre_residual, solve_qre

__all__ = [
    "FORMAT_VERSION",
    "SPLITS",
    "GameData",
    "GameDataConfig",
    "GameDataError",
    "GameSplit",
    "cache_path",
    "generate_games",
    "load_games",
    "payoff_matrices",
]

FORMAT_VERSION = 1
"""Version of the cache file layout; part of the hashed parameters."""

SPLITS = ("train", "val", "test")


class GameDataError(DataError):
    """A cached game file is corrupt or does not match its parameters."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class GameDataConfig:
    """Everything that determines a matrix-game dataset.

    Attributes:
        n_actions: n, actions per player (n ≥ 2).
        context_dim: k, the context dimension.
        n_train, n_val, n_test: split sizes (the authors: 2000 train, 100 test, no validation).
        seed: seeds W and the contexts (one ``torch.Generator``; W first, then all contexts).
        payoff_low, payoff_high: W's entries are ~ U[payoff_low, payoff_high].
        tol: the QRE solver tolerance on the certificate (float64).
    """

    n_actions: int
    context_dim: int = 3
    n_train: int = 2000
    n_val: int = 200
    n_test: int = 200
    seed: int = 0
    payoff_low: float = 0.0
    payoff_high: float = 10.0
    tol: float = 1e-13

    def __post_init__(self) -> None:
        if not _is_int(self.n_actions) or self.n_actions < 2:
            raise ValueError(f"GameDataConfig: n_actions must be an integer >= 2, got {self.n_actions!r}")
        for key in ("context_dim", "n_train", "n_val", "n_test"):
            v = getattr(self, key)
            if not _is_int(v) or v < (1 if key == "context_dim" else 0):
                raise ValueError(
                    f"GameDataConfig: {key} must be a non-negative integer (context_dim >= 1), got {v!r}"
                )
        if not _is_int(self.seed):
            raise ValueError(f"GameDataConfig: seed must be an integer, got {self.seed!r}")
        if not (
            _is_number(self.payoff_low)
            and _is_number(self.payoff_high)
            and self.payoff_low <= self.payoff_high
        ):
            raise ValueError(
                f"GameDataConfig: need payoff_low <= payoff_high (numbers), got {self.payoff_low!r}, {self.payoff_high!r}"
            )
        if not (_is_number(self.tol) and 0 < self.tol <= 1e-6):
            raise ValueError(
                f"GameDataConfig: tol must lie in (0, 1e-6] (targets are exact QREs), got {self.tol!r}"
            )

    def params(self) -> dict[str, Any]:
        """The recorded parameters (the config and the file format version)."""
        out: dict[str, Any] = {"format": FORMAT_VERSION}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = float(v) if f.name in ("payoff_low", "payoff_high", "tol") else v
        return out

    def digest(self) -> str:
        """A short hash of :meth:`params`, used in the cache file name."""
        text = json.dumps(self.params(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class GameSplit:
    """One split, float64.

    Attributes:
        context: (N, k) contexts d.
        target: (N, 2, n) the QREs x*(d) (row 0: player 1, the minimiser; row 1: player 2).
        residual: (N,) the certificate ‖x* − best_response(x*)‖₂ of each target.
    """

    context: Tensor
    target: Tensor
    residual: Tensor

    def __len__(self) -> int:
        return int(self.context.shape[0])

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> GameSplit:
        """The split with context and target cast (the certificate stays float64)."""
        return GameSplit(
            self.context.to(device=device, dtype=dtype),
            self.target.to(device=device, dtype=dtype),
            self.residual.to(device=device),
        )


@dataclass(frozen=True)
class GameData:
    """A generated dataset: the config, W and the three splits.

    Attributes:
        config: the :class:`GameDataConfig` it was made from.
        W: (m, k) float64, m = n(n−1)/2: the free payoff entries are W d.
        train, val, test: the :class:`GameSplit` s.
    """

    config: GameDataConfig
    W: Tensor
    train: GameSplit
    val: GameSplit
    test: GameSplit

    @property
    def n_actions(self) -> int:
        return self.config.n_actions

    def split(self, name: str) -> GameSplit:
        if name not in SPLITS:
            raise ValueError(f"GameData.split: unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return getattr(self, name)

    def payoff(self, context: Tensor) -> Tensor:
        """B(d) for a batch of contexts (N, k) → (N, n, n), in the dtype of ``context``."""
        return payoff_matrices(self.W.to(context), context, self.n_actions)


def payoff_matrices(W: Tensor, context: Tensor, n_actions: int) -> Tensor:
    """B(d) = antisymmetric(W d): (m, k), (N, k) → (N, n, n)."""
    if context.dim() != 2 or context.shape[-1] != W.shape[-1]:
        raise ValueError(
            f"payoff_matrices: context must be (N, k) with k = {W.shape[-1]} (W is {tuple(W.shape)}), "
            f"got {tuple(context.shape)}"
        )
    return antisymmetric(context @ W.T, n_actions)


def generate_games(config: GameDataConfig) -> GameData:
    """Draw W and the contexts from the seed and solve every game exactly (float64, CPU).

    Raises :class:`~fpnets.tasks.games.qre.QREConvergenceError` if a game misses ``config.tol``.
    """
    n, k = config.n_actions, config.context_dim
    m = n * (n - 1) // 2
    gen = torch.Generator().manual_seed(config.seed)
    W = config.payoff_low + (config.payoff_high - config.payoff_low) * torch.rand(
        m, k, generator=gen, dtype=torch.float64
    )
    sizes = [config.n_train, config.n_val, config.n_test]
    context = torch.rand(sum(sizes), k, generator=gen, dtype=torch.float64)  # (N, k)
    B = payoff_matrices(W, context, n)  # (N, n, n)
    sol = solve_qre(B, tol=config.tol, throw=True)
    splits = [
        GameSplit(c, x, r)
        for c, x, r in zip(
            torch.split(context, sizes),
            torch.split(sol.x, sizes),
            torch.split(sol.residual, sizes),
            strict=True,
        )
    ]
    data = GameData(config, W, *splits)
    _validate(data, "generated data")
    return data


def cache_path(config: GameDataConfig, data_dir: str | os.PathLike[str]) -> Path:
    """The cache file of ``config`` in ``data_dir``: ``games-n{n}-{hash}.pt``."""
    return Path(data_dir) / f"games-n{config.n_actions}-{config.digest()}.pt"


def load_games(config: GameDataConfig, data_dir: str | os.PathLike[str] | None = None) -> GameData:
    """The dataset of ``config``: read from ``data_dir`` if cached there, else generated (and cached).

    A cached file is checked before use: its recorded parameters must equal ``config.params()``,
    the tensors must have the right shapes and be finite, W must be the seed's, and the stored
    certificates must be ≤ tol and agree with a recomputation. Any failure raises
    :class:`GameDataError` naming the file (delete it to regenerate).

    Args:
        config: the dataset parameters.
        data_dir: cache directory (created if missing); None: generate without caching.
    """
    if data_dir is None:
        return generate_games(config)
    path = cache_path(config, data_dir)
    if path.exists():
        return _read(path, config)
    data = generate_games(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"params": json.dumps(config.params(), sort_keys=True), "W": data.W}
    for name in SPLITS:
        s = data.split(name)
        payload[name] = {"context": s.context, "target": s.target, "residual": s.residual}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return data


def _read(path: Path, config: GameDataConfig) -> GameData:
    fix = f"delete {path} to regenerate it"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means a corrupt file
        raise GameDataError(f"cannot read the game cache {path}: {exc}; {fix}") from exc
    if not isinstance(payload, dict) or "params" not in payload:
        raise GameDataError(f"{path} is not a game cache file (no recorded parameters); {fix}")
    try:
        recorded = json.loads(payload["params"])
    except (TypeError, json.JSONDecodeError) as exc:
        raise GameDataError(f"{path}: unreadable recorded parameters; {fix}") from exc
    expected = config.params()
    if recorded != expected:
        diff = sorted(k for k in set(recorded) | set(expected) if recorded.get(k) != expected.get(k))
        raise GameDataError(
            f"{path} was generated with other parameters (differing: {', '.join(diff)}; "
            f"recorded {recorded}, requested {expected}); {fix}"
        )
    try:
        W = payload["W"]
        splits = [GameSplit(**{k: payload[s][k] for k in ("context", "target", "residual")}) for s in SPLITS]
    except (KeyError, TypeError) as exc:
        raise GameDataError(f"{path} misses an entry ({exc}); {fix}") from exc
    data = GameData(config, W, *splits)
    _validate(data, str(path))
    gen = torch.Generator().manual_seed(config.seed)
    n, k = config.n_actions, config.context_dim
    W_seed = config.payoff_low + (config.payoff_high - config.payoff_low) * torch.rand(
        n * (n - 1) // 2, k, generator=gen, dtype=torch.float64
    )
    if not torch.equal(W_seed, W):
        raise GameDataError(f"{path}: W differs from the one its seed {config.seed} gives; {fix}")
    return data


def _validate(data: GameData, where: str) -> None:
    """Shapes, dtypes, finiteness, simplex membership and the certificates (recomputed)."""
    cfg = data.config
    n, k, m = cfg.n_actions, cfg.context_dim, cfg.n_actions * (cfg.n_actions - 1) // 2
    if not isinstance(data.W, Tensor) or data.W.shape != (m, k) or data.W.dtype != torch.float64:
        raise GameDataError(
            f"{where}: W must be a float64 ({m}, {k}) tensor, got {getattr(data.W, 'shape', None)}"
        )
    for name, size in zip(SPLITS, (cfg.n_train, cfg.n_val, cfg.n_test), strict=True):
        s = data.split(name)
        shapes = {"context": (size, k), "target": (size, 2, n), "residual": (size,)}
        for key, shape in shapes.items():
            t = getattr(s, key)
            if not isinstance(t, Tensor) or tuple(t.shape) != shape or t.dtype != torch.float64:
                raise GameDataError(
                    f"{where}: {name}.{key} must be a float64 tensor of shape {shape}, got "
                    f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}"
                )
            if not bool(torch.isfinite(t).all()):
                raise GameDataError(f"{where}: {name}.{key} holds NaN or Inf")
        if size == 0:
            continue
        if bool((s.target <= 0).any()) or float((s.target.sum(-1) - 1).abs().max()) > 1e-12:
            raise GameDataError(f"{where}: {name}.target is not a strictly positive point of the simplices")
        if float(s.residual.max()) > cfg.tol:
            raise GameDataError(f"{where}: {name} stores QRE certificates above tol={cfg.tol:g}")
        recomputed = qre_residual(payoff_matrices(data.W, s.context, n), s.target)
        if float(recomputed.max()) > 10 * cfg.tol + 1e-15:
            raise GameDataError(
                f"{where}: {name}.target is not the QRE of its contexts (recomputed certificate "
                f"{float(recomputed.max()):.3e} > tol={cfg.tol:g})"
            )
