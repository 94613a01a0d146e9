"""User-equilibrium traffic assignment: path-based gradient projection with column generation.

Wardrop user equilibrium: link flows v = Σ_p Δ_p h_p from path flows h ≥ 0 with Σ_{p ∈ P_w} h_p = q_w
for every OD pair w, such that every used path has the least cost c_p = Σ_{e ∈ p} t_e(v_e). It is the
minimiser of Beckmann's potential Σ_e ∫₀^{v_e} t_e.

The certificate is the relative gap

    gap = (Σ_e t_e(v) v_e − Σ_w q_w κ_w(t(v))) / Σ_e t_e(v) v_e,

κ_w the shortest-path cost of w under t(v) (all paths of the network, from Dijkstra): gap ≥ 0, and
gap = 0 exactly at an equilibrium.

Algorithm (Jayakrishnan et al. 1994, with the path set shared by all contexts):

1. column generation: for every context, Dijkstra from every origin under t(v); a shortest path
   that is not yet in the shared path set is added (the set is the union over all contexts);
2. restricted problem: Gauss–Seidel sweeps over the OD pairs, each a projected Newton step that
   moves flow from every path p of w to its cheapest path p̂: Δh_p = −min(h_p, (c_p − c_p̂) / s_p),
   s_p = Σ_{e ∈ p ⊕ p̂} t′_e (the links used by exactly one of the two paths), vectorised over the
   contexts (arrays contexts × paths);
3. stop a context once its gap is at most the target.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .network import LinkCosts, Network

__all__ = [
    "AssignmentResult",
    "PathSet",
    "all_or_nothing",
    "commodity_flows",
    "free_flow_path_flow",
    "relative_gap",
    "solve_equilibrium",
    "splitting_latent",
]


class PathSet:
    """A set of paths shared by all contexts, grouped by OD pair.

    Attributes:
        network: the network.
        od: (P,) the OD pair (index into ``network.od_pairs``) of each path.
        links: list of (len,) int64 link indices of each path.
    """

    def __init__(self, network: Network) -> None:
        self.network = network
        self.num_od = len(network.od_pairs[2])
        self.od: list[int] = []
        self.links: list[np.ndarray] = []
        self._keys: dict[tuple[int, bytes], int] = {}
        self._by_od: list[list[int]] = [[] for _ in range(self.num_od)]
        self._matrix = None
        self._dirty: set[int] = set()
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.od)

    def add(self, od: int, links: np.ndarray) -> tuple[int, bool]:
        """(path id, whether it is new)."""
        key = (int(od), np.asarray(links, dtype=np.int64).tobytes())
        pid = self._keys.get(key)
        if pid is not None:
            return pid, False
        pid = len(self.od)
        self._keys[key] = pid
        self.od.append(int(od))
        self.links.append(np.asarray(links, dtype=np.int64))
        self._by_od[od].append(pid)
        self._matrix = None
        self._dirty.add(int(od))
        return pid, True

    def paths_of(self, od: int) -> list[int]:
        return self._by_od[od]

    def matrix(self):
        """(P, E) scipy CSR path–link incidence Δ."""
        if self._matrix is None:
            import scipy.sparse as sp

            rows = np.concatenate([np.full(len(lk), i) for i, lk in enumerate(self.links)])
            cols = np.concatenate(self.links)
            data = np.ones(len(cols))
            self._matrix = sp.csr_matrix((data, (rows, cols)), shape=(len(self.od), self.network.num_links))
        return self._matrix

    def block(self, od: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(path ids (P_w,), link union (L_w,), dense incidence A_w (P_w, L_w)) of one OD pair."""
        if od in self._dirty or od not in self._blocks:
            pids = np.asarray(self._by_od[od], dtype=np.int64)
            lw = np.unique(np.concatenate([self.links[p] for p in pids]))
            a = np.zeros((len(pids), len(lw)))
            for i, p in enumerate(pids):
                a[i, np.searchsorted(lw, self.links[p])] = 1.0
            self._blocks[od] = (pids, lw, a)
            self._dirty.discard(od)
        return self._blocks[od]

    def od_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(permutation sorting paths by OD, start offset of each OD in it) for per-OD reductions."""
        od = np.asarray(self.od)
        order = np.argsort(od, kind="stable")
        starts = np.searchsorted(od[order], np.arange(self.num_od))
        return order, starts


@dataclass
class AssignmentResult:
    """Result of :func:`solve_equilibrium` for C contexts.

    Attributes:
        link_flow: (C, E) v.
        gap: (C,) relative gap of v (the certificate, from Dijkstra over the whole network).
        converged: (C,) gap ≤ the target.
        iterations: (C,) column-generation rounds (Dijkstra calls per origin) of each context.
        sweeps: (C,) Gauss–Seidel sweeps over the OD pairs of each context.
        path_flow: (C, P) h on the shared path set.
        paths: the shared :class:`PathSet`.
        seconds: wall time.
    """

    link_flow: np.ndarray
    gap: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    sweeps: np.ndarray
    path_flow: np.ndarray
    paths: PathSet
    seconds: float = 0.0
    history: list[float] = field(default_factory=list)


def relative_gap(network: Network, costs: LinkCosts, v: np.ndarray) -> np.ndarray:
    """(C,) relative gap (Σ t(v)·v − Σ_w q_w κ_w) / Σ t(v)·v of link flows v (C, E).

    Negative flows are clipped to 0 first. For feasible v the gap is ≥ 0 (0 at equilibrium); for
    link flows that do not conserve flow or meet the demand it is only an indicator and can be
    negative.
    """
    v = np.maximum(np.asarray(v, dtype=np.float64), 0.0)
    t = costs.time(v)  # (C, E)
    o, d, q = network.od_pairs
    kappa = network.shortest_paths().distances(t)[:, o, d]  # (C, W)
    tv = (t * v).sum(-1)
    return (tv - kappa @ q) / tv


def commodity_flows(
    network: Network, paths: PathSet, path_flow: np.ndarray, commodity: str = "origin"
) -> np.ndarray:
    """(C, K, E) link flows of each commodity (origin or OD pair) from path flows (C, P) on ``paths``."""
    o = network.od_pairs[0]
    if commodity == "origin":
        k_of_od = np.searchsorted(network.origins, o)
        num_k = len(network.origins)
    elif commodity == "od":
        k_of_od, num_k = np.arange(len(o)), len(o)
    else:
        raise ValueError(f"commodity must be 'origin' or 'od', got {commodity!r}")
    h = np.atleast_2d(path_flow)
    out = np.zeros((h.shape[0], num_k, network.num_links))
    for pid, (w, links) in enumerate(zip(paths.od, paths.links, strict=True)):
        out[:, k_of_od[w], links] += h[:, pid : pid + 1]
    return out


def node_potentials(network: Network, t: np.ndarray, commodity: str = "origin") -> np.ndarray:
    """(C, K, n) shortest-path costs μ_k from each commodity's origin to every node under link costs
    t (C, E), with μ_k = 0 at the origin itself.

    Nodes that the origin cannot reach get a common finite label above every reachable one (so the
    reduced costs t_e + μ_tail − μ_head of :func:`splitting_latent` stay ≥ 0 on every link whose
    head is reachable, and no inf enters the arithmetic).
    """
    sp = network.shortest_paths()
    n = network.num_nodes
    origins = network.origins
    t = np.atleast_2d(np.asarray(t, dtype=np.float64))
    mu = np.empty((t.shape[0], len(origins), n))
    for c in range(t.shape[0]):
        dist, _, _ = sp.trees(t[c])  # (K_origins, graph nodes): the zones' source copies come after n
        mu[c] = dist[:, :n]
    mu[:, np.arange(len(origins)), origins] = 0.0  # the origin's own label (its source copy's)
    finite = np.isfinite(mu)
    if not finite.all():
        top = np.where(finite, mu, -np.inf).max(axis=2, keepdims=True)  # (C, K, 1)
        mu = np.where(finite, mu, top + t.sum(1)[:, None, None] + 1.0)
    if commodity == "origin":
        return mu
    if commodity == "od":
        return mu[:, np.searchsorted(origins, network.od_pairs[0]), :]
    raise ValueError(f"commodity must be 'origin' or 'od', got {commodity!r}")


def splitting_latent(
    network: Network,
    t: np.ndarray,
    flows: np.ndarray,
    alpha: float | np.ndarray,
    *,
    flow_scale: float = 1.0,
    time_scale: float = 1.0,
    commodity: str = "origin",
) -> np.ndarray:
    """The fixed point ζ* (C, K, E) of the Davis–Yin operator of :class:`~.models.TrafficNFPN` at an
    equilibrium: ζ* = x*/s − (α/τ) r, r_{k,e} = t_e + μ_k(tail e) − μ_k(head e).

    With x = P_C1(ζ), y = P_C2(2x − ζ − α F(x)), T(ζ) = ζ − x + y and F = t/τ (link costs in units
    of τ, flows in units of s): r ≥ 0 are the reduced costs under the node potentials μ of
    :func:`node_potentials`, and r = 0 on every link that commodity k uses at an equilibrium, so
    P_C1(ζ*) = x* (the commodity flows); 2x* − ζ* − αF = x* − (α/τ) Nᵀμ differs from x* by a vector
    in the range of Nᵀ, orthogonal to the affine set C2 ∋ x*, so y = x* and T(ζ*) = ζ*. Links a
    commodity may not use (C1 forces 0 on them) satisfy the same identity. The closer ``flows`` are
    to an equilibrium of t, the smaller ‖T(ζ*) − ζ*‖: it is the check.

    Args:
        t: (C, E) link costs at the equilibrium link flows Σ_k x*_k.
        flows: (C, K, E) commodity link flows x* in vehicles (:func:`commodity_flows`).
        alpha: α, the Davis–Yin step, or a (C, K, E) array of per-link steps D (the fixed point of
            the Davis–Yin operator in the metric of D⁻¹, ``TrafficNFPN.metric_operator``).
        flow_scale, time_scale: s and τ.
    """
    t = np.atleast_2d(np.asarray(t, dtype=np.float64))
    mu = node_potentials(network, t, commodity)  # (C, K, n)
    reduced = t[:, None, :] + mu[:, :, network.tail] - mu[:, :, network.head]  # (C, K, E)
    return np.asarray(flows, dtype=np.float64) / flow_scale - (alpha / time_scale) * reduced


def all_or_nothing(network: Network, cost: np.ndarray | None = None, commodity: str = "origin") -> np.ndarray:
    """(K, E) commodity link flows when every OD pair takes its shortest path under ``cost`` (E,)
    (default: the free-flow times t₀)."""
    paths = PathSet(network)
    h = free_flow_path_flow(network, paths, cost)
    return commodity_flows(network, paths, h[None, :], commodity)[0]


def free_flow_path_flow(network: Network, paths: PathSet, t0: np.ndarray | None = None) -> np.ndarray:
    """(P,) path flows of all-or-nothing on the shortest paths under t0 (E,) (default: the free-flow
    times), on ``paths`` (the shortest paths are added to it)."""
    t0 = network.free_flow_time if t0 is None else np.asarray(t0, dtype=np.float64)
    o, d, q = network.od_pairs
    sp = network.shortest_paths()
    _, pred, winner = sp.trees(t0)
    pid_w = [paths.add(w, sp.path(pred[sp.origin_row(o[w])], winner, int(d[w])))[0] for w in range(len(q))]
    h = np.zeros(len(paths))
    h[pid_w] = q
    return h


def _dijkstra_round(network: Network, paths: PathSet, t: np.ndarray, add: bool) -> tuple[np.ndarray, bool]:
    """Shortest-path costs (C, W) under link costs t (C, E); add missing shortest paths to ``paths``."""
    sp = network.shortest_paths()
    o, d, _ = network.od_pairs
    rows = np.array([sp.origin_row(z) for z in o])
    kappa = np.empty((t.shape[0], len(o)))
    added = False
    if add and len(paths):
        pc = (paths.matrix() @ t.T).T  # (C, P) path costs
        order, starts = paths.od_order()
        best = np.minimum.reduceat(pc[:, order], starts, axis=1)  # (C, W)
    else:
        best = np.full((t.shape[0], len(o)), np.inf)
    for c in range(t.shape[0]):
        dist, pred, winner = sp.trees(t[c])
        kappa[c] = dist[rows, d]
        if add:
            scale = np.maximum(np.abs(kappa[c]), 1e-300)
            need = np.nonzero(kappa[c] < best[c] - 1e-12 * scale)[0]
            for w in need:
                _, new = paths.add(int(w), sp.path(pred[rows[w]], winner, int(d[w])))
                added |= new
    return kappa, added


def _line_search(
    vl: np.ndarray,
    dv: np.ndarray,
    ic: np.ndarray,
    t0l: np.ndarray,
    t0bl: np.ndarray,
    power: np.ndarray,
    quartic: bool,
    g_start: np.ndarray,
    steps: int = 8,
) -> np.ndarray:
    """(C,) step λ ∈ (0, 1] along v + λ Δv: 1 unless the full step passes the minimum of Beckmann's
    potential φ by more than it started below it (φ′(1) > −φ′(0), with φ′(λ) = Σ t(v + λΔv)·Δv and
    g_start = φ′(0) < 0), else the minimiser (safeguarded Newton on φ′).

    The projected Newton step uses t′ at the current flows; with steep costs (p = 4 and low
    capacities) it can overshoot badly, and the full step then oscillates without converging.
    """

    def slope(lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = np.maximum(vl + lam[:, None] * dv, 0.0) * ic
        if quartic:
            r3 = r * r * r
            t, dt = t0bl * (r3 * r), (4.0 * t0bl) * r3 * ic
        else:
            t = t0bl * r**power
            dt = t0bl * power * r ** np.maximum(power - 1.0, 0.0) * ic
        return ((t0l + t) * dv).sum(1), (dt * dv * dv).sum(1)

    ones = np.ones(vl.shape[0])
    g, _ = slope(ones)
    # accept the full step unless it overshoots the minimum by more than it started below it
    need = g > -g_start
    if not need.any():
        return ones
    idx = np.nonzero(need)[0]
    vl, dv, ic = vl[idx], dv[idx], ic[idx]
    lo, hi = np.zeros(len(idx)), np.ones(len(idx))
    lam = np.full(len(idx), 0.5)
    for _ in range(steps):
        g, h = slope(lam)
        pos = g > 0
        hi = np.where(pos, lam, hi)
        lo = np.where(pos, lo, lam)
        newton = lam - np.divide(g, h, out=np.full_like(g, np.nan), where=h > 0)
        inside = (newton > lo) & (newton < hi)
        lam = np.where(inside, newton, 0.5 * (lo + hi))
    ones[idx] = lam
    return ones


def _sweep(costs: LinkCosts, paths: PathSet, h: np.ndarray, v: np.ndarray, repeat: int = 1) -> None:
    """One Gauss–Seidel sweep of projected Newton steps over the OD pairs, in place on h (C, P), v (C, E).

    Each OD pair gets ``repeat`` steps before the sweep moves on.
    """
    rows = np.arange(h.shape[0])
    inv_cap = 1.0 / costs.capacity  # (C, E)
    t0b = costs.t0 * costs.b  # (E,)
    quartic = bool(np.all(costs.power == 4.0))
    for w in range(paths.num_od):
        if len(paths.paths_of(w)) < 2:
            continue
        pids, lw, a = paths.block(w)
        at = a.T
        vl = v[:, lw]  # (C, L)
        hp = h[:, pids]  # (C, P_w)
        ic = inv_cap[:, lw]
        t0l, t0bl = costs.t0[lw], t0b[lw]
        for _ in range(repeat):
            r = np.maximum(vl, 0.0) * ic  # v / c
            if quartic:
                r3 = r * r * r
                tl = t0l + t0bl * (r3 * r)  # t(v)
                dl = (4.0 * t0bl) * r3 * ic  # t′(v)
            else:
                p = costs.power[lw]
                tl = t0l + t0bl * r**p
                dl = t0bl * p * r ** np.maximum(p - 1.0, 0.0) * ic
            cp = tl @ at  # (C, P_w) path costs
            j = cp.argmin(axis=1)  # (C,) cheapest path in the set
            daj = dl * a[j]  # (C, L)
            s = dl @ at + daj.sum(1, keepdims=True) - 2.0 * (daj @ at)  # Σ t′ over p ⊕ p̂
            delta = cp - cp[rows, j][:, None]  # (C, P_w) ≥ 0
            step = np.divide(delta, s, out=np.full_like(delta, np.inf), where=s > 1e-300)
            dh = -np.minimum(hp, step)  # (C, P_w) ≤ 0; 0 on p̂ (delta = 0)
            dh[rows, j] = 0.0
            dh[rows, j] = -dh.sum(1)
            dv = dh @ a  # (C, L)
            g_start = (tl * dv).sum(1)  # φ′(0) ≤ 0
            lam = _line_search(vl, dv, ic, t0l, t0bl, costs.power[lw], quartic, g_start)  # (C,)
            hp += lam[:, None] * dh
            vl += lam[:, None] * dv
        h[:, pids] = hp
        v[:, lw] = vl


def _newton_polish(costs: LinkCosts, paths: PathSet, h: np.ndarray, iters: int) -> None:
    """``iters`` projected Newton steps on the used paths of one context, in place on h (P,).

    Restricted to the path set, the equilibrium minimises Beckmann's potential φ over the path
    flows of each OD pair w (a simplex scaled by q_w). With the path of w carrying the most flow as
    basic path b(w), the used non-basic paths F = {p : h_p > 0} move by the Newton step of φ in
    the reduced variables: (Z diag(t′) Zᵀ) x = −(c_F − c_b(F)), Z = Δ_F − Δ_b(F) (rows: the links
    of p minus those of its basic path), solved exactly (sparse); the basic paths take up the
    difference. Unused paths stay at 0 (the Gauss–Seidel sweeps move flow onto them: on links
    without flow t′ = 0, so a Newton model overestimates how much flow they take). The step is
    projected (h ≥ 0) and shortened by Armijo backtracking on φ. Where the per-pair Gauss–Seidel
    steps crawl because many OD pairs share steep links (contextual Anaheim), this step couples
    them. Stops early when no step decreases φ.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    delta = paths.matrix()  # (P, E)
    od = np.asarray(paths.od)
    num_p = len(h)
    idx = np.arange(num_p)
    for _ in range(iters):
        v = delta.T @ h  # (E,)
        t = costs.time(v[None])[0]
        dt = costs.derivative(v[None])[0]
        pc = delta @ t  # (P,) path costs
        order = np.lexsort((-h, od))  # by OD pair, the largest flow first
        first = np.ones(num_p, dtype=bool)
        first[1:] = od[order][1:] != od[order][:-1]
        basic_of = np.zeros(paths.num_od, dtype=np.int64)
        basic_of[od[order][first]] = order[first]
        b = basic_of[od]
        free = np.nonzero((b != idx) & (h > 0))[0]
        if len(free) == 0:
            return
        g = pc[free] - pc[b[free]]
        z = (delta[free] - delta[b[free]]).tocsr()  # (F, E)
        hess = (z @ sp.diags(dt) @ z.T).tocsc()
        diag = hess.diagonal()
        hess = (hess + sp.diags(1e-10 * diag + 1e-12 * (float(diag.max()) + 1.0))).tocsc()
        x = spsolve(hess, -g)
        if not np.all(np.isfinite(x)):
            return
        phi0 = float(costs.beckmann(v[None])[0])
        lam = 1.0
        for _ in range(30):
            hn = h.copy()
            hn[free] = np.maximum(0.0, h[free] + lam * x)
            moved = np.bincount(od[free], weights=hn[free] - h[free], minlength=paths.num_od)
            basic = basic_of[np.unique(od[free])]
            hn[basic] = h[basic] - moved[od[basic]]
            if np.all(hn[basic] >= 0.0):
                vn = delta.T @ hn
                if float(costs.beckmann(vn[None])[0]) <= phi0 + 1e-4 * float(t @ (vn - v)):
                    break
            lam *= 0.5
        else:
            return
        h[:] = hn  # every entry ≥ 0: the free ones by the projection, the basic ones checked


