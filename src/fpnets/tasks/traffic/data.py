"""Contextual traffic data sets: contexts d and certified equilibrium link flows x*(d).

A context d ∈ R^m changes link capacities, c(d) = c₀ ⊙ (1 + clamp(W d, ±r)), with the costs
t(v; d) = t₀ ⊙ (1 + 0.5 (v / c(d))⁴) (:class:`~fpnets.tasks.traffic.network.ContextModel`). Each
sample's target is the user equilibrium under t(·; d), solved by
:func:`~fpnets.tasks.traffic.assignment.solve_equilibrium` to a relative gap ≤ ``gap`` (stored per
sample). Data sets are cached as ``.npz`` in a data directory under a name derived from all
generation parameters; the parameters are also stored inside and compared on load, so other
parameters (or changed network files) always rebuild.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .assignment import PathSet, solve_equilibrium
from .network import ContextModel, Network

__all__ = [
    "DataParams",
    "TrafficData",
    "TrafficSplit",
    "build_dataset",
    "default_cap_range",
    "draw_contexts",
    "generate",
]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class DataParams:
    """Everything that determines a data set (recorded in the cache and checked on load).

    Attributes:
        network: network name; fingerprint: hash of its net and trips files.
        n_train, n_val, n_test: split sizes (the contexts are drawn in this order).
        seed: seed of W (``seed``) and of the contexts (``seed + 1``).
        dim: m, context size; cap_range: r; b, power: BPR B and p of the contextual costs.
        first_column_scale: W[:, 0] = −first_column_scale · U[0, 1].
        gap: target relative gap of every equilibrium.
    """

    network: str
    fingerprint: str
    n_train: int
    n_val: int
    n_test: int
    seed: int = 0
    dim: int = 10
    cap_range: float = 0.3
    b: float = 0.5
    power: float = 4.0
    first_column_scale: float = 10.0
    gap: float = 1e-8
    version: int = FORMAT_VERSION

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class TrafficSplit:
    """One split: context (N, m), flow (N, E) equilibrium link flows, gap (N,) their relative gaps."""

    context: Tensor
    flow: Tensor
    gap: Tensor

    def __len__(self) -> int:
        return int(self.context.shape[0])

    def tensors(self) -> tuple[Tensor, Tensor]:
        """(context, flow), e.g. for ``torch.utils.data.TensorDataset``."""
        return self.context, self.flow


@dataclass
class TrafficData:
    """A contextual traffic data set: the network, the context model (W) and three splits."""

    network: Network
    model: ContextModel
    params: DataParams
    train: TrafficSplit
    val: TrafficSplit
    test: TrafficSplit
    path: Path | None = None
    seconds: float = 0.0

    def split(self, name: str) -> TrafficSplit:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; valid splits: train, val, test")
        return getattr(self, name)

    def flow_scale(self) -> float:
        """A typical link flow: the mean training link flow (used to normalise model inputs/outputs)."""
        return float(self.train.flow.mean())

    def capacities(self, context: Tensor) -> np.ndarray:
        """(N, E) capacities c(d) of the contexts (N, m)."""
        return self.model.capacity(self.network, context.detach().cpu().double().numpy())


def default_cap_range(network: Network) -> float:
    """The paper's r in c(d) = c₀ ⊙ (1 + clamp(W d, ±r)) for ``network``: 0.8 on Anaheim, else 0.3."""
    return 0.8 if network.name.lower().startswith("anaheim") else 0.3


def draw_contexts(
    network: Network, params: DataParams, n: int | None = None
) -> tuple[ContextModel, np.ndarray]:
    """The context model (W drawn from ``params.seed``) and the first ``n`` contexts d (n, m) of its
    stream (seed + 1; default n = n_train + n_val + n_test). The rows form a prefix-stable stream:
    a smaller n gives the leading rows of a larger one."""
    model = ContextModel.random(
        network,
        dim=params.dim,
        seed=params.seed,
        cap_range=params.cap_range,
        first_column_scale=params.first_column_scale,
        b=params.b,
        power=params.power,
    )
    if n is None:
        n = params.n_train + params.n_val + params.n_test
    return model, model.sample(n, seed=params.seed + 1)  # (n, m)


