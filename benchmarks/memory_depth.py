"""Memory of one training step of the MNIST FPN against the forward depth, for JFB, IFT and Unrolled.

The paper's MNIST network (2 latent blocks, γ = 0.5; ``--blocks``, ``--gamma``), batch 100 of real
MNIST, one training step (forward, cross-entropy, backward, Adam) with the forward iteration count
forced to each of ``--depths`` (default 10, 50, 200): the forward solver is ``Picard(tol=0.0,
max_iter=K)`` on the reference stopping norm, so it runs K evaluations of R unless every sample
reaches an exact fixed point in float32 (residual exactly 0) first. The actual depth is reported
(column "T calls": batched evaluations of R in the solve; "depth": mean per sample); if it falls
short of K, a note says so (then rerun with a slower-contracting setting such as ``--gamma 0.99``
or ``--variant jacobian``, which has no latent BatchNorm).

Backward modes (``--modes``): ``jfb``; ``ift``: IFT with a fixed-point (Picard) adjoint, relative
tolerance ``--adjoint-tol`` (1e-4), at most ``--adjoint-max-iter`` (50) products; ``unrolled``.
Every (mode, depth) gets a freshly built model with the same initial weights, one warm-up step at
depth 2 (so Adam's state exists and is not part of the measured step's growth), then the measured
step on the same batch. Measures:

- held MiB: bytes of the tensors autograd saved during the forward pass and still holds when it
  ends (a saved-tensors hook with weak references, common.SavedTensors.live; storages counted
  once; parameters and inputs included): the memory kept for the backward pass.
- saved MiB: every storage saved during the forward pass, including graphs fpnets records at an
  evaluation and drops at the next one (common.SavedTensors.total).
- graph nodes: autograd nodes reachable from the loss.
- CUDA peak MiB (``--device cuda``): ``torch.cuda.max_memory_allocated`` over the measured step,
  and the same minus the memory allocated before it (the step's growth).

Expected: flat in depth for JFB and IFT (one application of R kept), growing linearly for Unrolled.
Writes a Markdown table, JSON (``--json``) and a plot of memory against depth per mode (``--png``).

    python benchmarks/memory_depth.py --data-dir ../shared/data/mnist
    python benchmarks/memory_depth.py --data-dir ../shared/data/mnist --device cuda
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import fpnets
from fpnets.models import build_model
from fpnets.norms import max_channel_norm
from fpnets.train import train_step

from common import (
    RESULTS,
    CallCounter,
    StepProbe,
    choose,
    command_line,
    cuda_peak,
    cuda_reset_peak,
    environment,
    markdown_table,
    mib,
    mnist_batches,
    script_parser,
    write_json,
)

MODES = ("jfb", "ift", "unrolled")
LABELS = {"jfb": "JFB", "ift": "IFT (fixed-point adjoint)", "unrolled": "Unrolled"}


def make_backward(mode: str, args: argparse.Namespace) -> fpnets.Backward:
    if mode == "jfb":
        return fpnets.JFB()
    if mode == "ift":
        adjoint = fpnets.Picard(tol=args.adjoint_tol, max_iter=args.adjoint_max_iter, relative=True)
        return fpnets.IFT(adjoint, warn=False)
    return fpnets.Unrolled()


def measure(mode: str, depth: int, args: argparse.Namespace, batch: tuple[Any, Any]) -> dict[str, Any]:
    """One training step at forward depth ``depth`` with ``mode``; memory and counts."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = build_model(
        "mnist",
        args.variant,
        latent_blocks=args.blocks,
        gamma=args.gamma,
        solver=fpnets.Picard(tol=0.0, max_iter=2, norm=max_channel_norm),
        backward=make_backward(mode, args),
        lipschitz="none",
    ).to(device)
    if args.channels_last:
        model.channels_last_()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-6)
    d, y = batch
    train_step(model, d, y, F.cross_entropy, opt)  # warm-up at depth 2: Adam state, allocator
    model.latent.solver = fpnets.Picard(tol=0.0, max_iter=depth, norm=max_channel_norm)
    model.latent.solution = None
    base = cuda_reset_peak(device)
    # saved tensors of the forward pass (and the loss) only; the CUDA peak over the whole step
    with CallCounter(model.operator) as calls, StepProbe(F.cross_entropy, opt, device=device) as probe:
        train_step(model, d, y, probe.loss, opt)
    peak = cuda_peak(device)
    sol = model.solution
    assert sol is not None
    return {
        "mode": mode,
        "requested_depth": depth,
        "solve_calls": sol.evaluations,
        "mean_depth": float(sol.iterations.float().mean()),
        "min_depth": int(sol.iterations.min()),
        "exact_fixed_points": int((sol.residual == 0).sum()),
        "operator_calls": calls.calls,
        "graph_calls": calls.graph_calls,
        "backprops_through_R": calls.backprops,
        "held_bytes": probe.held,
        "saved_bytes": probe.forward.total(),
        "graph_nodes": probe.nodes,
        "cuda_peak_bytes": peak,
        "cuda_base_bytes": base,
        "cuda_step_bytes": None if peak is None or base is None else peak - base,
    }


