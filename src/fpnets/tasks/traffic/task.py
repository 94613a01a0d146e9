"""The traffic-equilibrium task for the trainer (``[task] name = "traffic"``).

Learn X̂(d) ≈ X*(d), the Wardrop equilibrium link flows of a road network whose link capacities
depend on a context d (docs/traffic.md). The pieces are this package's:

- data: :func:`~fpnets.tasks.traffic.build_dataset` (contexts and certified equilibria, cached,
  see :func:`traffic_cache_dir`) for the network of ``data.network`` (see :func:`network_dir`);
  a batch is ``((d,), TrafficTarget(X*, d, gap))`` with d (B, m) and X* (B, E) in vehicles;
- models (``model.variant``): nfpn (the paper's Davis–Yin N-FPN), averaged (the N-FPN with a
  cocoercive game gradient: T averaged for every parameter value), averaged-wide (the same with
  a wide shared context trunk d → 170 → 170 and a narrow A), averaged-diag (per-link slopes w(d) ⊙ X
  in place of μX, trunk d → 143 → 143), bpr (the N-FPN whose game gradient is the network's BPR
  cost form with learned context-dependent capacities; forward by the certified assignment
  solver, backward JFB through one Davis–Yin step), explicit (an MLP d → X̂ of about
  the same parameter count); mean-capacity (the equilibrium under the mean training capacities,
  the same for every d) is an evaluation-only baseline, see :func:`evaluate_baseline`;
- loss: :func:`~fpnets.tasks.traffic.traffic_loss`, mean(((X̂ − X*) / s)²), s the mean training
  link flow;
- metrics (per sample, float64): ``rel_error`` = ‖X̂_i − X*_i‖ / ‖X*_i‖ (lower; the epoch value is
  the mean over samples, the paper's whole-set ‖X̂ − X*‖_F / ‖X*‖_F is in ``traffic_metrics.json``),
  ``trafix`` (share of links within 0.5 % of the target, higher), ``conservation`` =
  ‖N X̂ − Σ_k b_k‖ / ‖Σ_k b_k‖ (lower), ``wardrop_gap`` = the relative gap of X̂ under the true
  costs t(·; d) (lower; one Dijkstra per origin and sample, so by default evaluation splits only:
  NaN on training batches, see :class:`TrafficTaskConfig`);
- figures (test split): ``flows.png`` (predicted against equilibrium link flows) and, for networks
  with node coordinates, ``flow_map.png`` (mean equilibrium flow per link) and ``error_map.png``
  (mean |X̂ − X*| per link); ``traffic_metrics.json`` with the whole-set numbers of val and test.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ..._errors import ConfigError
from .._base import (
    DataConfig,
    Metric,
    ModelConfig,
    Splits,
    Task,
    TaskConfig,
    TensorLoader,
    TensorSplit,
    check_variant_options,
    variant_options,
)
from .data import TrafficData
from .metrics import conservation_error, relative_error, trafix_score, wardrop_gap
from .models import ExplicitTrafficNet, MeanCapacityBaseline, TrafficNFPN, traffic_loss

__all__ = [
    "BASELINES",
    "NFPN_SOLVER_DEFAULTS",
    "VARIANT_KEYS",
    "TrafficDataConfig",
    "TrafficLoader",
    "TrafficModelConfig",
    "TrafficTarget",
    "TrafficTask",
    "TrafficTaskConfig",
    "evaluate_baseline",
    "network_dir",
    "set_metrics",
    "traffic_cache_dir",
]

NFPN_SOLVER_DEFAULTS: dict[str, Any] = {"tol": 1e-4, "max_iter": 50, "norm": "l2"}
"""Options of the N-FPN forward solve that ``[solver]`` leaves unset: the paper's tolerance 1e-4 on
‖T(z) − z‖₂ (z the latent commodity flows in units of s) and at most 50 iterations."""

VARIANT_KEYS: dict[str, tuple[str, ...]] = {
    "nfpn": ("alpha", "commodity", "hidden", "initial", "warm_starts"),
    "averaged": ("alpha", "commodity", "hidden", "mu", "bound", "initial", "standardize", "warm_starts"),
    "averaged-wide": ("alpha", "commodity", "hidden", "mu", "bound", "initial", "standardize", "warm_starts"),
    "averaged-diag": ("alpha", "commodity", "hidden", "mu", "bound", "initial", "standardize", "warm_starts"),
    "bpr": (
        "alpha",
        "commodity",
        "hidden",
        "cap_range",
        "gap",
        "rounds",
        "sweeps",
        "newton",
        "standardize",
        "warm_starts",
    ),
    "explicit": ("hidden", "num_params", "standardize"),
    "mean-capacity": (),
}
"""The ``[model]`` option keys each variant takes (the others must stay unset)."""

BASELINES = ("mean-capacity",)
"""Variants without parameters: evaluated (:func:`evaluate_baseline`), never trained."""


def _data_error(message: str) -> Exception:
    from ...data import DataError

    return DataError(message)


def traffic_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where generated data sets are cached: ``cache_dir`` when given, else ``<cache>/traffic`` with
    the cache of :func:`fpnets.data.cache_root` (``$FPNETS_CACHE``, ``$XDG_CACHE_HOME/fpnets`` or
    ``~/.cache/fpnets``). The network files themselves are never written."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    from ...data import cache_root

    return cache_root() / "traffic"


def _is_path(network: str) -> bool:
    return os.sep in network or "/" in network or network.startswith(("~", "."))


def network_dir(network: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The TNTP directory of ``network``: a path (absolute, or with a separator, ``.`` or ``~``) is
    used as it is; a name is looked up as ``<root>/transportation-networks/<name>`` and then
    ``<root>/<name>``, with ``root`` = ``data_dir`` (``--data-dir``) or ``$FPNETS_DATA``.

    Raises :class:`fpnets.data.DataError` naming the places tried.
    """
    if _is_path(network):
        path = Path(network).expanduser()
        if not path.is_dir():
            raise _data_error(f"data.network: {path} is not a directory of TNTP files")
        return path
    if data_dir is None and not os.environ.get("FPNETS_DATA"):
        raise _data_error(
            f"data.network = {network!r} is a name, but neither --data-dir nor $FPNETS_DATA says where "
            "the networks are; pass --data-dir DIR (holding transportation-networks/<name>/ or <name>/) "
            "or give data.network as a path"
        )
    root = Path(data_dir if data_dir is not None else os.environ["FPNETS_DATA"]).expanduser()
    tried = [root / "transportation-networks" / network, root / network]
    for path in tried:
        if path.is_dir():
            return path
    raise _data_error(
        f"network {network!r} not found: tried {', '.join(str(p) for p in tried)}; set --data-dir (or "
        "$FPNETS_DATA) to the folder holding it, or give data.network as a path"
    )


