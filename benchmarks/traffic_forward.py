"""Traffic: how well the shipped Sioux Falls N-FPN's forward solve converges, and what it costs (issue 10).

The bundled `traffic-siouxfalls` config solves the averaged N-FPN's Davis–Yin fixed point with
Picard to ‖T(z) − z‖₂ ≤ 1e-4 within 500 iterations; its committed run
(`docs/runs/traffic-siouxfalls-std-averaged-wide`) reports that only a quarter of the test contexts
meet the tolerance. This script loads a trained traffic run (its best checkpoint), computes a
reference fixed point per context (Picard to ``--ref-tol`` within ``--ref-iter`` iterations; it must
converge), and for each forward solver (``config``: the run's own ``[solver]``; the others
Picard or Anderson with ``--tol``) reports, on the chosen split:

- the share of contexts that meet the tolerance, and the iterations (mean, max);
- the distance of the predicted link flows X̂ from the reference's, ‖X̂ − X̂_ref‖ / ‖X̂_ref‖ per
  context (median, max): what the missed tolerance changes in the output;
- the model's error against the true equilibria, ‖X̂ − X*‖_F / ‖X*‖_F (the whole split), beside
  the reference's: whether the forward's inaccuracy matters next to the model's own error;
- the median wall time of one forward pass over the split (``--repeats`` runs, solvers alternated).

    python benchmarks/traffic_forward.py --run docs/runs/traffic-siouxfalls-std-averaged-wide \\
        --data-dir ../shared/data --out benchmarks/results/traffic_forward.json
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, environment, markdown_table, median, script_parser, write_json

SOLVERS = {
    "config": ("config", {}),  # the run's own solver (its config's [solver])
    "picard-500": ("picard", {"max_iter": 500}),  # the shipped Sioux Falls config's
    "picard-1000": ("picard", {"max_iter": 1000}),
    "picard-2000": ("picard", {"max_iter": 2000}),
    "anderson5-500": ("anderson", {"m": 5, "max_iter": 500}),
    "anderson10-500": ("anderson", {"m": 10, "max_iter": 500}),
    "anderson20-500": ("anderson", {"m": 20, "max_iter": 500}),
    "anderson5-2000": ("anderson", {"m": 5, "max_iter": 2000}),  # the larger networks' cap
    "anderson10-2000": ("anderson", {"m": 10, "max_iter": 2000}),
}


def _make(name: str, tol: float, model):
    import fpnets

    kind, options = SOLVERS[name]
    if kind == "config":
        return model.solver
    cls = fpnets.Picard if kind == "picard" else fpnets.Anderson
    return cls(tol=tol, **options)


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--run", required=True, type=Path, help="a traffic run folder of an N-FPN")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--solvers", default=",".join(SOLVERS), help=f"comma-separated: {', '.join(SOLVERS)}")
    parser.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="the named solvers' tolerance on ‖T(z) − z‖₂ (config: its own)",
    )
    parser.add_argument("--ref-tol", type=float, default=1e-6)
    parser.add_argument("--ref-iter", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.solvers.split(",") if n.strip()]
    bad = sorted(set(names) - set(SOLVERS))
    if bad or not names:
        raise SystemExit(f"--solvers: unknown or none {bad}; valid: {', '.join(SOLVERS)}")
    torch.set_num_threads(args.threads)
    import fpnets
    from fpnets.train import load_model

    env = environment()
    saved = load_model(args.run, data_dir=args.data_dir, device="cpu")
    model = saved.model.eval()
    if not hasattr(model, "operator") or getattr(model, "variant", "") == "bpr":
        raise SystemExit(f"--run {args.run}: not a Davis–Yin traffic N-FPN (explicit or bpr model)")
    part = getattr(saved.splits, args.split)
    d, target = part.inputs[0], part.target  # (N, m), (N, E) equilibrium flows

    def forward(solver) -> tuple[torch.Tensor, fpnets.Solution, float]:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", fpnets.ConvergenceWarning)
            start = time.perf_counter()
            cd = model.game.context_features(model.normalize(d))
            z0 = model.initial_latent(d.shape[0], cd.dtype, cd.device)
            sol = fpnets.fixed_point(model.operator, z0, cd, solver=solver, backward=fpnets.JFB())
            out = model.readout(sol.value)
            return out, sol, time.perf_counter() - start

    ref, ref_sol, ref_sec = forward(fpnets.Picard(tol=args.ref_tol, max_iter=args.ref_iter))
    if not bool(ref_sol.converged.all()):
        raise SystemExit(
            f"the reference solve left {int((~ref_sol.converged).sum())} contexts above {args.ref_tol:g} after "
            f"{args.ref_iter} iterations; raise --ref-iter or --ref-tol"
        )

    def whole(pred: torch.Tensor) -> float:
        return float((pred.double() - target.double()).norm() / target.double().norm())

    rows: dict[str, dict] = {}
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.repeats):
        for name in names:
            out, sol, sec = forward(_make(name, args.tol, model))
            times[name].append(sec)
            if rep == 0:
                dist = (out - ref).norm(dim=1) / ref.norm(dim=1)
                it = sol.iterations.double()
                rows[name] = {
                    "converged": float(sol.converged.double().mean()),
                    "iterations_mean": float(it.mean()),
                    "iterations_max": int(it.max()),
                    "distance_to_reference_median": float(dist.median()),
                    "distance_to_reference_max": float(dist.max()),
                    "rel_error_whole": whole(out),
                }
    for name in names:
        rows[name]["seconds"] = times[name]
        rows[name]["seconds_median"] = median(times[name])
    result = {
        "run": str(args.run),
        "split": args.split,
        "contexts": int(d.shape[0]),
        "tol": args.tol,
        "reference": {
            "tol": args.ref_tol,
            "iterations_mean": float(ref_sol.iterations.double().mean()),
            "iterations_max": int(ref_sol.iterations.max()),
            "rel_error_whole": whole(ref),
            "seconds": ref_sec,
        },
        "solvers": rows,
    }
    base = rows[names[0]]["seconds_median"]
    table = markdown_table(
        ["solver", "converged", "iterations mean / max", "‖X̂ − X̂_ref‖/‖X̂_ref‖ median / max",
         "rel. error vs X* (whole split)", "s per forward (median)", f"time / {names[0]}"],
        [
            [n, f"{r['converged']:.0%}", f"{r['iterations_mean']:.0f} / {r['iterations_max']}",
             f"{r['distance_to_reference_median']:.1e} / {r['distance_to_reference_max']:.1e}",
             f"{r['rel_error_whole']:.4e}", f"{r['seconds_median']:.2f}", f"{r['seconds_median'] / base:.2f}"]
            for n, r in rows.items()
        ],
    )  # fmt: skip
    print(table)
    ref_row = result["reference"]
    print(
        f"reference (Picard to {args.ref_tol:g}): {ref_row['iterations_mean']:.0f} / {ref_row['iterations_max']} "
        f"iterations, rel. error vs X* {ref_row['rel_error_whole']:.4e}"
    )
    write_json(args.out, {"command": command_line(), "environment": env, "result": result, "table": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