def generate(
    network: Network,
    params: DataParams,
    *,
    chunk: int = 500,
    max_iter: int = 500,
    workers: int = 1,
    sweeps: int = 4,
    newton: int = 0,
) -> tuple[ContextModel, np.ndarray, np.ndarray, np.ndarray]:
    """(context model, contexts (N, m), flows (N, E), gaps (N,)) for N = n_train + n_val + n_test.

    Contexts (:func:`draw_contexts`) are solved ``chunk`` at a time, all sharing one path set
    (column generation). With ``workers`` > 1 the contexts are cut into that many contiguous spans,
    solved in as many processes, each with its own path set; the contexts are the same and every
    equilibrium meets the same gap, so the flows agree with a one-process run to the accuracy the
    gap certifies (not bit for bit). ``workers = 0`` uses every core. ``sweeps`` and ``newton`` are
    :func:`~.assignment.solve_equilibrium`'s (Gauss–Seidel sweeps and projected Newton steps per
    round); like ``workers`` they change how fast the certificate is met, not what it certifies.
    Raises RuntimeError if an equilibrium misses the target gap.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"generate: workers must be an integer >= 0 (0: every core), got {workers!r}")
    model, d = draw_contexts(network, params)  # (N, m)
    n = d.shape[0]
    workers = min(workers or (os.cpu_count() or 1), max(n, 1))
    if workers <= 1:
        flows, gaps = _solve_span(network, model, d, params.gap, chunk, max_iter, sweeps, newton)
        return model, d, flows, gaps
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # not fork: the caller may run threads (torch), and a forked child of a threaded process can hang
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    bounds = np.linspace(0, n, workers + 1).round().astype(int)
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [
            pool.submit(_solve_span, network, model, d[lo:hi], params.gap, chunk, max_iter, sweeps, newton)
            for lo, hi in itertools.pairwise(bounds.tolist())
        ]
        parts = [f.result() for f in futures]
    return model, d, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _solve_span(
    network: Network,
    model: ContextModel,
    d: np.ndarray,
    gap: float,
    chunk: int,
    max_iter: int,
    sweeps: int = 4,
    newton: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(flows (N, E), gaps (N,)) of the contexts d (N, m), ``chunk`` at a time on one path set."""
    n = d.shape[0]
    flows = np.empty((n, network.num_links))
    gaps = np.empty(n)
    paths = PathSet(network)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        res = solve_equilibrium(
            network,
            model.costs(network, d[lo:hi]),
            gap=gap,
            max_iter=max_iter,
            sweeps=sweeps,
            newton=newton,
            paths=paths,
            throw=True,
        )
        flows[lo:hi] = res.link_flow
        gaps[lo:hi] = res.gap
    return flows, gaps


def _to_split(d: np.ndarray, x: np.ndarray, g: np.ndarray, dtype: torch.dtype) -> TrafficSplit:
    return TrafficSplit(torch.as_tensor(d, dtype=dtype), torch.as_tensor(x, dtype=dtype), torch.as_tensor(g))