# -------------------------------------------------------------------------------------------------
# config sections


@dataclass
class TrafficTaskConfig(TaskConfig):
    """``[task]`` of the traffic task."""

    name: str = "traffic"
    wardrop_gap: str = "eval"
    """When the ``wardrop_gap`` metric is computed: "eval" (validation and test batches; NaN on
    training batches), "always", or "never" (NaN everywhere). It costs one Dijkstra per origin and
    sample on the CPU."""

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"wardrop_gap": ("eval", "always", "never")}


@dataclass
class TrafficDataConfig(DataConfig):
    """``[data]`` of the traffic task: the network, the contextual data set and batching.

    The data set (contexts d = 10·U[0, 1]^10, capacities c(d) = c₀ ⊙ (1 + clamp(W d, ±r)), equilibria
    certified to relative gap ≤ ``gap``) is generated on first use and cached in ``cache_dir``.
    """

    batch_size: int = 100
    eval_batch_size: int = 500
    network: str = "SiouxFalls"
    """A network name, looked up as ``<--data-dir or $FPNETS_DATA>/transportation-networks/<name>``
    (or ``<...>/<name>``), or a path to a TNTP directory (``*_net.tntp``, ``*_trips.tntp``)."""
    n_train: int = 1000
    n_val: int = 100
    n_test: int = 200
    seed: int = 0
    """Seeds W and the contexts (the data set); ``train.seed`` seeds the model and the batch order."""
    gap: float = 1e-8
    """The relative Wardrop gap every target equilibrium meets."""
    cap_range: float | None = None
    """r in clamp(W d, ±r); unset: 0.8 for Anaheim, 0.3 otherwise (the paper's)."""
    limit: int = 0
    """Train on the first ``limit`` training contexts only (0: all); the data set, its flow scale and
    the validation and test splits stay those of ``n_train``."""
    cache: bool = True
    """Keep the generated data set in ``cache_dir`` and reuse it."""
    cache_dir: str = ""
    """Cache folder; empty: ``<fpnets cache>/traffic`` (:func:`traffic_cache_dir`)."""
    workers: int = 1
    """Processes that generate the data set (0: every core); the cache does not depend on it."""
    sweeps: int = 4
    """Gauss–Seidel sweeps per round of the equilibrium solver that makes the targets."""
    newton: int = 0
    """Projected Newton steps over all used paths per round of that solver (0: none; contextual
    Anaheim needs them, docs/traffic.md). Like ``workers``, it changes how fast the targets are
    certified, not the certificate, and the cache does not depend on it."""

    def check(self) -> None:
        super().check()
        for key in ("n_train", "n_val", "n_test", "limit", "workers", "newton"):
            value = getattr(self, key)
            if value < 0:
                raise ConfigError(f"data.{key} must be >= 0, got {value}")
        if self.n_train < 1:
            raise ConfigError(f"data.n_train must be >= 1, got {self.n_train}")
        if self.sweeps < 1:
            raise ConfigError(f"data.sweeps must be >= 1, got {self.sweeps}")
        if not 0 < self.gap < 1e-3:
            raise ConfigError(
                f"data.gap must lie in (0, 1e-3), got {self.gap}: targets are equilibria certified to this "
                "relative gap (1e-8 gives flows accurate to about 1e-6)"
            )
        if self.cap_range is not None and not 0 < self.cap_range < 1:
            raise ConfigError(
                f"data.cap_range must lie in (0, 1), got {self.cap_range}: capacities c₀(1 ± r) must stay positive"
            )
        if not self.network:
            raise ConfigError("data.network must name a network (e.g. 'SiouxFalls') or a TNTP directory")

    def slug(self) -> str:
        """The network's name in run names: letters and digits, lower case (``siouxfalls``)."""
        name = Path(self.network).name if _is_path(self.network) else self.network
        return re.sub(r"[^a-z0-9]+", "", name.lower()) or "network"


