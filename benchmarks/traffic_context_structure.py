"""Traffic: what the paper's context model makes the learning problem (issue 10, Sioux Falls goal).

The capacities are c(d) = c₀ ⊙ (1 + clamp(W d, ±r)) with d = 10·U[0, 1]^m, W ≥ 0 except a first
column −10·U[0, 1]. W d spreads over tens of units while the clamp acts at ±r = ±0.3, so almost every
entry sits at one of the two clamp values: each link's capacity is (nearly) a binary function
s_e(d) = sign(w_eᵀ d) of the side of a hyperplane through the origin, and X*(d) is (nearly) a
function of the 76 signs. This script measures, on the cached data set of a traffic config
(training split for fits, validation split for scores; the test split is not read):

- ``saturated``: the share of entries of W d with |W d| ≥ r (capacity at a clamp value);
- ``patterns``: how many distinct sign patterns s(d) the training contexts have;
- ``linear_in_states``: the whole-set relative error ‖X̂ − X*‖_F / ‖X*‖_F of least squares
  X̂ = [s(d), 1] Θ, fitted on the training split with the **true** signs (an oracle: it shows how
  much of X* the states explain, not a model one can train);
- ``sign_capacities``: the relative error of the equilibria (gap 1e-9) under the capacities
  c₀ ⊙ (1 + r sign(W d)) on the validation split, i.e. with every link's state right but the
  unsaturated entries (|W d| < r) put at a clamp value: what even an exact classifier of the
  states misses;
- ``units``: a regression X̂ = A tanh(U (d − 5) + u) + a₀ with ``--units`` hidden units, trained by
  full-batch Adam (``--steps``) on the flows standardised per link: its validation relative error,
  and for each true hyperplane the best agreement of sign(w_eᵀ d) with the sign of one unit
  (quantiles over links) — whether a network with sharp units finds the hyperplanes;
- ``weight_noise`` (``--weight-noise``, comma-separated ε): the relative error of the equilibria
  (gap 1e-9) on the validation split under the capacities of a perturbed W' = W ⊙ (1 + ε G), G
  standard normal (seeded), i.e. with the paper's context model exactly right except for a relative
  error ε in each weight: how precisely a model must know W to reach a given flow error. Also the
  share of entries whose state (sign of W d) flips and the relative error of the capacities.

    python benchmarks/traffic_context_structure.py --data-dir ../shared/data \
        --out benchmarks/results/traffic_context_structure.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, environment, script_parser, write_json


def relative_error(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.linalg.norm(pred - target) / np.linalg.norm(target))


def fit_units(
    d: torch.Tensor, x: torch.Tensor, units: int, steps: int, seed: int, lr: float = 1e-2
) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Adam on X̂ = A tanh(U (d − 5) + u) + a₀ (flows standardised per link); returns U, u, predict."""
    g = torch.Generator().manual_seed(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    y = (x - mu) / sd
    m, e = d.shape[1], x.shape[1]
    U = (0.3 * torch.randn(units, m, generator=g, dtype=torch.float64)).requires_grad_()
    u = torch.zeros(units, dtype=torch.float64, requires_grad=True)
    A = (0.1 * torch.randn(e, units, generator=g, dtype=torch.float64)).requires_grad_()
    a0 = torch.zeros(e, dtype=torch.float64, requires_grad=True)

    def predict(c: torch.Tensor) -> torch.Tensor:  # (N, m) -> (N, E) vehicles
        return (torch.tanh((c - 5.0) @ U.T + u) @ A.T + a0) * sd + mu

    opt = torch.optim.Adam([U, u, A, a0], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((torch.tanh((d - 5.0) @ U.T + u) @ A.T + a0 - y) ** 2).mean()
        loss.backward()
        opt.step()
    return U.detach(), u.detach(), predict


def traffic_data(config: str, data_dir: str):
    """The cached (or generated) TrafficData of a bundled traffic config; exits on another task."""
    from fpnets.train import load_config

    task = load_config(config, []).make_task()
    if not hasattr(task, "dataset"):
        raise SystemExit(f"{config}: not a traffic config")
    return task.dataset(data_dir)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--data-dir", required=True, help="holds transportation-networks/ (or the network)")
    parser.add_argument(
        "--config", default="traffic-siouxfalls", help="traffic config whose data set is used"
    )
    parser.add_argument("--units", default="100", help="comma-separated hidden-unit counts ('' for none)")
    parser.add_argument(
        "--weight-noise", default="", help="comma-separated relative perturbations ε of W (see the docstring)"
    )
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = traffic_data(args.config, args.data_dir)
    weight, r = data.model.weight, data.model.cap_range
    d_tr, x_tr = data.train.context.double(), data.train.flow.double()
    d_va, x_va = data.val.context.double(), data.val.flow.double()
    wd_tr, wd_va = d_tr.numpy() @ weight.T, d_va.numpy() @ weight.T
    s_tr, s_va = np.sign(wd_tr), np.sign(wd_va)

    design_tr = np.c_[s_tr, np.ones(len(s_tr))]
    theta, *_ = np.linalg.lstsq(design_tr, x_tr.numpy(), rcond=None)
    result = {
        "config": args.config,
        "cap_range": r,
        "saturated": float(np.mean(np.abs(np.r_[wd_tr, wd_va]) >= r)),
        "patterns": {"train": len({tuple(row) for row in s_tr}), "n_train": len(s_tr)},
        "linear_in_states": {
            "train": relative_error(design_tr @ theta, x_tr.numpy()),
            "val": relative_error(np.c_[s_va, np.ones(len(s_va))] @ theta, x_va.numpy()),
        },
        "units": [],
    }
    from fpnets.tasks.traffic.assignment import solve_equilibrium
    from fpnets.tasks.traffic.network import LinkCosts

    net = data.network
    e = net.num_links

    def equilibrium_error(cap: np.ndarray) -> float:
        """Relative error on the validation split of the equilibria (gap 1e-9) under capacities cap."""
        costs = LinkCosts(net.free_flow_time, cap, np.full(e, data.model.b), np.full(e, data.model.power))
        flow = solve_equilibrium(net, costs, gap=1e-9, max_iter=500, throw=True).link_flow
        return relative_error(flow, x_va.numpy())

    for label, cap in (
        ("exact_capacities", data.capacities(data.val.context)),
        ("sign_capacities", net.capacity[None, :] * (1.0 + r * s_va)),
    ):
        result[label] = {"val": equilibrium_error(cap)}
    if args.weight_noise:
        result["weight_noise"] = []
        rng = np.random.default_rng(args.seed)
        d_np, cap_true = d_va.numpy(), data.capacities(data.val.context)
        for eps in (float(x) for x in args.weight_noise.split(",")):
            w_eps = weight * (1.0 + eps * rng.standard_normal(weight.shape))
            wd_eps = d_np @ w_eps.T
            cap = net.capacity[None, :] * (1.0 + np.clip(wd_eps, -r, r))
            result["weight_noise"].append(
                {
                    "eps": eps,
                    "val": equilibrium_error(cap),
                    "state_flips": float(np.mean(np.sign(wd_eps) != s_va)),
                    "capacity_rel_error": relative_error(cap, cap_true),
                }
            )
    for units in (int(u) for u in args.units.split(",") if u.strip()):
        start = time.perf_counter()
        U, u, predict = fit_units(d_tr, x_tr, units, args.steps, args.seed)
        est = np.sign(((d_va - 5.0) @ U.T + u).numpy())  # (N, H)
        agree = np.abs((s_va[:, :, None] * est[:, None, :]).mean(0))  # (E, H) |mean of sign products|
        best = (1.0 + agree.max(1)) / 2.0  # per true hyperplane: best unit's agreement (either sign)
        with torch.no_grad():
            val_err = relative_error(predict(d_va).numpy(), x_va.numpy())
            train_err = relative_error(predict(d_tr).numpy(), x_tr.numpy())
        result["units"].append(
            {
                "units": units,
                "steps": args.steps,
                "train_rel_error": train_err,
                "val_rel_error": val_err,
                "hyperplane_agreement_quantiles": dict(
                    zip(
                        ("min", "p10", "p25", "median", "p75", "max"),
                        np.quantile(best, [0, 0.1, 0.25, 0.5, 0.75, 1]).tolist(),
                        strict=True,
                    )
                ),
                "seconds": time.perf_counter() - start,
            }
        )
    print(result)
    write_json(args.out, {"command": command_line(), "environment": environment(), "result": result})


if __name__ == "__main__":
    main()