def build_dataset(
    network_dir: str | Path,
    n_train: int = 1000,
    n_val: int = 100,
    n_test: int = 200,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    cap_range: float | None = None,
    gap: float = 1e-8,
    dim: int = 10,
    dtype: torch.dtype = torch.float32,
    chunk: int = 500,
    rebuild: bool = False,
    workers: int = 1,
    sweeps: int = 4,
    newton: int = 0,
) -> TrafficData:
    """Load or generate the contextual data set of the network in ``network_dir``.

    Args:
        network_dir: a TNTP directory (``*_net.tntp``, ``*_trips.tntp``).
        n_train, n_val, n_test: split sizes (the paper used 5,000 train and 500 test).
        data_dir: cache directory; None: no cache (generate every call).
        seed: seed of W and of the contexts.
        cap_range: r in clamp(W d, ±r); default 0.8 for Anaheim, else 0.3 (as in the paper).
        gap: target relative gap of every equilibrium.
        dtype: dtype of the returned tensors (the cache holds float64).
        rebuild: regenerate even when a matching cache exists.
        workers: processes that generate (:func:`generate`; 0: every core). Not part of the cache
            key: the data meet the same certificate however many processes made them.
        sweeps, newton: the solver's Gauss–Seidel sweeps and projected Newton steps per round
            (:func:`~.assignment.solve_equilibrium`); not part of the cache key either.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("newton", newton)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"build_dataset: {name} must be an integer >= 0, got {value!r}")
    if not isinstance(sweeps, int) or isinstance(sweeps, bool) or sweeps < 1:
        raise ValueError(f"build_dataset: sweeps must be an integer >= 1, got {sweeps!r}")
    if n_train + n_val + n_test == 0:
        raise ValueError("build_dataset: the data set would be empty")
    if not 0 < gap < 1e-3:
        raise ValueError(f"build_dataset: gap must lie in (0, 1e-3), got {gap!r}")
    network = Network.from_tntp(network_dir)
    if cap_range is None:
        cap_range = default_cap_range(network)
    params = DataParams(
        network=network.name,
        fingerprint=network.fingerprint,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        seed=seed,
        dim=dim,
        cap_range=float(cap_range),
        gap=float(gap),
    )
    path = None
    if data_dir is not None:
        path = Path(data_dir) / f"traffic-{network.name}-{params.key()}.npz"
        if path.exists() and not rebuild:
            loaded = _load(path, params)
            if loaded is not None:
                model, d, x, g, seconds = loaded
                return _assemble(network, model, params, d, x, g, dtype, path, seconds)
    import time

    start = time.perf_counter()
    model, d, x, g = generate(network, params, chunk=chunk, workers=workers, sweeps=sweeps, newton=newton)
    seconds = time.perf_counter() - start
    if path is not None:
        _save(path, params, model, d, x, g, seconds)
    return _assemble(network, model, params, d, x, g, dtype, path, seconds)


def _assemble(network, model, params, d, x, g, dtype, path, seconds) -> TrafficData:
    a, b = params.n_train, params.n_train + params.n_val
    return TrafficData(
        network=network,
        model=model,
        params=params,
        train=_to_split(d[:a], x[:a], g[:a], dtype),
        val=_to_split(d[a:b], x[a:b], g[a:b], dtype),
        test=_to_split(d[b:], x[b:], g[b:], dtype),
        path=path,
        seconds=seconds,
    )


def _save(path: Path, params: DataParams, model: ContextModel, d, x, g, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                params=np.array(json.dumps(asdict(params), sort_keys=True)),
                weight=model.weight,
                context=d,
                flow=x,
                gap=g,
                seconds=np.array(seconds),
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load(path: Path, params: DataParams):
    """(model, d, x, g, seconds) from a cache file whose recorded parameters equal ``params``, else None
    (with a warning that it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = json.loads(str(f["params"]))
            arrays = {k: f[k] for k in ("weight", "context", "flow", "gap", "seconds")}
    except (OSError, KeyError, ValueError) as exc:
        warnings.warn(
            f"{path}: unreadable traffic data cache ({exc}); rebuilding it", UserWarning, stacklevel=3
        )
        return None
    if stored != asdict(params):
        diff = {k: (stored.get(k), v) for k, v in asdict(params).items() if stored.get(k) != v}
        warnings.warn(
            f"{path}: cached with other generation parameters {diff} (stored, requested); rebuilding it",
            UserWarning,
            stacklevel=3,
        )
        return None
    n = params.n_train + params.n_val + params.n_test
    if (
        arrays["flow"].shape[0] != n
        or not np.all(arrays["gap"] <= params.gap)
        or not np.isfinite(arrays["flow"]).all()
    ):
        warnings.warn(
            f"{path}: cache contents do not match its parameters; rebuilding it", UserWarning, stacklevel=3
        )
        return None
    model = ContextModel(arrays["weight"], params.cap_range, params.b, params.power)
    return model, arrays["context"], arrays["flow"], arrays["gap"], float(arrays["seconds"])