@dataclass
class TrafficModelConfig(ModelConfig):
    """``[model]`` of the traffic task. Unset options take the model's defaults (docs/traffic.md);
    an option the chosen variant does not take must stay unset (:data:`VARIANT_KEYS`)."""

    variant: str = "averaged"
    """nfpn (the paper's N-FPN), averaged (N-FPN with a cocoercive F_Θ, averaged T), explicit (an
    MLP d → X̂ of about the same size) or mean-capacity (evaluation only). Selects the
    ``[variants.<name>]`` table too."""
    alpha: float | None = None
    """α, the Davis–Yin step in scaled flow units (1e-2); averaged needs α < 2/(K L)."""
    commodity: str | None = None
    """The latent commodities: "origin" (K = origins, default) or "od" (one per OD pair, the paper's)."""
    hidden: int | None = None
    """Width of F_Θ (nfpn: 100, averaged: 286, averaged-wide/-diag: 8, bpr: the capacity network's,
    170; 0 = linear) or of the explicit MLP (unset: from num_params)."""
    mu: float | None = None
    """μ of the averaged F_Θ = μX + Aᵀσ(AX + g(d)) + c(d) (0.1)."""
    bound: float | None = None
    """a ≥ ‖A‖₂ of the averaged F_Θ (1); L = μ + a²."""
    initial: str | None = None
    """z₀: "free-flow" (default), "min-norm" or "zero"."""
    num_params: int | None = None
    """The explicit MLP's target parameter count (45,956, the paper's N-FPN)."""
    cap_range: float | None = None
    """bpr: r ∈ (0, 1) in ĉ(d) = c₀ ⊙ (1 + r tanh(h_Θ(d))), the largest capacity change it can express (0.5)."""
    gap: float | None = None
    """bpr: the relative Wardrop gap its forward equilibrium solve reaches (1e-7)."""
    rounds: int | None = None
    """bpr: the most column-generation rounds of that solve (200)."""
    sweeps: int | None = None
    """bpr: Gauss–Seidel sweeps per round of that solve (4)."""
    newton: int | None = None
    """bpr: projected Newton steps over all used paths per round of that solve (0: none)."""
    warm_starts: int | None = None
    """N-FPNs: how many training contexts' last fixed points start their next training solve
    (Davis–Yin variants: the latent z, unset 0 = every solve starts at z₀; bpr: the path flows,
    unset 100,000). Evaluation always starts at z₀, so ``fpnets eval`` reproduces it."""
    standardize: bool | None = None
    """explicit, averaged and bpr variants: standardise with the training split's statistics (unset:
    false). Contexts enter as (d − mean) / std per dimension (not d / 10; bpr: only this); the explicit MLP predicts
    m_X + σ_X ⊙ MLP(·) with the per-link flow mean and standard deviation (not s · softplus(MLP));
    the averaged N-FPNs anchor c(d) = −μ (m_X + σ_X ⊙ ĉ(d)) / s, so that with A = 0 their fixed
    point is the projection of that regression onto the feasible flows."""

    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "variant": tuple(VARIANT_KEYS),
        "commodity": ("origin", "od"),
        "initial": ("free-flow", "min-norm", "zero"),
    }

    def check(self) -> None:
        check_variant_options(self, VARIANT_KEYS)
        for key in ("num_params", "rounds", "sweeps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {value}")
        if self.newton is not None and self.newton < 0:
            raise ConfigError(f"model.newton must be >= 0 (0: none), got {self.newton}")
        if self.warm_starts is not None and self.warm_starts < 0:
            raise ConfigError(f"model.warm_starts must be >= 0 (0: off), got {self.warm_starts}")
        if self.hidden is not None and self.hidden < (0 if self.variant == "bpr" else 1):
            raise ConfigError(
                f"model.hidden must be >= 1 (>= 0 for bpr: 0 is a linear capacity map), got {self.hidden}"
            )
        for key in ("cap_range", "gap"):
            value = getattr(self, key)
            if value is not None and not 0 < value < 1:
                raise ConfigError(f"model.{key} must lie in (0, 1), got {value}")
        for key in ("alpha", "bound"):
            value = getattr(self, key)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"model.{key} must be a positive number, got {value}")
        if self.mu is not None and not (self.mu >= 0 and math.isfinite(self.mu)):
            raise ConfigError(f"model.mu must be >= 0, got {self.mu}")

    def options(self) -> dict[str, Any]:
        """Keyword options of the variant's model (the set keys)."""
        return variant_options(self, VARIANT_KEYS)


