"""Road networks, link costs and the contextual capacity model.

- :class:`Network`: nodes, links (node–link incidence N), free-flow times t₀, capacities c₀, the
  BPR coefficients B and p of the file, the origin–destination demand q and, when a node file
  exists, node coordinates. Built from a TNTP directory with :meth:`Network.from_tntp`.
- :class:`LinkCosts`: BPR link costs t(v) = t₀ ⊙ (1 + B ⊙ (v / c)^p), batched over contexts.
- :class:`ContextModel`: the contextual game of McKenzie et al.: c(d) = c₀ ⊙ (1 + clamp(W d, ±r))
  with a seeded W, costs with B = 0.5, p = 4.
- :class:`ShortestPaths`: shortest-path trees (scipy.sparse.csgraph Dijkstra) that never pass
  through a zone below <FIRST THRU NODE> (each such zone is split into a source and a sink copy).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .tntp import TNTPError, find_file, read_flow, read_net, read_node, read_trips

__all__ = ["ContextModel", "LinkCosts", "Network", "ShortestPaths", "check_contexts"]


@dataclass(frozen=True, eq=False)
class Network:
    """A road network with its origin–destination demand (all indices 0-based).

    Attributes:
        name: a label (the TNTP file stem).
        num_nodes: n.
        num_zones: Z; zones are nodes 0 … Z − 1.
        first_thru_node: 0-based index of the first node that traffic may pass through; zones below
            it are only origins or destinations (TNTP <FIRST THRU NODE> − 1).
        tail, head: (E,) int64 link end nodes.
        free_flow_time: (E,) t₀.
        capacity: (E,) c₀.
        b, power: (E,) B and p of the file's BPR costs.
        demand: (Z, Z) q, q[o, d] trips from zone o to zone d (the diagonal is ignored).
        coordinates: (n, 2) node (x, y) or None.
        length: (E,) link length (informational).
        fingerprint: a hash of the files the network was read from ("" if built in memory).
    """

    name: str
    num_nodes: int
    num_zones: int
    first_thru_node: int
    tail: np.ndarray
    head: np.ndarray
    free_flow_time: np.ndarray
    capacity: np.ndarray
    b: np.ndarray
    power: np.ndarray
    demand: np.ndarray
    coordinates: np.ndarray | None = None
    length: np.ndarray | None = None
    fingerprint: str = ""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        e = self.tail.shape[0]
        for name in ("tail", "head", "free_flow_time", "capacity", "b", "power"):
            arr = getattr(self, name)
            if arr.shape != (e,):
                raise ValueError(f"Network: {name} must have shape ({e},), got {arr.shape}")
        for name in ("free_flow_time", "capacity", "b", "power", "demand"):
            arr = getattr(self, name)
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"Network: {name} holds NaN or Inf")
        if np.any(self.capacity <= 0):
            raise ValueError(f"Network: capacity must be positive (link {int(np.argmin(self.capacity))})")
        for name in ("free_flow_time", "b", "power", "demand"):
            arr = getattr(self, name)
            if np.any(arr < 0):
                raise ValueError(f"Network: {name} must be >= 0, found {arr.min()!r}")
        if self.demand.shape != (self.num_zones, self.num_zones):
            raise ValueError(
                f"Network: demand must have shape ({self.num_zones}, {self.num_zones}), got {self.demand.shape}"
            )
        if (
            min(self.tail.min(), self.head.min()) < 0
            or max(self.tail.max(), self.head.max()) >= self.num_nodes
        ):
            raise ValueError(f"Network: link end nodes must lie in [0, {self.num_nodes})")
        if self.coordinates is not None and self.coordinates.shape != (self.num_nodes, 2):
            raise ValueError(f"Network: coordinates must have shape ({self.num_nodes}, 2)")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tntp(
        cls, directory: str | Path, *, total: str = "error", check_connected: bool = True
    ) -> Network:
        """Read ``*_net.tntp``, ``*_trips.tntp`` and (if present) ``*_node.tntp`` from ``directory``.

        Args:
            total: what a <TOTAL OD FLOW> that disagrees with the entries does ("error", "warn",
                "ignore"; see :func:`~fpnets.tasks.traffic.tntp.read_trips`).
            check_connected: raise :class:`TNTPError` when some OD pair with demand has no path.
        """
        directory = Path(directory)
        net_path = find_file(directory, "net")
        trips_path = find_file(directory, "trips")
        node_path = find_file(directory, "node", required=False)
        assert net_path is not None and trips_path is not None
        net = read_net(net_path)
        trips = read_trips(trips_path, net.num_zones, total=total)
        xy = read_node(node_path, net.num_nodes) if node_path is not None else None
        digest = hashlib.sha256()
        for p in (net_path, trips_path):
            digest.update(p.read_bytes())
        network = cls(
            name=net_path.name[: -len("_net.tntp")],
            num_nodes=net.num_nodes,
            num_zones=net.num_zones,
            first_thru_node=net.first_thru_node - 1,
            tail=net.tail - 1,
            head=net.head - 1,
            free_flow_time=net.free_flow_time,
            capacity=net.capacity,
            b=net.b,
            power=net.power,
            demand=trips.demand,
            coordinates=xy,
            length=net.length,
            fingerprint=digest.hexdigest()[:16],
        )
        if check_connected:
            try:
                network.check_connected()
            except ValueError as exc:
                raise TNTPError(f"{directory}: {exc}") from None
        return network

    # ------------------------------------------------------------------ derived quantities
    @property
    def num_links(self) -> int:
        """E."""
        return int(self.tail.shape[0])

    @property
    def incidence(self) -> np.ndarray:
        """(n, E) node–link incidence N: N[head(e), e] = +1, N[tail(e), e] = −1.

        A link flow x of one commodity conserves flow when N x = b with b = (inflow − outflow) per node.
        """
        if "incidence" not in self._cache:
            n = np.zeros((self.num_nodes, self.num_links))
            cols = np.arange(self.num_links)
            n[self.head, cols] = 1.0
            n[self.tail, cols] = -1.0
            self._cache["incidence"] = n
        return self._cache["incidence"]

    @property
    def od_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(origin, destination, demand) of the W pairs with q > 0 and origin ≠ destination, each (W,)."""
        if "od" not in self._cache:
            q = self.demand.copy()
            np.fill_diagonal(q, 0.0)
            o, d = np.nonzero(q > 0)
            self._cache["od"] = (o.astype(np.int64), d.astype(np.int64), q[o, d])
        return self._cache["od"]

    @property
    def origins(self) -> np.ndarray:
        """(K,) the zones with outgoing demand (the commodities of origin-based flows)."""
        return np.unique(self.od_pairs[0])

    def commodity_demand(self, commodity: str = "origin") -> np.ndarray:
        """(K, n) b_k with N x_k = b_k for each commodity k (b_k = inflow − outflow at each node).

        commodity "origin": one commodity per origin zone (x_k: all flow leaving that origin);
        "od": one per OD pair with demand.
        """
        o, d, q = self.od_pairs
        if commodity == "od":
            b = np.zeros((len(q), self.num_nodes))
            rows = np.arange(len(q))
            b[rows, o] = -q
            b[rows, d] = q
            return b
        if commodity != "origin":
            raise ValueError(f"commodity must be 'origin' or 'od', got {commodity!r}")
        origins = self.origins
        k_of = {int(z): k for k, z in enumerate(origins)}
        b = np.zeros((len(origins), self.num_nodes))
        for oo, dd, qq in zip(o, d, q, strict=True):
            b[k_of[int(oo)], oo] -= qq
            b[k_of[int(oo)], dd] += qq
        return b

    def commodity_sources(self, commodity: str = "origin") -> np.ndarray:
        """(K,) the origin node of each commodity."""
        return self.origins if commodity == "origin" else self.od_pairs[0]

    def forbidden_links(self, commodity: str = "origin") -> np.ndarray:
        """(K, E) bool: links a commodity may not use (they leave a zone below the first thru node
        that is not the commodity's own origin)."""
        sources = self.commodity_sources(commodity)
        no_thru = self.tail < min(self.first_thru_node, self.num_zones)  # (E,)
        return no_thru[None, :] & (self.tail[None, :] != sources[:, None])

    def total_demand(self) -> float:
        return float(self.od_pairs[2].sum())

    def costs(self) -> LinkCosts:
        """The file's BPR costs (capacity c₀, B and p of the link file)."""
        return LinkCosts(self.free_flow_time, self.capacity[None, :], self.b, self.power)

    def shortest_paths(self) -> ShortestPaths:
        if "sp" not in self._cache:
            self._cache["sp"] = ShortestPaths(self)
        return self._cache["sp"]

    def check_connected(self) -> None:
        """Raise ValueError naming OD pairs with demand but no path (respecting the first thru node)."""
        o, d, _ = self.od_pairs
        dist = self.shortest_paths().distances(np.maximum(self.free_flow_time, 1e-9)[None, :])[0]  # (Z, Z)
        bad = ~np.isfinite(dist[o, d])
        if bad.any():
            pairs = ", ".join(f"{a + 1}->{b + 1}" for a, b in zip(o[bad][:5], d[bad][:5], strict=True))
            raise ValueError(
                f"{int(bad.sum())} OD pairs with demand are not connected by the network (e.g. {pairs}; "
                "zones are 1-based); remove their demand or add links"
            )

    def best_known_flow(self, directory: str | Path) -> np.ndarray | None:
        """(E,) the link volumes of ``*_flow.tntp`` in ``directory`` in this network's link order, or None."""
        path = find_file(directory, "flow", required=False)
        if path is None:
            return None
        tail, head, vol, _ = read_flow(path)
        index = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(self.tail, self.head, strict=True))}
        if len(index) != self.num_links:
            raise TNTPError(f"{path}: the network has parallel links; flows cannot be matched by node pair")
        out = np.full(self.num_links, np.nan)
        for a, b, v in zip(tail - 1, head - 1, vol, strict=True):
            i = index.get((int(a), int(b)))
            if i is None:
                raise TNTPError(f"{path}: link {a + 1} -> {b + 1} is not in the network")
            out[i] = v
        if np.isnan(out).any():
            raise TNTPError(f"{path}: {int(np.isnan(out).sum())} links of the network have no flow")
        return out


