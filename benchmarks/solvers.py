"""Forward solvers on one operator: evaluations of T and time per solve, fpnets vs TorchDEQ.

The operator is a latent map of the MNIST FPN's size (32 × 9 × 9, batch 100 by default):

- ``--operator contractive`` (default, no data needed): a spectral-normalised conv operator,
  contractive by construction, with inputs of spread-out scales (easy and hard samples);
- ``--operator mnist``: the latent operator R of the paper's MNIST FPN in eval mode, injected with
  Q(d) of real MNIST test images (``--data-dir``), with the weights of a reference checkpoint
  (``--checkpoint``, e.g. ../shared/data/jfb-reference/MNIST_FPN_weights_99.36.pth) or random ones.

Every method solves the same problem to the same tolerance on the same per-sample residual
‖T(u) − u‖₂; TorchDEQ (optional, ``pip install torchdeq==0.1.0``) stops when the largest residual in
the batch is below tol, fpnets per sample. Methods run alternately; each figure is a median over
``--repeats`` solves.

    python benchmarks/solvers.py --repeats 20
    python benchmarks/solvers.py --operator mnist --data-dir ../shared/data/mnist \
        --checkpoint ../shared/data/jfb-reference/MNIST_FPN_weights_99.36.pth --tol 1e-3 --repeats 20
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

import fpnets
from fpnets import Anderson, Picard
from fpnets.layers import ContractiveConvOperator

from common import RESULTS, alternate, command_line, environment, markdown_table, median, write_json


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


def build_problem(args: argparse.Namespace) -> tuple[nn.Module, Tensor]:
    """(R, x): the operator and the injected input Q(d), (B, 32, 9, 9)."""
    if args.operator == "contractive":
        op = ContractiveConvOperator(32, gamma=args.gamma, blocks=2)
        with torch.no_grad():  # push every conv to its spectral bound: the slowest case
            for p in op.parameters():
                p.mul_(10.0)
        x = torch.randn(args.batch, 32, 9, 9) * torch.logspace(-2, 0.5, args.batch)[:, None, None, None]
        return op.eval(), x
    from fpnets.data import BatchLoader, load_splits
    from fpnets.models import build_model, load_reference_checkpoint

    if args.checkpoint:
        model, _ = load_reference_checkpoint(args.checkpoint)
    else:
        model = build_model("mnist", "fpn")
    model.eval()
    if args.data_dir:
        splits = load_splits("mnist", args.data_dir, val_size=0)
        d, _ = next(iter(BatchLoader(splits.test, batch_size=args.batch, normalize=splits.info)))
    else:
        d = torch.randn(args.batch, 1, 28, 28)
    with torch.no_grad():
        x = model.encoder(d)
    return model.operator, x


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
    p.add_argument("--data-dir", default=None, help="MNIST folder for --operator mnist (else random images)")
    p.add_argument("--gamma", type=float, default=0.95, help="γ of the contractive operator")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--m", type=int, default=5, help="Anderson memory (both libraries)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(RESULTS / "solvers.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    env = environment()
    raw_op, x = build_problem(args)
    op = Counted(raw_op).eval()

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
        warnings.warn("torchdeq is not installed: comparing fpnets solvers only", stacklevel=1)

    stats: dict[str, dict] = {}

    def measured(name: str, run: Callable[[], tuple[Tensor, Tensor]]) -> Callable[[], None]:
        def go() -> None:
            op.calls = op.samples = 0
            z, depth = run()
            stats[name] = {
                "calls": op.calls,
                "sample_evaluations": op.samples,
                "mean_depth": float(depth.mean()),
                "max_residual": float(torch.linalg.vector_norm((raw_op(z, x) - z).flatten(1), dim=1).max()),
            }

        return go

    with torch.no_grad():
        for run in methods.values():  # warm-up
            run()
        times = alternate({k: measured(k, v) for k, v in methods.items()}, args.repeats)
    base = median(times["fpnets Picard"])
    rows = []
    for name in methods:
        med = median(times[name])
        rows.append(
            {"method": name, "median_ms": 1e3 * med, "ratio_to_fpnets_picard": med / base, **stats[name]}
        )
    out = {"command": command_line(), "args": vars(args), "env": env, "rows": rows}
    print(
        f"Operator `{args.operator}` (32×9×9), batch {args.batch}, tol {args.tol:g} on ‖T(u) − u‖₂ per sample, "
        f"max_iter {args.max_iter}, Anderson m={args.m}; median of {args.repeats} alternating solves; "
        f"{env['cpu']}, {env['threads']} threads, torch {env['torch']}, commit {env['commit']}.\n"
    )
    print(
        markdown_table(
            [
                "method",
                "ms / solve",
                "× fpnets Picard",
                "batched calls of T",
                "sample evaluations",
                "mean depth",
                "max residual",
            ],
            [
                [
                    r["method"],
                    f"{r['median_ms']:.1f}",
                    f"{r['ratio_to_fpnets_picard']:.2f}",
                    r["calls"],
                    r["sample_evaluations"],
                    f"{r['mean_depth']:.1f}",
                    f"{r['max_residual']:.1e}",
                ]
                for r in rows
            ],
        )
    )
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
