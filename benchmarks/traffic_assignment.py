"""User-equilibrium solver against the best-known flows (Sioux Falls, Anaheim), and data-set speed.

For each network: relative gap reached, relative error ‖v − v_best‖ / ‖v_best‖ against the
``*_flow.tntp`` best-known flows, column-generation rounds, Gauss–Seidel sweeps, paths, seconds.
With --contexts N it also times N contextual equilibria (the data-set workload) per network.

    python benchmarks/traffic_assignment.py --data-dir ../shared/data/transportation-networks \
        --networks SiouxFalls --contexts 100 --out benchmarks/results/traffic_assignment_siouxfalls.json
    python benchmarks/traffic_assignment.py --data-dir ../shared/data/transportation-networks \
        --networks Anaheim --contexts 10 --context-gap 1e-6 --context-rounds 100 \
        --out benchmarks/results/traffic_assignment_anaheim.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fpnets.tasks.traffic import ContextModel, LinkCosts, Network, PathSet, solve_equilibrium
from fpnets.tasks.traffic.data import default_cap_range

from common import environment


def contextual_costs(net: Network, contexts: int) -> tuple[float, LinkCosts]:
    """(r, costs): the link costs of ``contexts`` contexts (drawn from seed 1) under the paper's
    context model on ``net`` (W from seed 0, r in clamp(W d, ±r): 0.8 on Anaheim, else 0.3)."""
    cap_range = default_cap_range(net)
    model = ContextModel.random(net, seed=0, cap_range=cap_range)
    return cap_range, model.costs(net, model.sample(contexts, seed=1))


def run_network(
    directory: Path,
    gaps: list[float],
    contexts: int,
    context_gap: float,
    context_rounds: int,
    sweeps: int,
    ladder: list[float] | None = None,
    ladder_contexts: int = 2,
    newton: int = 0,
    agree: int = 0,
    agree_gap: float = 1e-11,
) -> dict:
    net = Network.from_tntp(directory)
    best = net.best_known_flow(directory)
    out: dict = {
        "network": net.name,
        "nodes": net.num_nodes,
        "links": net.num_links,
        "od_pairs": len(net.od_pairs[2]),
    }
    rows = []
    for g in gaps:
        start, cpu = time.perf_counter(), time.process_time()
        res = solve_equilibrium(net, gap=g, max_iter=2000, sweeps=sweeps, newton=newton, throw=True)
        row = {
            "target_gap": g,
            "gap": float(res.gap[0]),
            "rounds": int(res.iterations[0]),
            "sweeps": int(res.sweeps[0]),
            "paths": len(res.paths),
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu,
        }
        if best is not None:
            row["relative_error_vs_best_known"] = float(
                np.linalg.norm(res.link_flow[0] - best) / np.linalg.norm(best)
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    out["standard_costs"] = rows
    if contexts:
        costs = contextual_costs(net, contexts)[1]
        start, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # non-converged contexts are reported below
            res = solve_equilibrium(
                net,
                costs,
                gap=context_gap,
                max_iter=context_rounds,
                sweeps=sweeps,
                newton=newton,
            )
        sec, cpu = time.perf_counter() - start, time.process_time() - cpu
        out["contextual"] = {
            "contexts": contexts,
            "target_gap": context_gap,
            "max_gap": float(res.gap.max()),
            "converged": int(res.converged.sum()),
            "seconds": sec,
            "seconds_per_context": sec / contexts,
            "cpu_seconds": cpu,
            "cpu_seconds_per_context": cpu / contexts,
            "rounds_max": int(res.iterations.max()),
            "sweeps_max": int(res.sweeps.max()),
            "paths": len(res.paths),
        }
        print(json.dumps(out["contextual"]), flush=True)
    if ladder:
        out["ladder"] = gap_ladder(net, ladder, ladder_contexts, context_rounds, sweeps, newton)
    if agree:
        out["agreement"] = agreement(net, agree, agree_gap, context_rounds, sweeps, newton)
    return out


def agreement(net: Network, contexts: int, gap: float, rounds: int, sweeps: int, newton: int) -> dict:
    """Do two solver settings reach the same equilibrium? The same contexts solved to ``gap`` with the
    default 4 Gauss–Seidel sweeps alone and with ``sweeps`` + ``newton``: relative difference of the
    link flows (unique at an equilibrium), per context."""
    costs = contextual_costs(net, contexts)[1]
    runs = {}
    for label, kw in (("sweeps", {"sweeps": 4, "newton": 0}), ("this", {"sweeps": sweeps, "newton": newton})):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a missed gap is reported below
            res = solve_equilibrium(net, costs, gap=gap, max_iter=rounds, **kw)
        runs[label] = {
            "max_gap": float(res.gap.max()),
            "converged": int(res.converged.sum()),
            "seconds": time.perf_counter() - start,
            "link_flow": res.link_flow,
        }
    a, b = runs["sweeps"].pop("link_flow"), runs["this"].pop("link_flow")
    diff = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
    out = {
        "contexts": contexts,
        "target_gap": gap,
        "sweeps_alone": runs["sweeps"],
        "this_setting": runs["this"],
        "flow_difference_max": float(diff.max()),
        "flow_difference_median": float(np.median(diff)),
    }
    print(json.dumps(out), flush=True)
    return out


def gap_ladder(
    net: Network, gaps: list[float], contexts: int, rounds: int, sweeps: int, newton: int = 0
) -> dict:
    """How accurate the link flows are at each relative gap, for contextual costs: the contexts are
    solved to each gap of ``gaps`` in turn (each solve warm-started from the last, on one path set),
    and the flows of every stage are compared with those of the last (tightest) stage."""
    cap_range, costs = contextual_costs(net, contexts)
    paths, h, stages = PathSet(net), None, []
    start = time.perf_counter()
    for g in gaps:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a missed gap is reported below
            res = solve_equilibrium(
                net,
                costs,
                gap=g,
                max_iter=rounds,
                sweeps=sweeps,
                newton=newton,
                paths=paths,
                init_path_flow=h,
            )
        h = res.path_flow
        stages.append(
            {
                "target_gap": g,
                "gap": res.gap.tolist(),
                "converged": int(res.converged.sum()),
                "rounds": res.iterations.tolist(),
                "seconds_cumulative": time.perf_counter() - start,
                "link_flow": res.link_flow,
            }
        )
        print(json.dumps({k: v for k, v in stages[-1].items() if k != "link_flow"}), flush=True)
    last = stages[-1]["link_flow"]
    for stage in stages:
        v = stage.pop("link_flow")
        stage["flow_error_vs_last"] = (
            np.linalg.norm(v - last, axis=1) / np.linalg.norm(last, axis=1)
        ).tolist()
    return {"contexts": contexts, "cap_range": cap_range, "stages": stages, "paths": len(paths)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True, help="the transportation-networks directory")
    p.add_argument("--out", type=Path, required=True, help="JSON output file")
    p.add_argument("--networks", default="SiouxFalls,Anaheim", help="comma-separated subdirectories")
    p.add_argument("--gaps", default="1e-6,1e-8,1e-10", help="target relative gaps (standard costs)")
    p.add_argument("--contexts", type=int, default=0, help="also solve this many contextual equilibria")
    p.add_argument("--context-gap", type=float, default=1e-8)
    p.add_argument(
        "--context-rounds", type=int, default=300, help="column-generation rounds per context at most"
    )
    p.add_argument("--sweeps", type=int, default=4, help="Gauss-Seidel sweeps per round")
    p.add_argument(
        "--newton", type=int, default=0, help="projected Newton steps over all used paths per round"
    )
    p.add_argument(
        "--ladder",
        default="",
        help="contextual flow accuracy per gap: comma-separated gaps, loosest first; the flows at each are "
        "compared with those at the last (e.g. 1e-5,1e-6,1e-7,1e-8,1e-9)",
    )
    p.add_argument("--ladder-contexts", type=int, default=2, help="contexts of the --ladder measurement")
    p.add_argument(
        "--agree",
        type=int,
        default=0,
        help="solve this many contexts to --agree-gap with 4 sweeps alone and with --sweeps/--newton, and "
        "compare their link flows",
    )
    p.add_argument("--agree-gap", type=float, default=1e-11)
    args = p.parse_args(argv)
    gaps = [float(g) for g in args.gaps.split(",") if g]
    ladder = [float(g) for g in args.ladder.split(",") if g]
    if ladder and sorted(ladder, reverse=True) != ladder:
        raise SystemExit(f"--ladder: gaps must go from loosest to tightest, got {args.ladder}")
    results = {
        "environment": environment(),
        "solver": {"sweeps": args.sweeps, "newton": args.newton},
        "networks": [],
    }
    for name in [n for n in args.networks.split(",") if n]:
        results["networks"].append(
            run_network(
                args.data_dir / name,
                gaps,
                args.contexts,
                args.context_gap,
                args.context_rounds,
                args.sweeps,
                ladder,
                args.ladder_contexts,
                args.newton,
                args.agree,
                args.agree_gap,
            )
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