@dataclass(frozen=True)
class LinkCosts:
    """BPR link costs t(v) = t₀ ⊙ (1 + B ⊙ (v / c)^p) for C contexts (float64 numpy).

    Attributes:
        t0: (E,) t₀.
        capacity: (C, E) c, one row per context.
        b, power: (E,) B and p.
    """

    t0: np.ndarray
    capacity: np.ndarray
    b: np.ndarray
    power: np.ndarray

    def __post_init__(self) -> None:
        if self.capacity.ndim != 2 or self.capacity.shape[1] != self.t0.shape[0]:
            raise ValueError(
                f"LinkCosts: capacity must be (C, {self.t0.shape[0]}), got {self.capacity.shape}"
            )
        if not np.all(np.isfinite(self.capacity)) or np.any(self.capacity <= 0):
            raise ValueError("LinkCosts: capacities must be finite and positive")

    @property
    def num_contexts(self) -> int:
        return int(self.capacity.shape[0])

    def subset(self, rows: np.ndarray | slice) -> LinkCosts:
        return LinkCosts(self.t0, self.capacity[rows], self.b, self.power)

    def time(self, v: np.ndarray, cols: np.ndarray | slice = slice(None)) -> np.ndarray:
        """t(v): (C, L) link flows of the links ``cols`` -> (C, L) travel times."""
        ratio = np.maximum(v, 0.0) / self.capacity[:, cols]
        return self.t0[cols] * (1.0 + self.b[cols] * ratio ** self.power[cols])

    def derivative(self, v: np.ndarray, cols: np.ndarray | slice = slice(None)) -> np.ndarray:
        """t′(v) = t₀ B p v^(p−1) / c^p, elementwise: (C, L) -> (C, L)."""
        cap = self.capacity[:, cols]
        p = self.power[cols]
        ratio = np.maximum(v, 0.0) / cap
        with np.errstate(divide="ignore", invalid="ignore"):
            dv = np.where(p > 0, p * ratio ** np.maximum(p - 1.0, 0.0), 0.0)
        return self.t0[cols] * self.b[cols] * dv / cap

    def beckmann(self, v: np.ndarray) -> np.ndarray:
        """Σ_e ∫₀^{v_e} t_e: (C, E) -> (C,) (the potential whose minimisers are the equilibria)."""
        ratio = np.maximum(v, 0.0) / self.capacity
        return (self.t0 * v * (1.0 + self.b * ratio**self.power / (self.power + 1.0))).sum(-1)