# -------------------------------------------------------------------------------------------------
# batches: the target carries the context (for the Wardrop gap)


class TrafficTarget(NamedTuple):
    """The target of a batch: equilibrium flows X* (B, E), the contexts d (B, m), and whether the
    Wardrop gap of the predictions is to be measured on this batch."""

    flow: Tensor
    context: Tensor
    gap: bool


class TrafficLoader:
    """A :class:`TensorLoader` over a ``TensorSplit((d,), X*)`` whose batches are
    ``((d,), TrafficTarget(X*, d, gap))``."""

    def __init__(self, split: TensorSplit, batch_size: int, *, gap: bool, **options: Any) -> None:
        if not isinstance(split, TensorSplit) or len(split.inputs) != 1:
            raise TypeError(
                f"the traffic task needs TensorSplit((contexts,), flows) splits, got {type(split).__name__}"
            )
        self.gap = gap
        self.loader = TensorLoader(split, batch_size, **options)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[tuple[Tensor, ...], TrafficTarget]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[tuple[Tensor, ...], TrafficTarget]]:
        for inputs, target in self.loader.iter_from(start):
            yield inputs, TrafficTarget(target, inputs[0], self.gap)


# -------------------------------------------------------------------------------------------------
# the task


class TrafficTask(Task):
    """Predict Wardrop equilibria of a contextual traffic game: N-FPN (paper form or averaged) and an
    explicit MLP; the mean-capacity equilibrium as an evaluation-only baseline."""

    name = "traffic"
    task_config = TrafficTaskConfig
    data_config = TrafficDataConfig
    model_config = TrafficModelConfig
    metrics = (
        Metric("rel_error", higher_is_better=False, label="relative error ‖X̂ − X*‖/‖X*‖ (sample mean)"),
        Metric("trafix", higher_is_better=True, label="TRAFIX score", percent=True),
        Metric("conservation", higher_is_better=False, label="conservation error ‖NX̂ − b‖/‖b‖"),
        Metric("wardrop_gap", higher_is_better=False, label="relative Wardrop gap of X̂"),
    )
    loss_label = "MSE of X/s"
    select = "val.rel_error"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._data: TrafficData | None = None
        self._data_dir: str | Path | None = None

    # -- data -------------------------------------------------------------------------------------

    def dataset(self, data_dir: str | Path | None = None) -> TrafficData:
        """The :class:`~fpnets.tasks.traffic.TrafficData` of ``[data]`` (generated or read from the
        cache; kept for the task's lifetime)."""
        if self._data is not None and (data_dir is None or data_dir == self._data_dir):
            return self._data
        from .data import build_dataset
        from .tntp import TNTPError

        d = self.config.data
        directory = network_dir(d.network, data_dir)
        try:
            data = build_dataset(
                directory,
                d.n_train,
                d.n_val,
                d.n_test,
                data_dir=traffic_cache_dir(d.cache_dir) if d.cache else None,
                seed=d.seed,
                cap_range=d.cap_range,
                gap=d.gap,
                workers=d.workers,
                sweeps=d.sweeps,
                newton=d.newton,
            )
        except (TNTPError, OSError) as exc:
            raise _data_error(f"traffic network {directory}: {exc}") from exc
        self._data, self._data_dir = data, data_dir
        return data

    def load_splits(self, data_dir: str | Path | None) -> Splits:
        """The three splits as :class:`TensorSplit` ``((d,), X*)``, float32 (the training split cut
        to ``data.limit`` contexts when set)."""
        data = self.dataset(data_dir)
        limit = self.config.data.limit
        train = TensorSplit((data.train.context,), data.train.flow)
        if limit:
            train = train.head(limit)
        return Splits(
            train,
            TensorSplit((data.val.context,), data.val.flow),
            TensorSplit((data.test.context,), data.test.flow),
        )

    def loader(
        self, split: Any, *, train: bool, rank: int = 0, world_size: int = 1, device: Any = None
    ) -> TrafficLoader:
        d, when = self.config.data, self.config.task.wardrop_gap
        gap = when == "always" or (when == "eval" and not train)
        if train:
            return TrafficLoader(
                split, d.batch_size, gap=gap, shuffle=True, seed=self.config.train.seed, rank=rank,
                world_size=world_size, device=device,
            )  # fmt: skip
        return TrafficLoader(split, d.eval_batch_size, gap=gap, device=device)

    # -- models -----------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        """The trainable model of ``model.variant`` for the data set's network and flow scale.

        The N-FPNs take the forward solver of ``[solver]`` (unset tol/max_iter/norm: 1e-4, 50, l2,
        the paper's) and the backward of ``[backward]`` (unset: JFB), and do not warn when a solve
        misses the tolerance (the trainer records the iterations). The explicit MLP has no fixed
        point, so ``[backward]`` must stay unset. mean-capacity has no parameters: evaluate it with
        :func:`evaluate_baseline`.
        """
        from ...registry import backward_from_spec, solver_from_spec

        cfg, m = self.config, self.config.model
        if m.variant in BASELINES:
            raise ConfigError(
                f"model.variant = {m.variant!r} is an evaluation-only baseline with no parameters to "
                "train; evaluate it with `python -m fpnets.tasks.traffic.task CONFIG --set "
                f"model.variant={m.variant}` (fpnets.tasks.traffic.task.evaluate_baseline), and train "
                f"one of {', '.join(v for v in VARIANT_KEYS if v not in BASELINES)}"
            )
        data = self.dataset(self._data_dir)
        options = m.options()
        if options.pop("standardize", False):  # statistics of the contexts trained on (data.limit)
            n = self.config.data.limit or len(data.train)
            d, x = data.train.context[:n].double(), data.train.flow[:n].double()
            options["context_stats"] = (d.mean(0).numpy(), d.std(0).numpy())
            if m.variant != "bpr":  # bpr's output is an equilibrium of its costs: contexts only
                options["flow_stats"] = (
                    x.mean(0).numpy(),
                    x.std(0).clamp_min(1e-6 * float(x.mean())).numpy(),
                )
        backward = cfg.backward.spec()
        if m.variant == "explicit":
            if backward is not None:
                raise ConfigError(
                    f"backward.name = {cfg.backward.name!r} does not apply to the explicit variant (it "
                    "solves no fixed point); unset [backward]"
                )
            return ExplicitTrafficNet(
                data.network.num_links, data.flow_scale(), context_dim=data.params.dim, **options
            )
        try:
            options["solver"] = solver_from_spec(cfg.solver.spec(), NFPN_SOLVER_DEFAULTS)
            if backward is not None:
                options["backward"] = backward_from_spec(backward)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[solver]/[backward]: {exc}") from None
        try:
            return TrafficNFPN(
                data.network,
                data.flow_scale(),
                context_dim=data.params.dim,
                variant=m.variant,
                warn=False,
                **options,
            )
        except ValueError as exc:
            raise ConfigError(f"[model] ({m.variant}): {exc}") from None

    def build_baseline(self) -> MeanCapacityBaseline:
        """The mean-capacity baseline: the equilibrium (gap ≤ ``data.gap``) under the mean capacity
        of the training contexts, predicted for every context."""
        return MeanCapacityBaseline.from_data(self.dataset(self._data_dir), gap=self.config.data.gap)

    # -- loss and metrics -------------------------------------------------------------------------

    def loss(self, output: Tensor, target: TrafficTarget) -> Tensor:
        return traffic_loss(output, target.flow.to(output.dtype), self.dataset(self._data_dir).flow_scale())

    def measure(self, output: Tensor, target: TrafficTarget) -> dict[str, Tensor]:
        data = self.dataset(self._data_dir)
        x, t = output.detach().to(torch.float64), target.flow.to(torch.float64)
        out = {
            "rel_error": relative_error(x, t),
            "trafix": trafix_score(x, t),
            "conservation": conservation_error(x, data.network).to(x.device),
        }
        if target.gap:
            out["wardrop_gap"] = wardrop_gap(x, target.context, data.network, data.model).to(x.device)
        else:
            out["wardrop_gap"] = torch.full_like(out["rel_error"], math.nan)
        return out

    def run_name(self) -> str:
        return f"{self.config.run.name or self.name}-{self.config.data.slug()}-{self.config.model.variant}"

    # -- outputs ----------------------------------------------------------------------------------

    def figures(
        self, run_dir: Path, model: nn.Module, splits: Splits, *, device: Any, dtype: Any
    ) -> list[Path]:
        """``traffic_metrics.json`` (:func:`set_metrics` of val and test) and, on the test split,
        ``flows.png`` (predicted against equilibrium link flows) and, for networks with node
        coordinates, ``flow_map.png`` and ``error_map.png`` (mean equilibrium flow and mean |X̂ − X*|
        per link)."""
        data = self.dataset(self._data_dir)
        summary = {
            split: set_metrics(self, model, getattr(splits, split), name=split, device=device, dtype=dtype)
            for split in ("val", "test")
            if len(getattr(splits, split))
        }
        path = run_dir / "traffic_metrics.json"
        preds = {k: v.pop("prediction") for k, v in summary.items()}
        path.write_text(json.dumps(summary, indent=1) + "\n")
        paths = [path]
        if "test" not in preds:
            return paths
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            warnings.warn(
                "matplotlib is not installed; no traffic figures written", RuntimeWarning, stacklevel=2
            )
            return paths
        import matplotlib.pyplot as plt

        from .plots import flow_scatter, network_map

        pred, true = preds["test"], splits.test.target.to(torch.float64)
        label = self.run_name()
        stats = summary["test"]
        title = (
            f"{label}\ntest ‖X̂ − X*‖/‖X*‖ = {stats['relative_error_total']:.3g}, "
            f"TRAFIX {100 * stats['trafix']:.1f}%"
        )
        fig = flow_scatter(pred, true, run_dir / "flows.png", title=title)
        plt.close(fig)
        paths.append(run_dir / "flows.png")
        if data.network.coordinates is not None:
            network_map(
                data.network,
                true.mean(0),
                run_dir / "flow_map.png",
                label="mean equilibrium flow (test)",
                title=f"{data.network.name}: mean equilibrium link flow, {len(true)} test contexts",
            )
            network_map(
                data.network,
                (pred - true).abs().mean(0),
                run_dir / "error_map.png",
                label="mean |X̂ − X*| (vehicles)",
                cmap="magma",
                title=f"{label}\nmean absolute error per link (test)",
            )
            paths += [run_dir / "flow_map.png", run_dir / "error_map.png"]
        return paths


# -------------------------------------------------------------------------------------------------
# set-level numbers and the evaluation-only baseline


@torch.no_grad()
def set_metrics(
    task: TrafficTask,
    model: nn.Module,
    split: TensorSplit,
    *,
    name: str | None = None,
    device: Any = None,
    dtype: Any = None,
) -> dict[str, Any]:
    """Whole-split numbers of ``model`` (eval mode) on ``split``.

    Returns ``relative_error_total`` = ‖X̂ − X*‖_F / ‖X*‖_F (the paper's figure),
    ``relative_error`` (mean over samples of ‖X̂_i − X*_i‖ / ‖X*_i‖), ``trafix`` (mean share of links
    within 0.5 %), ``wardrop_gap`` (mean, median, max of the relative gap of X̂ under the true costs),
    ``conservation`` (mean), ``iterations`` (mean and max forward iterations, fraction converged;
    None without a fixed point), ``seconds_per_context`` (the prediction's wall time per context),
    ``n``, ``target_gap_max`` (the largest certified gap of the targets, when ``name`` names the
    data set's split) and ``prediction`` (N, E) float64 on the CPU.
    """
    data = task.dataset(task._data_dir)
    was_training = model.training
    model.eval()
    preds, iters, conv = [], [], []
    start = time.perf_counter()
    try:
        for (d,), _target in task.loader(split, train=False, device=device):
            out = model(d if dtype is None else d.to(dtype))
            preds.append(out.to(device="cpu", dtype=torch.float64))
            sol = getattr(model, "solution", None)
            if sol is not None:
                iters.append(sol.iterations.cpu().double())
                conv.append(sol.converged.cpu().double())
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    pred = torch.cat(preds)  # (N, E)
    true = split.target.to(torch.float64)
    context = split.inputs[0]
    gaps = wardrop_gap(pred, context, data.network, data.model)
    it = torch.cat(iters) if iters else None
    return {
        "n": len(split),
        "relative_error_total": float(torch.linalg.norm(pred - true) / torch.linalg.norm(true)),
        "relative_error": float(relative_error(pred, true).mean()),
        "trafix": float(trafix_score(pred, true).mean()),
        "wardrop_gap": {
            "mean": float(gaps.mean()),
            "median": float(gaps.median()),
            "max": float(gaps.max()),
        },
        "conservation": float(conservation_error(pred, data.network).mean()),
        "iterations": None
        if it is None
        else {"mean": float(it.mean()), "max": int(it.max()), "converged": float(torch.cat(conv).mean())},
        "target_gap_max": None if name is None else float(data.split(name).gap.max()),
        "seconds_per_context": seconds / max(len(split), 1),
        "prediction": pred,
    }


def evaluate_baseline(config: Any, *, run_dir: str | Path, data_dir: str | Path | None = None) -> dict:
    """Evaluate the mean-capacity baseline of ``config`` (a traffic :class:`fpnets.train.Config`)
    and write a run folder like the trainer's: ``config.toml``, ``results.json`` (val and test with
    the task's loss and metrics, as :func:`fpnets.train.evaluate` measures them), the figures and
    ``traffic_metrics.json``. Returns the results."""
    from ...train import evaluate

    if config.task.name != TrafficTask.name:
        raise ValueError(f"evaluate_baseline needs a traffic config, got task {config.task.name!r}")
    config = dataclasses.replace(config, model=TrafficModelConfig(variant="mean-capacity"))
    task = TrafficTask(config)
    splits = task.load_splits(data_dir)
    start = time.perf_counter()
    model = task.build_baseline()
    build_seconds = time.perf_counter() - start
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.toml").write_text(config.to_toml())
    results: dict[str, Any] = {
        "task": task.name,
        "variant": "mean-capacity",
        "parameters": 0,
        "build_seconds": build_seconds,
        "val": evaluate(task, model, task.loader(splits.val, train=False)),
        "test": evaluate(task, model, task.loader(splits.test, train=False)),
    }
    (run / "results.json").write_text(json.dumps(_finite(results), indent=1) + "\n")
    if config.run.plots:
        task.figures(run, model, splits, device=None, dtype=None)
    return results


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _main(argv: list[str] | None = None) -> int:
    import argparse

    from ...train import load_config

    p = argparse.ArgumentParser(
        prog="python -m fpnets.tasks.traffic.task",
        description="Evaluate the mean-capacity baseline of a traffic config into a run folder.",
    )
    p.add_argument("config", help="a traffic config file or bundled name (e.g. traffic-siouxfalls)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--data-dir", help="where the networks are (default: $FPNETS_DATA)")
    p.add_argument("--out", required=True, help="the run folder to write")
    args = p.parse_args(argv)
    results = evaluate_baseline(load_config(args.config, args.set), run_dir=args.out, data_dir=args.data_dir)
    test = results["test"]
    print(  # the command line's report
        f"mean-capacity: test rel_error {test['rel_error']:.4g} trafix {100 * test['trafix']:.2f}% "
        f"wardrop_gap {test['wardrop_gap']:.3g} -> {args.out}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
