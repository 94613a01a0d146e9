"""The contextual matrix-games task for the trainer (``[task] name = "games"``).

Learn x̂(d) ≈ x*(d), the quantal response equilibrium (QRE) of the entropy-regularised zero-sum game
with payoff B(d), from contexts d (docs/games.md). The pieces are this package's:

- data: :func:`~fpnets.tasks.games.load_games` with a :class:`~fpnets.tasks.games.GameDataConfig`
  built from ``[data]`` (cached under the data directory, see :func:`games_data_dir`);
- models: :func:`~fpnets.tasks.games.build_game_model` (``model.variant`` = nfpn, contractive,
  payoff or payoffnet) with the forward solver and backward mode of ``[solver]``/``[backward]``;
- loss: :func:`~fpnets.tasks.games.mse_loss`, the mean of (x̂ − x*)² over all entries;
- metrics (all lower is better, per sample, float64): ``mse`` = (1/2n)‖x̂ − x*‖², ``qre_residual``
  = ‖x̂ − (softmax(−B x̂₂), softmax(Bᵀ x̂₁))‖₂ and ``duality_gap`` under the true payoff B(d).

A batch is ``((d,), GameTarget(x*, B))``: the loader (:class:`GameLoader`) computes B(d) from the
split's W, so the metrics see the true game of every sample without the model seeing it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..._errors import ConfigError
from .._base import (
    DataConfig,
    Metric,
    ModelConfig,
    Splits,
    Task,
    TensorLoader,
    TensorSplit,
    check_variant_options,
    task_data_dir,
)
from .data import GameDataConfig, GameDataError, load_games, payoff_matrices
from .metrics import game_metrics, mse_loss
from .models import MODELS, build_game_model

__all__ = [
    "GameLoader",
    "GameTarget",
    "GameTensorSplit",
    "GamesData",
    "GamesModel",
    "GamesTask",
    "games_data_dir",
]

FPN_SOLVER_DEFAULTS: dict[str, Any] = {"tol": 1e-5, "max_iter": 100, "norm": "l2"}
"""Options of the N-FPN forward solver that ``[solver]`` leaves unset (the authors' ε and depth)."""

VARIANT_KEYS: dict[str, tuple[str, ...]] = {
    "nfpn": ("alpha", "negative_slope"),
    "contractive": ("alpha", "negative_slope", "mu", "rho", "components", "hidden"),
    "logit": ("negative_slope", "rho", "components", "hidden"),
    "payoff": ("alpha", "negative_slope", "hidden", "qre_tol", "qre_max_iter"),
    "payoffnet": ("negative_slope", "hidden", "qre_tol", "qre_max_iter"),
}
"""The ``[model]`` option keys each variant takes (the others must stay unset)."""

_QRE_OPTIONS = {"qre_tol": "tol", "qre_max_iter": "max_iter"}  # [model] key → PayoffNet keyword


def games_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """Where the generated games are cached (:func:`fpnets.tasks._base.task_data_dir` of "games";
    files ``games-n{n}-{hash}.pt``)."""
    return task_data_dir("games", data_dir)


# -------------------------------------------------------------------------------------------------
# config sections


@dataclass
class GamesData(DataConfig):
    """``[data]`` of the games task: the dataset (every field of :class:`GameDataConfig`) and batching.

    The defaults are the authors' (n = 10 aside): W ~ U[0, 10], whose games have nearly pure
    equilibria; the bundled ``configs/games.toml`` sets ``payoff_low = -10`` for mixed ones.
    """

    batch_size: int = 100
    eval_batch_size: int = 500
    n_actions: int = 10
    """n, the actions per player (n ≥ 2)."""
    context_dim: int = 3
    """k, the dimension of the context d ~ U[0, 1]^k."""
    n_train: int = 2000
    n_val: int = 200
    n_test: int = 200
    seed: int = 0
    """Seeds W and the contexts (the dataset); ``train.seed`` seeds the model and the batch order."""
    payoff_low: float = 0.0
    """W's entries are ~ U[payoff_low, payoff_high]; the free entries of B(d) are W d."""
    payoff_high: float = 10.0
    tol: float = 1e-13
    """The QRE certificate every target meets (float64)."""
    cache: bool = True
    """Keep the generated games in the data directory (:func:`games_data_dir`) and reuse them."""

    def check(self) -> None:
        super().check()
        try:
            self.game_config()
        except ValueError as exc:
            raise ConfigError(f"[data]: {exc}") from None
        if self.n_train < 1:
            raise ConfigError(f"data.n_train must be >= 1, got {self.n_train}")

    def game_config(self) -> GameDataConfig:
        """The :class:`GameDataConfig` of these values."""
        names = [f.name for f in dataclasses.fields(GameDataConfig)]
        return GameDataConfig(**{k: getattr(self, k) for k in names})


@dataclass
class GamesModel(ModelConfig):
    """``[model]`` of the games task. Unset options take the model's defaults; an option the chosen
    variant does not take must stay unset (:data:`VARIANT_KEYS`)."""

    variant: str = "nfpn"
    """nfpn (the authors' N-FPN), contractive (the N-FPN with a strongly monotone, Lipschitz F_Θ: a
    contraction by construction), logit (the logit best response of a learned game: a
    (ρ/2)-contraction with no zero outputs), payoff (the model-based N-FPN: F_Θ the game gradient of a learned
    payoff, fixed point = its QRE, JFB) or payoffnet (Ling et al.'s baseline: an MLP payoff and an
    exact QRE layer); selects the ``[variants.<name>]`` table too."""
    alpha: float | None = None
    """α, the step of T(z) = P(z − αF_Θ(z; d)) (nfpn, payoff: 1; contractive: μ/(μ² + ρ²))."""
    negative_slope: float | None = None
    """The LeakyReLU slope (0.1)."""
    mu: float | None = None
    """μ, the strong monotonicity of the contractive F_Θ (1)."""
    rho: float | None = None
    """ρ, the bound on ‖G(d)‖₂ of contractive and logit (1); γ = ρ/√(μ² + ρ²) at contractive's default
    α, γ = ρ/2 for logit (which needs ρ < 2)."""
    components: int | None = None
    """The number of coupling matrices G_k of contractive and logit (k)."""
    hidden: int | None = None
    """The hidden width: of c(d) for contractive and logit (n), of the payoff MLP for payoff and payoffnet (k)."""
    qre_tol: float | None = None
    """The Newton QRE solver's tolerance of payoff and payoffnet (1e-10)."""
    qre_max_iter: int | None = None
    """The Newton step cap of payoff and payoffnet (100)."""

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"variant": MODELS}

    def check(self) -> None:
        check_variant_options(self, VARIANT_KEYS)
        for key in ("components", "hidden", "qre_max_iter"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {value}")
        for key in ("alpha", "mu", "rho", "qre_tol"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"model.{key} must be > 0, got {value}")
        if self.variant == "logit" and self.rho is not None and not self.rho < 2:
            raise ConfigError(f"model.rho must be < 2 for the logit variant (γ = ρ/2), got {self.rho}")

    def options(self) -> dict[str, Any]:
        """Keyword options for :func:`build_game_model` (the set keys, renamed where needed)."""
        out = {}
        for key in VARIANT_KEYS[self.variant]:
            value = getattr(self, key)
            if value is not None:
                out[_QRE_OPTIONS.get(key, key) if self.variant == "payoffnet" else key] = value
        return out


# -------------------------------------------------------------------------------------------------
# data: splits holding W, batches carrying the true payoff


@dataclass(frozen=True)
class GameTensorSplit(TensorSplit):
    """A split of contexts ``inputs = (d,)`` (N, k) and QREs ``target`` (N, 2, n), float64, with
    ``W`` (m, k), m = n(n−1)/2, so that the true payoff B(d) = antisymmetric(W d) of any batch is known."""

    W: Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.target.shape[-1]
        if self.target.dim() != 3 or self.target.shape[1] != 2:
            raise ValueError(f"GameTensorSplit: target must be (N, 2, n), got {tuple(self.target.shape)}")
        (d,) = self.inputs
        if self.W.shape != (n * (n - 1) // 2, d.shape[-1]):
            raise ValueError(
                f"GameTensorSplit: W must be (n(n-1)/2, k) = ({n * (n - 1) // 2}, {d.shape[-1]}), "
                f"got {tuple(self.W.shape)}"
            )

    @property
    def n_actions(self) -> int:
        return int(self.target.shape[-1])

    def head(self, n: int) -> GameTensorSplit:
        return GameTensorSplit(tuple(t[:n] for t in self.inputs), self.target[:n], self.W)

    def payoff(self, context: Tensor) -> Tensor:
        """B(d): (B, k) → (B, n, n), float64."""
        return payoff_matrices(self.W.to(context.device), context.to(torch.float64), self.n_actions)


class GameTarget(NamedTuple):
    """The target of a batch: the exact QREs and the true payoff matrices (both float64)."""

    profile: Tensor  # (B, 2, n) x*(d)
    payoff: Tensor  # (B, n, n) B(d)


class GameLoader:
    """A :class:`TensorLoader` over a :class:`GameTensorSplit` whose batches are
    ``((d,), GameTarget(x*, B(d)))``."""

    def __init__(self, split: GameTensorSplit, batch_size: int, **options: Any) -> None:
        if not isinstance(split, GameTensorSplit):
            raise TypeError(
                f"the games task needs GameTensorSplit splits (contexts, targets and W), got "
                f"{type(split).__name__}; build them with GamesTask.load_splits or GameTensorSplit"
            )
        self.split = split
        self.loader = TensorLoader(split, batch_size, **options)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[tuple[Tensor, ...], GameTarget]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[tuple[Tensor, ...], GameTarget]]:
        for inputs, target in self.loader.iter_from(start):
            yield inputs, GameTarget(target, self.split.payoff(inputs[0]))


# -------------------------------------------------------------------------------------------------
# the task


class GamesTask(Task):
    """Predict the QRE of a contextual zero-sum matrix game: N-FPN, contractive N-FPN or Payoff-Net."""

    name = "games"
    data_config = GamesData
    model_config = GamesModel
    metrics = (
        Metric("mse", higher_is_better=False, label="MSE to the QRE"),
        Metric("qre_residual", higher_is_better=False, label="QRE residual"),
        Metric("duality_gap", higher_is_better=False, label="duality gap"),
    )
    loss_label = "MSE"
    select = "val.mse"

    def load_splits(self, data_dir: str | Path | None) -> Splits:
        """The three splits of ``[data]``'s games (generated, or read from the cache and checked).

        Contexts and targets stay float64 (the trainer casts inputs to ``run.dtype``; the loss
        casts the target to the output's dtype; the metrics are computed in float64).
        """
        from ...data import DataError

        d = self.config.data
        where = games_data_dir(data_dir) if d.cache else None
        try:
            data = load_games(d.game_config(), where)
        except GameDataError as exc:  # a corrupt or mismatched cache file: one clear line on the CLI
            raise DataError(str(exc)) from exc
        return Splits(
            *(GameTensorSplit((s.context,), s.target, data.W) for s in (data.train, data.val, data.test))
        )

    def loader(
        self, split: Any, *, train: bool, rank: int = 0, world_size: int = 1, device: Any = None
    ) -> GameLoader:
        d = self.config.data
        if train:
            return GameLoader(
                split, d.batch_size, shuffle=True, seed=self.config.train.seed, rank=rank,
                world_size=world_size, device=device,
            )  # fmt: skip
        return GameLoader(split, d.eval_batch_size, device=device)

    def build_model(self) -> nn.Module:
        """The ``model.variant`` network for n = ``data.n_actions``, k = ``data.context_dim``.

        The N-FPNs take the forward solver of ``[solver]`` (unset tol/max_iter/norm: 1e-5, 100,
        l2, the authors' Picard) and the backward of ``[backward]`` (unset: JFB), and do not warn
        when a solve misses the tolerance (the authors' N-FPN is not a contraction; the trainer
        records the iterations). Payoff-Net solves its QRE by Newton (``model.qre_tol``,
        ``model.qre_max_iter``) and differentiates it implicitly, so ``[backward]`` must stay unset.
        """
        from ...registry import backward_from_spec, solver_from_spec

        cfg, m = self.config, self.config.model
        options = m.options()
        backward = cfg.backward.spec()
        if m.variant == "payoffnet":
            if backward is not None:
                raise ConfigError(
                    f"backward.name = {cfg.backward.name!r} does not apply to payoffnet (its QRE layer "
                    "has an exact implicit gradient); unset [backward] for this variant"
                )
        else:
            try:
                options["solver"] = solver_from_spec(cfg.solver.spec(), FPN_SOLVER_DEFAULTS)
                if backward is not None:
                    options["backward"] = backward_from_spec(backward)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"[solver]/[backward]: {exc}") from None
            options["warn"] = False
        return build_game_model(m.variant, cfg.data.n_actions, cfg.data.context_dim, **options)

    def loss(self, output: Tensor, target: GameTarget) -> Tensor:
        return mse_loss(output, target.profile)

    def measure(self, output: Tensor, target: GameTarget) -> dict[str, Tensor]:
        return game_metrics(output, target.profile, target.payoff)

    def run_name(self) -> str:
        return (
            f"{self.config.run.name or self.name}-n{self.config.data.n_actions}-{self.config.model.variant}"
        )

    def figures(
        self, run_dir: Path, model: nn.Module, splits: Splits, *, device: Any, dtype: Any
    ) -> list[Path]:
        """``strategies.png``: predicted against exact equilibrium probabilities on the test split
        (every entry of every game), and both players' strategies in the first three test games."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            import warnings

            warnings.warn(
                "matplotlib is not installed; no strategies.png written", RuntimeWarning, stacklevel=2
            )
            return []
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        test = splits.test
        if len(test) == 0:
            return []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                pred = torch.cat(
                    [
                        model(inputs[0].to(dtype)).to(torch.float64).cpu()
                        for inputs, _ in self.loader(test, train=False, device=device)
                    ]
                )  # (N, 2, n)
        finally:
            model.train(was_training)
        pred = pred.numpy()
        true = test.target.to(torch.float64).cpu().numpy()  # (N, 2, n)
        shown = min(3, len(test))
        fig = Figure(figsize=(4.5 * (1 + shown), 4), layout="constrained")
        axes = fig.subplots(1, 1 + shown, squeeze=False)[0]
        ax = axes[0]
        ax.scatter(true.ravel(), pred.ravel(), s=4, alpha=0.4)
        hi = float(max(true.max(), pred.max()))
        ax.plot([0, hi], [0, hi], "k--", lw=0.8)
        ax.set(xlabel="exact QRE probability", ylabel="predicted", title=f"test split ({len(test)} games)")
        ax.grid(alpha=0.3)
        n = true.shape[-1]
        actions = np.arange(n)
        for j in range(shown):
            ax = axes[1 + j]
            for p, colour in ((0, "C0"), (1, "C1")):
                ax.bar(
                    actions + (p - 0.5) * 0.4,
                    true[j, p],
                    width=0.4,
                    color=colour,
                    alpha=0.35,
                    label=f"x*{p + 1}",
                )
                ax.plot(actions + (p - 0.5) * 0.4, pred[j, p], "o", color=colour, ms=4, label=f"x̂{p + 1}")
            ax.set(xlabel="action", ylabel="probability", title=f"test game {j}")
            ax.legend(fontsize=7)
        fig.suptitle(f"{self.run_name()}: predicted vs exact equilibria")
        path = run_dir / "strategies.png"
        FigureCanvasAgg(fig)
        fig.savefig(path, format="png", dpi=110)
        return [path]
