"""Traffic: how much of a context's capacities its equilibrium link flows determine (issue 10).

A model that knows the paper's cost form t(v; d) = t₀ ⊙ (1 + B (v / c(d))^p) could try to recover
the capacities c(d) of each training context from its equilibrium flows X* alone (inverse
optimisation), and then fit the context model c(d) = c₀ ⊙ (1 + clamp(W d, ±r)) to them. This script
measures how far one context pins its capacities down. The link costs τ that make X* a Wardrop
equilibrium are those with a zero gap,

    gap(τ) = Σ_e X*_e τ_e − Σ_{od} q_od · SP_od(τ) = 0,

and gap(τ) is convex in τ (a linear term minus a minimum of linear terms), so the set of
consistent costs within the box that the capacity range allows (c ∈ c₀ ⊙ [1 − r, 1 + r], i.e.
τ_e between its values at the two ends) is a polytope: {τ in the box, potentials π with
π_{o,j} − π_{o,i} ≤ τ_e on every link, Σ_e X*_e τ_e − Σ q_od (π_{o,d} − π_{o,o}) ≤ ε}. For each
link this script solves two linear programs (HiGHS, scipy) for the smallest and largest τ_e in it,
converts them to capacity ratios c_e / c₀_e − 1 ∈ [−r, r], and reports the width of that range.
Links without flow are skipped (their cost t₀ does not depend on the capacity). ε is
``--eps-rel`` times Σ_e X*_e τ_e at c = c₀, above the certified gap of the targets (1e-8).

A check that can fail: the true capacity ratio of every link must lie in its range (``outside``).

    python benchmarks/traffic_identifiability.py --data-dir ../shared/data --contexts 10 \
        --out benchmarks/results/traffic_identifiability.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix, vstack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, environment, script_parser, write_json


def capacity_ranges(
    network: Any, flow: np.ndarray, cap_range: float, b: float, power: float, eps_rel: float = 1e-7
) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) capacity ratio c_e / c₀_e − 1 of each link (E,) over all costs within the
    capacity box under which ``flow`` (E,) is a Wardrop equilibrium to within ε; NaN for links
    without flow (not identifiable, and irrelevant to this equilibrium)."""
    tail, head = network.tail, network.head
    e_count, n, z = network.num_links, network.num_nodes, network.num_zones
    t0, c0 = network.free_flow_time, network.capacity
    q = network.demand.copy()
    np.fill_diagonal(q, 0.0)

    def tau(ratio: np.ndarray) -> np.ndarray:
        return t0 * (1.0 + b * (flow / (c0 * (1.0 + ratio))) ** power)

    def ratio_of(t: float, e: int) -> float:  # τ_e -> c_e / c₀_e − 1 (the inverse of tau on link e)
        return float(flow[e] / (((t / t0[e] - 1.0) / b) ** (1.0 / power)) / c0[e] - 1.0)

    lo, hi = tau(np.full(e_count, cap_range)), tau(np.full(e_count, -cap_range))
    # variables [τ (E), π (Z × n)]; potentials of origin o in block o
    rows, cols, vals = [], [], []
    r = 0
    for o in range(z):
        for e in range(e_count):
            if tail[e] < network.first_thru_node and tail[e] != o:
                continue  # no path passes through another zone below the first thru node
            rows += [r, r, r]
            cols += [e_count + o * n + head[e], e_count + o * n + tail[e], e]
            vals += [1.0, -1.0, -1.0]
            r += 1
    gap_row = np.zeros(e_count + z * n)
    gap_row[:e_count] = flow
    for o in range(z):
        for dest in range(z):
            if q[o, dest] > 0:
                gap_row[e_count + o * n + dest] -= q[o, dest]
                gap_row[e_count + o * n + o] += q[o, dest]
    a_ub = coo_matrix((vals, (rows, cols)), shape=(r, e_count + z * n)).tocsr()
    a_ub = vstack([a_ub, gap_row[None, :]]).tocsr()
    eps = eps_rel * float(flow @ tau(np.zeros(e_count)))
    b_ub = np.r_[np.zeros(r), eps]
    bounds = [(lo[e], hi[e]) for e in range(e_count)] + [(None, None)] * (z * n)
    for o in range(z):
        bounds[e_count + o * n + o] = (0.0, 0.0)
    low, high = np.full(e_count, np.nan), np.full(e_count, np.nan)
    for e in range(e_count):
        if hi[e] - lo[e] <= 1e-12 * t0[e]:
            continue
        ends = []
        for sign in (1.0, -1.0):
            c = np.zeros(e_count + z * n)
            c[e] = sign
            res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
            if res.status != 0:
                raise RuntimeError(f"link {e}: the linear program failed ({res.message})")
            ends.append(res.x[e])
        # τ decreases with the capacity: the smallest τ is the largest ratio
        low[e] = max(-cap_range, ratio_of(max(ends), e))
        high[e] = min(cap_range, ratio_of(min(ends), e))
    return low, high


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--data-dir", required=True, help="holds transportation-networks/ (or the network)")
    parser.add_argument(
        "--config", default="traffic-siouxfalls", help="traffic config whose data set is used"
    )
    parser.add_argument("--contexts", type=int, default=10, help="the first N training contexts")
    parser.add_argument("--eps-rel", type=float, default=1e-7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from traffic_context_structure import traffic_data

    data = traffic_data(args.config, args.data_dir)
    model, net = data.model, data.network
    d = data.train.context.double().numpy()[: args.contexts]
    x = data.train.flow.double().numpy()[: args.contexts]
    true_ratio = model.capacity(net, d) / net.capacity - 1.0
    rows = []
    start = time.perf_counter()
    for i in range(len(d)):
        low, high = capacity_ranges(net, x[i], model.cap_range, model.b, model.power, args.eps_rel)
        ok = ~np.isnan(low)
        width = (high - low)[ok]
        truth = true_ratio[i][ok]
        outside = int(np.sum((truth < low[ok] - 1e-6) | (truth > high[ok] + 1e-6)))
        rows.append(
            {
                "links_with_flow": int(ok.sum()),
                "width_below_1e-3": int(np.sum(width < 1e-3)),
                "width_below_1e-2": int(np.sum(width < 1e-2)),
                "width_below_0.1": int(np.sum(width < 0.1)),
                "full_width": int(np.sum(width > 2 * model.cap_range - 1e-3)),
                "median_width": float(np.median(width)),
                "outside": outside,
            }
        )
        print(i, rows[-1], flush=True)
    result = {
        "command": command_line(),
        "environment": environment(),
        "config": args.config,
        "cap_range": model.cap_range,
        "eps_rel": args.eps_rel,
        "links": int(net.num_links),
        "contexts": rows,
        "seconds": time.perf_counter() - start,
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