def plot(rows: list[dict[str, Any]], modes: list[str], path: Path, title: str, cuda: bool) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("held_bytes", "held for backward (MiB)"), ("graph_nodes", "autograd graph nodes")]
    if cuda:
        panels.append(("cuda_step_bytes", "CUDA peak over step start (MiB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for mode in modes:
            pts = sorted((r["solve_calls"], r[key]) for r in rows if r["mode"] == mode)
            xs = [p[0] for p in pts]
            ys = [(mib(p[1]) if key.endswith("bytes") else p[1]) for p in pts]
            ax.plot(xs, ys, marker="o", label=LABELS[mode])
        ax.set_xscale("log")
        ticks = sorted({r["solve_calls"] for r in rows})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("forward depth (evaluations of R)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = script_parser(__doc__)
    p.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    p.add_argument("--blocks", type=int, default=2, help="latent blocks (paper: 2)")
    p.add_argument("--gamma", type=float, default=0.5, help="contraction factor γ (paper: 0.5)")
    p.add_argument(
        "--variant",
        choices=("fpn", "jacobian"),
        default="fpn",
        help="fpn: latent BatchNorm (the paper's FPN); jacobian: no latent BatchNorm",
    )
    p.add_argument("--depths", default="10,50,200", help="comma-separated forward depths K")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    p.add_argument("--adjoint-tol", type=float, default=1e-4, help="relative tolerance of the IFT adjoint")
    p.add_argument("--adjoint-max-iter", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: batch 10, depths 2,5,10")
    p.add_argument("--json", default=str(RESULTS / "memory_depth.json"))
    p.add_argument("--png", default=str(RESULTS / "memory_depth.png"))
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.depths = 10, "2,5,10"
    if args.threads:
        torch.set_num_threads(args.threads)
    depths = [int(k) for k in args.depths.split(",") if k.strip()]
    modes = choose(args.modes, MODES, "mode")
    env = environment(args.device)
    cuda = torch.device(args.device).type == "cuda"
    (batch,) = mnist_batches(args.data_dir, 1, args.batch_size, args.seed, args.device)
    rows = [measure(m, k, args, batch) for k in depths for m in modes]

    header = [
        "mode",
        "K",
        "T calls",
        "depth",
        "held MiB",
        "saved MiB",
        "graph nodes",
        *(["CUDA peak MiB", "CUDA step MiB"] if cuda else []),
    ]
    table_rows = [
        [
            LABELS[r["mode"]],
            r["requested_depth"],
            r["solve_calls"],
            f"{r['mean_depth']:.1f}",
            f"{mib(r['held_bytes']):.1f}",
            f"{mib(r['saved_bytes']):.1f}",
            r["graph_nodes"],
            *([f"{mib(r['cuda_peak_bytes']):.1f}", f"{mib(r['cuda_step_bytes']):.1f}"] if cuda else []),
        ]
        for r in rows
    ]
    table = markdown_table(header, table_rows)
    short = [r for r in rows if r["solve_calls"] < r["requested_depth"]]
    notes = []
    if short:
        notes.append(
            "forward stopped before K (every sample reached an exact float fixed point) for: "
            + ", ".join(f"{r['mode']} K={r['requested_depth']} ({r['solve_calls']} calls)" for r in short)
            + "; rerun with --gamma 0.99 or --variant jacobian for a slower contraction"
        )
    partial = [r for r in rows if r["exact_fixed_points"] and r["solve_calls"] == r["requested_depth"]]
    if partial:
        notes.append(
            "some samples froze at an exact fixed point before K (the batch still ran K whole-batch "
            "evaluations): "
            + ", ".join(f"{r['mode']} K={r['requested_depth']}: {r['exact_fixed_points']}" for r in partial)
        )
    title = (
        f"MNIST FPN ({args.variant}, {args.blocks} latent blocks, γ={args.gamma}), batch "
        f"{args.batch_size}, one training step, Picard(tol=0, max_iter=K); {env['device']}"
    )
    print(f"{title}; torch {env['torch']}, commit {env['commit']}\n")
    print(table)
    for n in notes:
        print("\nNote: " + n)
    result: dict[str, Any] = {
        "command": command_line(),
        "args": vars(args),
        "env": env,
        "rows": rows,
        "notes": notes,
        "table": table,
    }
    if args.png:
        plot(rows, modes, Path(args.png), title, cuda)
        print(f"\nplot: {args.png}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
