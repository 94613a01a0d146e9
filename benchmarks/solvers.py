"""Forward solvers on one operator: evaluations of T and time per solve, fpnets vs TorchDEQ.

The operator is a latent map of the MNIST FPN's size (32 × 9 × 9, batch 100 by default): either a
spectral-normalised conv operator (``--operator contractive``, contractive by construction) or the
latent operator R of the paper's MNIST FPN in eval mode (``--operator mnist``; random weights, or a
checkpoint of the reference implementation with ``--checkpoint``). Every method solves the same
problem to the same tolerance on the same per-sample residual ‖T(u) − u‖₂; TorchDEQ (optional,
``pip install torchdeq==0.1.0``) stops when the largest residual in the batch is below tol, fpnets
per sample. Methods run alternately, and each figure is the median over ``--repeats`` solves.

    python benchmarks/solvers.py --repeats 20 --json benchmarks/results/solvers.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

import fpnets
from fpnets import Anderson, Picard
from fpnets.layers import ContractiveConvOperator


class Counted(nn.Module):
    """Wraps T(u, x) and counts batched calls and per-sample evaluations."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op
        self.calls = 0
        self.samples = 0

    def forward(self, u: Tensor, x: Tensor) -> Tensor:
        self.calls += 1
        self.samples += u.shape[0]
        return self.op(u, x)


def build_operator(kind: str, checkpoint: str | None, gamma: float) -> nn.Module:
    if kind == "contractive":
        op = ContractiveConvOperator(32, gamma=gamma, blocks=2)
        with torch.no_grad():  # push every conv to its spectral bound: the slowest case
            for p in op.parameters():
                p.mul_(10.0)
        return op
    from fpnets.models import build_model, load_reference_checkpoint

    if checkpoint:
        model, _ = load_reference_checkpoint(checkpoint)
    else:
        model = build_model("mnist", "fpn")
    model.eval()
    return model.latent_operator()


def solve_fpnets(op: Counted, x: Tensor, solver: fpnets.Solver) -> tuple[Tensor, Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fpnets.ConvergenceWarning)
        sol = fpnets.fixed_point(op, torch.zeros_like(x), x, solver=solver)
    return sol.value, sol.iterations.float()


def solve_torchdeq(
    op: Counted, x: Tensor, name: str, tol: float, max_iter: int, m: int
) -> tuple[Tensor, Tensor]:
    from torchdeq.solver import get_solver

    solver = get_solver(name)
    z, _, _ = solver(
        lambda z: op(z, x), torch.zeros_like(x), max_iter=max_iter, tol=tol, stop_mode="abs", m=m
    )
    return z, torch.full((x.shape[0],), float(op.calls))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--operator", choices=["contractive", "mnist"], default="contractive")
    p.add_argument("--checkpoint", default=None, help="reference MNIST FPN .pth for --operator mnist")
    p.add_argument("--gamma", type=float, default=0.95)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--m", type=int, default=5, help="Anderson memory (both libraries)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    op = Counted(build_operator(args.operator, args.checkpoint, args.gamma)).eval()
    latent = (32, 9, 9)
    x = torch.randn(args.batch, *latent)
    if args.operator == "contractive":  # a spread of input scales: easy and hard samples
        x = x * torch.logspace(-2, 0.5, args.batch)[:, None, None, None]

    methods: dict[str, Callable[[], tuple[Tensor, Tensor]]] = {
        "fpnets Picard": lambda: solve_fpnets(op, x, Picard(tol=args.tol, max_iter=args.max_iter)),
        "fpnets Anderson": lambda: solve_fpnets(
            op, x, Anderson(tol=args.tol, max_iter=args.max_iter, m=args.m)
        ),
    }
    try:
        import torchdeq  # noqa: F401

        methods["TorchDEQ fixed_point_iter"] = lambda: solve_torchdeq(
            op, x, "fixed_point_iter", args.tol, args.max_iter, args.m
        )
        methods["TorchDEQ anderson"] = lambda: solve_torchdeq(
            op, x, "anderson", args.tol, args.max_iter, args.m
        )
    except ImportError:
        pass

    times: dict[str, list[float]] = {k: [] for k in methods}
    stats: dict[str, dict] = {}
    with torch.no_grad():
        for run in methods.values():  # warm-up
            run()
        for _ in range(args.repeats):
            for name, run in methods.items():
                op.calls = op.samples = 0
                t0 = time.perf_counter()
                z, depth = run()
                times[name].append(time.perf_counter() - t0)
                residual = torch.linalg.vector_norm((op(z, x) - z).flatten(1), dim=1)
                stats[name] = {
                    "calls": op.calls - 1,
                    "sample_evaluations": op.samples - x.shape[0],
                    "mean_depth": float(depth.mean()),
                    "max_residual": float(residual.max()),
                }
    base = statistics.median(times["fpnets Picard"])
    rows = []
    for name in methods:
        med = statistics.median(times[name])
        rows.append(
            {"method": name, "median_ms": 1e3 * med, "ratio_to_fpnets_picard": med / base, **stats[name]}
        )
    out = {
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "args": vars(args),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "commit": _commit(),
        "rows": rows,
    }
    print(_markdown(out))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


def _markdown(out: dict) -> str:
    a = out["args"]
    lines = [
        f"Operator `{a['operator']}` (32×9×9), batch {a['batch']}, tol {a['tol']:g} on ‖T(u) − u‖₂ per sample, "
        f"max_iter {a['max_iter']}, Anderson m={a['m']}; median of {a['repeats']} solves; {out['cpu']}, "
        f"{out['threads']} threads, torch {out['torch']}, commit {out['commit']}.",
        "",
        "| method | ms / solve | × fpnets Picard | batched calls of T | sample evaluations | mean depth | max residual |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        lines.append(
            f"| {r['method']} | {r['median_ms']:.1f} | {r['ratio_to_fpnets_picard']:.2f} | {r['calls']} | "
            f"{r['sample_evaluations']} | {r['mean_depth']:.1f} | {r['max_residual']:.1e} |"
        )
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
