"""Traffic: the cost of one Davis–Yin evaluation T(z; d) of the traffic N-FPN, fused against composed.

T(z; d) = z − x + P_C2(2x − z − α F(x; d)), x = P_C1(z), on the latent z (B, K, E) of K commodity
flows per link, is the whole cost of the N-FPN's forward solve (hundreds of evaluations per
context) and of its JFB backward (one application with a graph). ``TrafficNFPN.operator`` evaluates
it as x − αF + N⁺b − V_r V_rᵀ(2x − z − αF) with V_rᵀF taken once per sample;
``TrafficNFPN.operator_reference`` composes it as written. For each network this script builds the
averaged-wide N-FPN (the shipped configs' default variant; the operator's cost does not depend on
the parameters' values), draws a latent around the free-flow start and contexts, checks that the two
evaluations agree, and times, alternating between them (``--rounds`` rounds, median):

- ``forward``: one evaluation under ``torch.no_grad()`` (an iteration of the forward solve);
- ``jfb``: one evaluation with a graph and its backward (what JFB adds per training step).

    python benchmarks/traffic_operator.py --data-dir ../shared/data --threads 2 \\
        --out benchmarks/results/traffic_operator.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    alternate,
    command_line,
    environment,
    markdown_table,
    median,
    script_parser,
    write_json,
)

NETWORKS = (
    "SiouxFalls",
    "Eastern-Massachusetts",
    "Berlin-Friedrichshain",
    "Berlin-Tiergarten",
    "Anaheim",
)


def measure(network_dir: Path, batch: int, rounds: int, seed: int) -> dict:
    from fpnets.tasks.traffic import Network, TrafficNFPN

    network = Network.from_tntp(network_dir)
    model = TrafficNFPN(network, 1000.0, variant="averaged-wide", alpha=1e-3)
    g = torch.Generator().manual_seed(seed)
    shape = (batch, model.num_commodities, model.num_links)
    z = model.initial_latent(batch, torch.float32, torch.device("cpu"))
    z = z + 0.1 * torch.randn(shape, generator=g)  # (B, K, E), negative entries included
    d = 10 * torch.rand(batch, 10, generator=g)
    with torch.no_grad():
        cd = model.game.context_features(model.normalize(d))
        fused, composed = model.operator(z, cd), model.operator_reference(z, cd)
    difference = float((fused - composed).norm() / composed.norm())

    def forward(op):
        def run():
            with torch.no_grad():
                op(z, cd)

        return run

    def jfb(op):
        def run():
            model.zero_grad(set_to_none=True)
            out = op(z, model.game.context_features(model.normalize(d)))
            out.sum().backward()

        return run

    runs = {
        "forward fused": forward(model.operator),
        "forward composed": forward(model.operator_reference),
        "jfb fused": jfb(model.operator),
        "jfb composed": jfb(model.operator_reference),
    }
    for run in runs.values():  # warm-up
        run()
    times = {k: median(v) for k, v in alternate(runs, rounds).items()}
    return {
        "network": network.name,
        "links": network.num_links,
        "commodities": model.num_commodities,
        "rank": model.projection.rank,
        "batch": batch,
        "relative_difference": difference,
        "ms": {k: 1e3 * v for k, v in times.items()},
        "speedup_forward": times["forward composed"] / times["forward fused"],
        "speedup_jfb": times["jfb composed"] / times["jfb fused"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument(
        "--data-dir",
        required=True,
        help="holds transportation-networks/<name>/ (as for fpnets train), or <name>/ itself",
    )
    parser.add_argument("--networks", default=",".join(NETWORKS), help="comma-separated names")
    parser.add_argument("--batch", type=int, default=100, help="contexts per evaluation (100)")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per variant (30)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    root = Path(args.data_dir)
    if (root / "transportation-networks").is_dir():  # the data directory of `fpnets train`
        root = root / "transportation-networks"
    names = [n for n in args.networks.split(",") if n]
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        parser.error(f"no network folder {', '.join(str(root / n) for n in missing)}")
    env = environment()
    results = [measure(root / n, args.batch, args.rounds, args.seed) for n in names]
    rows = [
        [
            r["network"],
            f"{r['commodities']} × {r['links']}",
            r["rank"],
            f"{r['ms']['forward composed']:.2f}",
            f"{r['ms']['forward fused']:.2f}",
            f"{r['speedup_forward']:.2f}×",
            f"{r['ms']['jfb composed']:.2f}",
            f"{r['ms']['jfb fused']:.2f}",
            f"{r['speedup_jfb']:.2f}×",
            f"{r['relative_difference']:.1e}",
        ]
        for r in results
    ]
    header = [
        "network",
        "K × E",
        "rank N",
        "forward ms, composed",
        "fused",
        "speed-up",
        "JFB ms, composed",
        "fused",
        "speed-up",
        "rel. difference",
    ]
    table = markdown_table(header, rows)
    sys.stdout.write(table + "\n")
    write_json(
        args.out,
        {"command": command_line(), "environment": env, "results": results, "table": table},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
