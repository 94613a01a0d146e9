"""Cost of one training step of the MNIST FPN under each backward mode: time, T evaluations, memory.

The paper's MNIST network (2 latent blocks, γ = 0.5, 54,352 parameters), batch 100 of real MNIST,
one training step per configuration (forward, cross-entropy, backward, Adam 2e-4). Every
configuration trains its own copy of the same network (same initial weights, same batches) and the
configurations take turns step by step, so load on the machine spreads evenly over them; each time
is a median over ``--steps`` timed steps after ``--warmup`` steps. Configurations (``--configs``):

- ``jfb``: Jacobian-free backprop (the paper's method).
- ``ift-picard``, ``ift-anderson``: the exact implicit gradient, adjoint w = Jᵀw + g solved by
  fixed-point iteration / Anderson (m = 5), relative tolerance ``--adjoint-tol`` (default 1e-4) on
  ‖Jᵀw + g − w‖₂ / ‖Jᵀw + g‖₂ per sample, at most ``--adjoint-max-iter`` (default 50) products.
- ``ift-cg``: the paper's baseline, conjugate gradients on the normal equations (fpnets.CGNormal),
  relative tolerance ``--adjoint-tol`` on ‖(I − J)ᵀw − g‖₂ / ‖g‖₂, at most ``--adjoint-max-iter``
  CG steps (two products each).
- ``neumann1``, ``neumann3``, ``neumann5``: w = Σ_{i≤k} (Jᵀ)^i g.
- ``unrolled``: backprop through every forward iteration.
- ``explicit``: the explicit twin S(R(0, Q(d))) (variant "explicit", the same parameters once).
- ``jacobian``: the paper's "Jacobian-based" model of Table 2 (variant "jacobian": no latent
  BatchNorm, IFT with CG on the normal equations at the variant's own tolerance 0.1 (relative),
  at most 50 CG steps).

All but ``explicit`` and ``jacobian`` use the variant "fpn" (latent BatchNorm in training mode, so
R couples the samples and every evaluation of R is a whole-batch one). Forward solve: Picard,
tolerance ``--tol`` (0.1) on the reference stopping norm (fpnets.norms.max_channel_norm, per
sample), at most ``--max-iter`` (50) evaluations. The reference Lipschitz rule is off by default
(``--lipschitz reference`` adds it to every step of every configuration).

Columns, from ``--count-steps`` extra steps run after the timed ones with counters installed
(counters are never installed during timed steps):

- fwd depth: mean evaluations of T per sample (``model.solution.iterations``); fwd calls: batched
  calls of R during the forward pass (solve plus the application kept with a graph).
- bwd VJPs: vector–Jacobian products through T in the backward pass: backward passes of
  ``loss.backward()`` through a recorded application of R (a tensor hook on every output of R
  recorded with a graph; 1 for JFB/IFT/Neumann, one per iteration for Unrolled), plus every
  ``torch.autograd.grad`` call the backward mode makes (``fpnets.backward._modes._vjp`` is wrapped
  to count the adjoint/Neumann products separately, and CG's one ``create_graph`` set-up product).
  bwd JVPs: CG's Jacobian–vector products (double-backward ``torch.autograd.grad`` calls, the
  remaining calls). bwd total: their sum.
- held MiB: bytes of the tensors autograd saved during the forward pass and still holds for the
  backward pass when the forward pass ends (common.SavedTensors.live: a saved-tensors hook keeps a
  weak reference to every saved tensor; storages counted once; parameters and inputs included).
  saved MiB: every storage saved during the forward pass (as common.saved_tensor_bytes counts),
  including the graphs fpnets records at every whole-batch evaluation (it keeps the graph of the
  last one for the backward pass) and drops at the next one. ``+bwd MiB``:
  storages saved during the backward pass (CG's double-backward graph). CUDA peak: ``torch.cuda.max_memory_allocated`` over the step
  (``--device cuda`` only). graph nodes: autograd nodes reachable from the loss.

    python benchmarks/backward_modes.py --data-dir ../shared/data/mnist
    python benchmarks/backward_modes.py --data-dir ../shared/data/mnist --device cuda --channels-last
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

import fpnets
import fpnets.backward._modes as modes
from fpnets.models import build_model
from fpnets.train import train_step

from common import (
    RESULTS,
    CallCounter,
    GradCallCounter,
    StepProbe,
    alternate,
    choose,
    command_line,
    cuda_reset_peak,
    environment,
    fmt,
    markdown_table,
    median,
    mib,
    mnist_batches,
    script_parser,
    write_json,
)

CONFIG_NAMES = (
    "jfb",
    "ift-picard",
    "ift-anderson",
    "ift-cg",
    "neumann1",
    "neumann3",
    "neumann5",
    "unrolled",
    "explicit",
    "jacobian",
)


def make_configs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """name -> {"variant", "backward" (None: the variant's default), "label"}."""
    adj = {"tol": args.adjoint_tol, "max_iter": args.adjoint_max_iter, "relative": True}
    return {
        "jfb": {"variant": "fpn", "backward": fpnets.JFB(), "label": "JFB"},
        "ift-picard": {
            "variant": "fpn",
            "backward": fpnets.IFT(fpnets.Picard(**adj), warn=False),
            "label": "IFT, fixed-point adjoint",
        },
        "ift-anderson": {
            "variant": "fpn",
            "backward": fpnets.IFT(fpnets.Anderson(**adj, m=5), warn=False),
            "label": "IFT, Anderson adjoint",
        },
        "ift-cg": {
            "variant": "fpn",
            "backward": fpnets.IFT(fpnets.CGNormal(**adj), warn=False),
            "label": "IFT, CG normal eq.",
        },
        **{
            f"neumann{k}": {"variant": "fpn", "backward": fpnets.Neumann(k), "label": f"Neumann({k})"}
            for k in (1, 3, 5)
        },
        "unrolled": {"variant": "fpn", "backward": fpnets.Unrolled(), "label": "Unrolled"},
        "explicit": {"variant": "explicit", "backward": None, "label": "explicit twin"},
        "jacobian": {"variant": "jacobian", "backward": None, "label": "Jacobian-based (paper)"},
    }


@contextlib.contextmanager
def counting_vjp() -> Iterator[list[int]]:
    """Wrap fpnets' vector–Jacobian product helper (used by Neumann, IFT and CG) with a counter."""
    count = [0]
    orig = modes._vjp

    def vjp(y: torch.Tensor, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        return orig(y, z, v)

    modes._vjp = vjp
    try:
        yield count
    finally:
        modes._vjp = orig


class Trainer:
    """One configuration: model, optimizer, and the shared list of batches."""

    def __init__(self, name: str, spec: dict[str, Any], args: argparse.Namespace, batches: list[Any]) -> None:
        torch.manual_seed(args.seed)  # same initial weights for every configuration
        opts: dict[str, Any] = {
            "latent_blocks": args.blocks,
            "gamma": args.gamma,
            # residuals on max_channel_norm (build_model sets it for a solver mapping); the
            # "jacobian" variant gets the same forward solve and keeps its CG at 0.1 / 50
            "solver": {"name": "picard", "tol": args.tol, "max_iter": args.max_iter},
            "lipschitz": args.lipschitz,
        }
        if spec["backward"] is not None:
            opts["backward"] = spec["backward"]
        self.name = name
        self.spec = spec
        self.device = torch.device(args.device)
        self.model = build_model("mnist", spec["variant"], **opts).to(self.device)
        if args.channels_last:
            self.model.channels_last_()
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=args.lr, weight_decay=1e-6)
        self.batches = batches
        self.index = 0
        self.depths: list[torch.Tensor] = []  # per-sample depth of each timed step
        self.calls: list[int] = []  # batched evaluations of R in each timed solve

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batches[self.index % len(self.batches)]
        self.index += 1
        return batch

    def step(self) -> None:
        d, y = self.next_batch()
        train_step(self.model, d, y, F.cross_entropy, self.opt, after_step=self.model.after_optimizer_step)
        sol = self.model.solution
        if sol is not None:
            self.depths.append(sol.iterations)
            self.calls.append(sol.evaluations)

    def measure(self) -> dict[str, Any]:
        """One step with counters and memory hooks installed (not timed)."""
        model = self.model
        d, y = self.next_batch()
        mode = model.latent.backward_mode
        if isinstance(mode, fpnets.IFT):  # count adjoint solves that miss their tolerance
            model.latent.backward_mode = dataclasses.replace(mode, warn=True)
        base = cuda_reset_peak(self.device)
        try:
            with (
                CallCounter(model.operator) as calls,
                GradCallCounter() as grads,
                counting_vjp() as vjps,
                warnings.catch_warnings(record=True) as caught,
            ):
                warnings.simplefilter("always", fpnets.ConvergenceWarning)
                # the forward pass and the loss under one saved-tensors hook, the backward pass under
                # another; the probe reads the CUDA peak before the optimizer step
                with StepProbe(F.cross_entropy, self.opt, device=self.device, counter=calls) as probe:
                    out = train_step(model, d, y, probe.loss, self.opt)
        finally:
            model.latent.backward_mode = mode
        model.after_optimizer_step()  # outside the counters: the Lipschitz probe also evaluates R
        sol = model.solution
        adjoint_vjps = vjps[0]
        setup = grads.create_graph
        jvps = grads.calls - adjoint_vjps - setup
        bwd_vjps = calls.backprops + adjoint_vjps + setup
        return {
            "fwd_depth": None if sol is None else float(sol.iterations.float().mean()),
            "fwd_solve_calls": None if sol is None else sol.evaluations,
            "fwd_calls": probe.fwd_calls,
            "fwd_samples": probe.fwd_samples,
            "graph_calls": probe.fwd_graph_calls,
            "bwd_backprops": calls.backprops,
            "bwd_adjoint_vjps": adjoint_vjps,
            "bwd_setup_vjps": setup,
            "bwd_vjps": bwd_vjps,
            "bwd_jvps": jvps,
            "bwd_forward_calls": calls.by_phase.get("backward", 0),
            "bwd_total": bwd_vjps + jvps + calls.by_phase.get("backward", 0),
            "adjoint_misses": sum(1 for w in caught if issubclass(w.category, fpnets.ConvergenceWarning)),
            "saved_live_bytes": probe.held,
            "saved_fwd_bytes": probe.forward.total(),
            "saved_bwd_bytes": probe.backward.total(),
            "cuda_peak_bytes": probe.peak,
            "cuda_base_bytes": base,
            "graph_nodes": probe.nodes,
            "loss": float(out.loss),
        }


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r[key] is not None]
    return sum(vals) / len(vals) if vals else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = script_parser(__doc__)
    p.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    p.add_argument("--blocks", type=int, default=2, help="latent blocks (paper: 2)")
    p.add_argument("--gamma", type=float, default=0.5, help="contraction factor γ (paper: 0.5)")
    p.add_argument("--tol", type=float, default=0.1, help="forward tolerance (max_channel_norm)")
    p.add_argument("--max-iter", type=int, default=50, help="forward iteration cap")
    p.add_argument("--adjoint-tol", type=float, default=1e-4, help="relative tolerance of IFT adjoint solves")
    p.add_argument(
        "--adjoint-max-iter", type=int, default=50, help="cap of IFT adjoint solves (products; CG: steps)"
    )
    p.add_argument("--lipschitz", choices=("none", "reference"), default="none")
    p.add_argument(
        "--configs",
        default=",".join(CONFIG_NAMES),
        help="comma-separated subset of " + ", ".join(CONFIG_NAMES),
    )
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--steps", type=int, default=50, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument(
        "--count-steps", type=int, default=3, help="untimed steps with counters, per configuration"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: batch 20, 2 steps, 1 warm-up, 1 counted")
    p.add_argument("--json", default=str(RESULTS / "backward_modes.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.steps, args.warmup, args.count_steps = 20, 2, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    names = choose(args.configs, CONFIG_NAMES, "config")
    configs = make_configs(args)
    env = environment(args.device)
    total = args.warmup + args.steps + args.count_steps
    batches = mnist_batches(args.data_dir, total, args.batch_size, args.seed, args.device)
    trainers = {n: Trainer(n, configs[n], args, batches) for n in names}
    for t in trainers.values():
        for _ in range(args.warmup):
            t.step()
        t.depths.clear()
        t.calls.clear()
    times = alternate({n: t.step for n, t in trainers.items()}, args.steps, args.device)
    counts = {n: [t.measure() for _ in range(args.count_steps)] for n, t in trainers.items()}

    ref = "jfb" if "jfb" in names else names[0]
    base = median(times[ref])
    cuda = torch.device(args.device).type == "cuda"
    header = [
        "config",
        "ms / step",
        f"× {ref.upper() if ref == 'jfb' else ref}",
        "fwd depth",
        "fwd T calls",
        "bwd VJPs",
        "bwd JVPs",
        "bwd total",
        "held MiB",
        "saved MiB",
        "+bwd MiB",
        *(["CUDA peak MiB"] if cuda else []),
        "graph nodes",
        "adjoint misses",
    ]
    rows, out_rows = [], []
    for n in names:
        t, c = trainers[n], counts[n]
        ms = 1e3 * median(times[n])
        depth = float(torch.stack([d.float().mean() for d in t.depths]).mean().cpu()) if t.depths else None
        solve_calls = sum(t.calls) / len(t.calls) if t.calls else None
        summary = {
            k: _mean(c, k) for k in c[0] if k not in ("cuda_peak_bytes", "cuda_base_bytes", "adjoint_misses")
        }
        peak = max((r["cuda_peak_bytes"] for r in c if r["cuda_peak_bytes"] is not None), default=None)
        misses = sum(r["adjoint_misses"] for r in c)
        rows.append(
            [
                t.spec["label"],
                f"{ms:.1f}",
                f"{ms / (1e3 * base):.2f}",
                fmt(depth, ".2f"),
                fmt(summary["fwd_calls"]),
                fmt(summary["bwd_vjps"]),
                fmt(summary["bwd_jvps"]),
                fmt(summary["bwd_total"]),
                fmt(mib(summary["saved_live_bytes"])),
                fmt(mib(summary["saved_fwd_bytes"])),
                fmt(mib(summary["saved_bwd_bytes"])),
                *([fmt(mib(peak))] if cuda else []),
                fmt(summary["graph_nodes"], ".0f"),
                f"{misses}/{len(c)}" if isinstance(t.model.latent.backward_mode, fpnets.IFT) else "—",
            ]
        )
        out_rows.append(
            {
                "config": n,
                "label": t.spec["label"],
                "variant": t.spec["variant"],
                "backward": repr(t.model.latent.backward_mode) if t.model.implicit else None,
                "solver": repr(t.model.latent.solver) if t.model.implicit else None,
                "median_ms": ms,
                "all_ms": [1e3 * s for s in times[n]],
                "time_vs_jfb": ms / (1e3 * base),
                "mean_depth_timed": depth,
                "mean_solve_calls_timed": solve_calls,
                "counted": summary,
                "counted_steps": c,
                "cuda_peak_bytes": peak,
                "adjoint_misses": misses,
            }
        )
    table = markdown_table(header, rows)
    result: dict[str, Any] = {
        "command": command_line(),
        "args": vars(args),
        "env": env,
        "reference_config": ref,
        "rows": out_rows,
        "table": table,
    }
    params = sum(p.numel() for p in next(iter(trainers.values())).model.parameters())
    print(
        f"MNIST FPN ({args.blocks} latent blocks, γ={args.gamma}, {params:,} parameters), batch "
        f"{args.batch_size}, forward Picard tol {args.tol:g} (max_channel_norm) / max {args.max_iter}, "
        f"adjoint tol {args.adjoint_tol:g} (relative) / max {args.adjoint_max_iter}; {args.steps} alternating "
        f"steps after {args.warmup} warm-up, counts from {args.count_steps} further step(s); "
        f"{env['device']}, {env['cpu']}, {env['threads']} threads, torch {env['torch']}, commit "
        f"{env['commit']}, load {env['loadavg_at_start']:.2f}\n"
    )
    print(table)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
