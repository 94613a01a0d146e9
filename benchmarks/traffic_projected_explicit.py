"""Traffic: does projecting an explicit model's flows onto the feasible set help? (issue 10)

The anchored averaged N-FPN with A = 0 has the fixed point P(r(d)), the projection of its regression
r(d) onto the feasible link flows {Σ_k x_k : x_k ≥ 0, N x_k = b_k}. This script takes a trained
explicit run (its best checkpoint), uses its prediction as r(d) in that N-FPN (F(X) = X − r(d)/s,
Davis–Yin with α = 0.08 < 2/K, Picard to ‖T(z) − z‖ ≤ 1e-6) and reports on the validation and test
splits the whole-set relative error before and after the projection, and the conservation error of
both. Since X* is feasible, the projection can only bring a prediction closer to it; by how much
says whether the model's errors lie across the feasible set or along it.

    python benchmarks/traffic_projected_explicit.py --run docs/runs/traffic-siouxfalls-std-explicit \\
        --data-dir ../shared/data --out benchmarks/results/traffic_projected_explicit.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, environment, script_parser, write_json


class _Regression(nn.Module):
    """F(X; r) = X − r/s: the game gradient whose equilibrium is the projection of r (vehicles)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.target: torch.Tensor | None = None

    def context_features(self, d: torch.Tensor) -> torch.Tensor:  # (B, m) -> (B, E)
        assert self.target is not None
        return self.target / self.scale

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:  # (B, E), (B, E) -> (B, E)
        return x - r


def _rel(pred: torch.Tensor, target: torch.Tensor) -> float:
    """‖X̂ − X*‖_F / ‖X*‖_F over the whole split."""
    return float((pred - target).norm() / target.norm())


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--run", required=True, type=Path, help="a traffic run folder of an explicit model")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--max-iter", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import fpnets
    from fpnets.tasks.traffic import TrafficNFPN
    from fpnets.tasks.traffic.metrics import conservation_error
    from fpnets.train import config_from_dict, load_checkpoint

    cfg = config_from_dict(tomllib.loads((args.run / "config.toml").read_text()))
    task = cfg.make_task()
    task.load_splits(args.data_dir)
    model = task.build_model()
    model.load_state_dict(load_checkpoint(args.run, "best").model)
    model = model.double().eval()
    data = task.dataset(args.data_dir)
    s = data.flow_scale()
    result = {"run": str(args.run)}
    for split in ("val", "test"):
        part = getattr(data, split)
        d, x = part.context.double(), part.flow.double()
        with torch.no_grad():
            r = model(d)  # (N, E)
        nfpn = TrafficNFPN(
            data.network, s, variant="averaged", hidden=1, alpha=0.08, mu=1.0, bound=1e-3,
            solver=fpnets.Picard(tol=1e-6, max_iter=args.max_iter),
        ).double()  # fmt: skip
        game = _Regression(s)
        game.target = r
        nfpn.game = game
        with torch.no_grad():
            p = nfpn(d)
        result[split] = {
            "rel_error": _rel(r, x),
            "projected_rel_error": _rel(p, x),
            "conservation": float(conservation_error(r, data.network).mean()),
            "projected_conservation": float(conservation_error(p, data.network).mean()),
            "converged": float(nfpn.solution.converged.double().mean()),
        }
    print(result)
    write_json(args.out, {"command": command_line(), "environment": environment(), "result": result})


if __name__ == "__main__":
    main()
