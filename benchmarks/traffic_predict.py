"""Traffic: predicting equilibria with trained models against solving them (issue 10, item 3).

For each run folder, load the best checkpoint and time the prediction of the test contexts in one
batch (median of ``--repeats`` after a warm-up; each repeat times a fresh copy of the model, made
outside the timing, so the bpr N-FPN gets no warm start from an earlier call), with its forward
iterations and accuracy.
Against that, time the equilibrium solver (``solve_equilibrium``, the generator of the data) on the
same contexts, all together and one alone, at several target gaps, with the accuracy each reaches.
Also reports each run's median training time per epoch (metrics.csv). CPU seconds and wall seconds.

    python benchmarks/traffic_predict.py --runs docs/runs/traffic-siouxfalls-bpr ... \
        --data-dir ../shared/data --out benchmarks/results/traffic_predict.json
"""

from __future__ import annotations

import copy
import csv
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, environment, markdown_table, script_parser, write_json


def timed(fn, repeats: int, setup=lambda: None) -> tuple[float, float, object]:
    """(median wall s, median CPU s, last result) of ``fn(setup())`` over ``repeats`` calls after one
    warm-up; ``setup`` runs outside the timed part."""
    out = fn(setup())
    walls, cpus = [], []
    for _ in range(repeats):
        arg = setup()
        w, c = time.perf_counter(), time.process_time()
        out = fn(arg)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), out


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="traffic run folders")
    parser.add_argument("--data-dir", required=True, help="holds transportation-networks/ (or the network)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gaps", default="1e-2,1e-4,1e-6,1e-8", help="solver target gaps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from fpnets.tasks.traffic import solve_equilibrium
    from fpnets.train import load_model

    rows, results, data = [], [], None
    for run in args.runs:
        saved = load_model(run, data_dir=args.data_dir, device="cpu", dtype="float32")
        config, pristine = saved.config, saved.model.eval()
        data = saved.task.dataset(args.data_dir)
        d, x = saved.splits.test.inputs[0], saved.splits.test.target.double()

        def predict(model, d=d):
            with torch.no_grad():
                return model(d).double(), model

        # a fresh copy per call (untimed): no warm start carried between repeats
        wall, cpu, (pred, model) = timed(predict, args.repeats, lambda p=pristine: copy.deepcopy(p))
        sol = getattr(model, "solution", None)
        iters = float(sol.iterations.double().mean()) if sol is not None else None
        err = float(torch.linalg.norm(pred - x) / torch.linalg.norm(x))
        with open(run / "metrics.csv") as fh:
            epoch_s = statistics.median(float(r["epoch_s"]) for r in csv.DictReader(fh))
        n = len(d)
        results.append(
            {
                "run": str(run),
                "variant": config.model.variant,
                "contexts": n,
                "wall_s_per_context": wall / n,
                "cpu_s_per_context": cpu / n,
                "iterations_mean": iters,
                "relative_error": err,
                "median_epoch_s": epoch_s,
            }
        )
        rows.append(
            [config.model.variant, f"{wall / n:.3g}", f"{cpu / n:.3g}", iters, f"{err:.3g}", f"{epoch_s:.1f}"]
        )
    if data is None:
        parser.error("give at least one --runs folder (its config names the network and the data)")
    ctx = data.test.context.double().numpy()
    flow = data.test.flow.double().numpy()
    solves = []
    for gap in (float(g) for g in args.gaps.split(",")):
        for n in (len(ctx), 1):
            costs = data.model.costs(data.network, ctx[:n])
            wall, cpu, res = timed(
                lambda _, costs=costs, gap=gap: solve_equilibrium(data.network, costs, gap=gap), 1
            )
            err = float(np.linalg.norm(res.link_flow - flow[:n]) / np.linalg.norm(flow[:n]))
            solves.append(
                {
                    "gap": gap,
                    "contexts": n,
                    "wall_s_per_context": wall / n,
                    "cpu_s_per_context": cpu / n,
                    "relative_error": err,
                }
            )
            rows.append(
                [
                    f"solver, gap {gap:g}, {n} together",
                    f"{wall / n:.3g}",
                    f"{cpu / n:.3g}",
                    None,
                    f"{err:.2g}",
                    None,
                ]
            )
    print(
        markdown_table(
            ["method", "wall s / context", "CPU s / context", "iterations", "rel. error", "epoch s"], rows
        )
    )
    payload = {
        "command": command_line(),
        "environment": environment("cpu"),
        "models": results,
        "solver": solves,
    }
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