def solve_equilibrium(
    network: Network,
    costs: LinkCosts | None = None,
    *,
    gap: float = 1e-8,
    max_iter: int = 200,
    sweeps: int = 4,
    repeat: int = 1,
    newton: int = 0,
    paths: PathSet | None = None,
    init_path_flow: np.ndarray | None = None,
    throw: bool = False,
) -> AssignmentResult:
    """User equilibria of ``network`` under C cost functions (one per context), solved together.

    Args:
        costs: :class:`LinkCosts` with C rows of capacities; default: the file's costs (C = 1).
        gap: target relative gap per context (the certificate).
        max_iter: most column-generation rounds (round 1 measures the initial flows).
        sweeps: Gauss–Seidel sweeps of the restricted problem between two rounds.
        repeat: projected Newton steps per OD pair within a sweep.
        newton: after the sweeps of each round, this many projected Newton steps over all used
            paths of each context at once (:func:`_newton_polish`; 0: none). Steep, strongly
            coupled costs (contextual Anaheim) need them to reach tight gaps.
        paths: a :class:`PathSet` to start from and extend (shared between calls: warm start).
        init_path_flow: (C, P) or (P,) feasible path flows on ``paths`` to start from; default:
            all-or-nothing on the free-flow shortest paths.
        throw: raise RuntimeError (instead of a warning) if a context misses the target gap.

    Returns:
        an :class:`AssignmentResult`; ``gap`` is measured with Dijkstra over the whole network.
    """
    start = time.perf_counter()
    costs = network.costs() if costs is None else costs
    num_c = costs.num_contexts
    paths = PathSet(network) if paths is None else paths
    q = network.od_pairs[2]
    if init_path_flow is None or len(paths) == 0:
        # all-or-nothing on the free-flow shortest paths (t₀ does not depend on the context)
        h0 = free_flow_path_flow(network, paths, costs.time(np.zeros((1, network.num_links)))[0])
        h = np.broadcast_to(h0, (num_c, len(paths))).copy()
    else:
        h0 = np.asarray(init_path_flow, dtype=np.float64)
        h = np.broadcast_to(h0, (num_c, h0.shape[-1])).copy()
        if h.shape[1] != len(paths):
            raise ValueError(f"init_path_flow has {h.shape[1]} paths, the path set {len(paths)}")
    delta = paths.matrix()
    v = (delta.T @ h.T).T  # (C, E)
    gaps = np.full(num_c, np.inf)
    iters = np.zeros(num_c, dtype=np.int64)
    nsweeps = np.zeros(num_c, dtype=np.int64)
    active = np.arange(num_c)
    history: list[float] = []
    for it in range(max_iter):
        sub = costs.subset(active)
        t = sub.time(v[active])
        kappa, added = _dijkstra_round(network, paths, t, add=True)
        iters[active] += 1
        tv = (t * v[active]).sum(-1)
        gaps[active] = (tv - kappa @ q) / tv
        history.append(float(gaps[active].max()))
        done = gaps[active] <= gap
        active = active[~done]
        if len(active) == 0 or it == max_iter - 1:
            break  # the returned flows are the ones whose gap was just measured
        if added:
            h = np.concatenate([h, np.zeros((num_c, len(paths) - h.shape[1]))], axis=1)
        ha = h[active]
        va = (paths.matrix().T @ ha.T).T  # recompute v from h (no drift)
        for _ in range(sweeps):
            _sweep(sub.subset(~done), paths, ha, va, repeat)
        if newton:
            left = sub.subset(~done)
            for i in range(len(active)):
                _newton_polish(left.subset([i]), paths, ha[i], newton)
            va = (paths.matrix().T @ ha.T).T
        nsweeps[active] += sweeps
        h[active] = ha
        v[active] = va
    if h.shape[1] < len(paths):
        h = np.concatenate([h, np.zeros((num_c, len(paths) - h.shape[1]))], axis=1)
    converged = gaps <= gap
    if not converged.all():
        msg = (
            f"traffic assignment: {int((~converged).sum())} of {num_c} contexts above the target gap {gap:g} "
            f"after {max_iter} rounds (largest gap {gaps.max():.3e}); raise max_iter or loosen gap"
        )
        if throw:
            raise RuntimeError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return AssignmentResult(
        link_flow=v,
        gap=gaps,
        converged=converged,
        iterations=iters,
        sweeps=nsweeps,
        path_flow=h,
        paths=paths,
        seconds=time.perf_counter() - start,
        history=history,
    )