def check_contexts(d: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Validate a (C, m) context array: float, finite; returns it as float64."""
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"contexts must be a (C, m) array, got shape {d.shape}")
    if dim is not None and d.shape[1] != dim:
        raise ValueError(f"contexts must have {dim} columns, got {d.shape[1]}")
    if not np.all(np.isfinite(d)):
        rows = np.nonzero(~np.isfinite(d).all(1))[0]
        raise ValueError(f"contexts hold NaN or Inf (rows {rows[:5].tolist()}); remove or resample them")
    return d


@dataclass(frozen=True)
class ContextModel:
    """c(d) = c₀ ⊙ (1 + clamp(W d, −r, r)) and t(v; d) = t₀ ⊙ (1 + B (v / c(d))^p).

    Attributes:
        weight: (E, m) W.
        cap_range: r (0.3 in the paper, 0.8 for Anaheim).
        b, power: B and p of the contextual costs (0.5 and 4 in the paper).
        context_scale: contexts are d = context_scale · U[0, 1]^m.
    """

    weight: np.ndarray
    cap_range: float = 0.3
    b: float = 0.5
    power: float = 4.0
    context_scale: float = 10.0

    @classmethod
    def random(
        cls,
        network: Network,
        *,
        dim: int = 10,
        seed: int = 0,
        cap_range: float = 0.3,
        first_column_scale: float = 10.0,
        b: float = 0.5,
        power: float = 4.0,
    ) -> ContextModel:
        """W with entries U[0, 1] and a first column −first_column_scale · U[0, 1] (the paper's draw)."""
        if not 0 < cap_range < 1:
            raise ValueError(f"cap_range must lie in (0, 1), got {cap_range!r}")
        rng = np.random.default_rng(seed)
        w = rng.random((network.num_links, dim))
        w[:, 0] = -first_column_scale * rng.random(network.num_links)
        return cls(w, cap_range, b, power)

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def sample(self, n: int, seed: int) -> np.ndarray:
        """(n, m) contexts d = context_scale · U[0, 1]^m."""
        return self.context_scale * np.random.default_rng(seed).random((n, self.dim))

    def capacity(self, network: Network, d: np.ndarray) -> np.ndarray:
        """(C, m) contexts -> (C, E) capacities c(d)."""
        d = check_contexts(d, self.dim)
        wd = np.clip(d @ self.weight.T, -self.cap_range, self.cap_range)  # (C, E)
        return network.capacity[None, :] * (1.0 + wd)

    def costs(self, network: Network, d: np.ndarray) -> LinkCosts:
        e = network.num_links
        return LinkCosts(
            network.free_flow_time, self.capacity(network, d), np.full(e, self.b), np.full(e, self.power)
        )


class ShortestPaths:
    """Shortest paths from every origin zone, with Dijkstra on a graph where each zone below the first
    thru node has a separate source copy (carrying its outgoing links), so no path passes through it.

    Parallel links are resolved per call: the cheaper one is used.
    """

    def __init__(self, network: Network) -> None:
        import scipy.sparse  # noqa: F401  (fail early with a clear error if scipy is missing)

        self.network = network
        n = network.num_nodes
        limit = min(network.first_thru_node, network.num_zones)
        self.origins = network.origins  # (K,)
        split = np.arange(limit)  # zones that get a source copy
        self.source_of = np.arange(n)
        self.source_of[split] = n + np.arange(len(split))
        self.num_graph_nodes = n + len(split)
        self.tail = self.source_of[network.tail]  # (E,) tails in the split graph
        self.head = network.head.copy()
        self.sources = self.source_of[self.origins]  # (K,)
        key = self.tail * self.num_graph_nodes + self.head
        uniq, inverse = np.unique(key, return_inverse=True)
        self._parallel = len(uniq) < len(key)
        self._pair_key = key
        self._pair_index = inverse
        self._pairs = uniq
        self._link_of: dict[int, int] = {int(k): i for i, k in enumerate(key)}
        self._origin_row = {int(z): k for k, z in enumerate(self.origins)}

    def _graph(self, cost: np.ndarray):  # (E,) -> csr matrix
        import scipy.sparse as sp

        m = self.num_graph_nodes
        if not self._parallel:
            return sp.csr_matrix((cost, (self.tail, self.head)), shape=(m, m)), None
        best = np.full(len(self._pairs), np.inf)
        np.minimum.at(best, self._pair_index, cost)
        rows = self._pairs // m
        cols = self._pairs % m
        # the link realising each pair's minimum
        winner = np.full(len(self._pairs), -1)
        hit = cost == best[self._pair_index]
        winner[self._pair_index[hit]] = np.nonzero(hit)[0]
        return sp.csr_matrix((best, (rows, cols)), shape=(m, m)), winner

    def trees(self, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(dist (K, m), predecessors (K, m), parallel-link winners) for one (E,) cost vector."""
        from scipy.sparse.csgraph import dijkstra

        graph, winner = self._graph(cost)
        dist, pred = dijkstra(graph, directed=True, indices=self.sources, return_predecessors=True)
        return dist, pred, winner

    def distances(self, costs: np.ndarray) -> np.ndarray:
        """(C, E) link costs -> (C, K, Z) shortest-path costs from each origin to each zone."""
        z = self.network.num_zones
        out = np.empty((costs.shape[0], len(self.origins), z))
        for c in range(costs.shape[0]):
            dist, _, _ = self.trees(costs[c])
            out[c] = dist[:, :z]
        # rows indexed by origin position: expand to (C, Z, Z) style through origin_rows when needed
        return self._expand(out)

    def _expand(self, d: np.ndarray) -> np.ndarray:
        """(C, K, Z) -> (C, Z, Z) with +inf for zones that are not origins."""
        z = self.network.num_zones
        full = np.full((d.shape[0], z, z), np.inf)
        full[:, self.origins, :] = d
        return full

    def path(self, pred_row: np.ndarray, winner: np.ndarray | None, dest: int) -> np.ndarray:
        """The links (in order) of the tree path to ``dest`` from a predecessor row."""
        m = self.num_graph_nodes
        links = []
        node = dest
        while True:
            prev = pred_row[node]
            if prev < 0:
                break
            if winner is None:
                links.append(self._link_of[int(prev) * m + int(node)])
            else:
                links.append(int(winner[np.searchsorted(self._pairs, int(prev) * m + int(node))]))
            node = prev
        return np.asarray(links[::-1], dtype=np.int64)

    def origin_row(self, origin: int) -> int:
        return self._origin_row[int(origin)]
