"""fpnets against TorchDEQ 0.1.0 on the latent fixed point of the MNIST FPN: step time, evaluations, gradients.

Both libraries solve and differentiate the same latent operator R(u, x) of the MNIST FPN
(``build_model("mnist", "fpn")``: 2 latent blocks, γ = 0.5) inside the same classifier: x = Q(d),
u* = R(u*, x) from u = 0, logits = S(u*); cross-entropy, backward, Adam 2e-4. The reference
Lipschitz rule is off (it is no part of either library). Configurations (``--configs``), each
library × forward solver × gradient:

- ``td-*``: TorchDEQ, ``get_deq(core="sliced", f_solver=..., f_tol=tol, f_max_iter=max_iter,
  f_stop_mode="abs", ...)``. ``jfb``: its default gradient, ``grad=1`` (one application of R with a
  graph at the solver's output, the fixed point itself detached: JFB); ``ift``: ``ift=True``
  (``torch.autograd.Function`` form; the adjoint w = Jᵀw + g solved from w = 0 by ``b_solver`` =
  the forward solver, ``b_tol=adjoint_tol``, ``b_stop_mode="rel"``, ``b_max_iter``).
  ``picard``: ``fixed_point_iter``; ``anderson``: ``anderson`` with m = ``--anderson-m`` (passed as
  a forward solver keyword; TorchDEQ's backward Anderson always uses its default m = 6) and its
  absolute regulariser λ = 1e-4.
- ``fp-*``: fpnets, ``FixedPointLayer(R, Picard|Anderson(tol, max_iter, m), JFB() | IFT(adjoint))``,
  adjoint = the same solver kind with ``relative=True`` at ``adjoint_tol`` / ``adjoint_max_iter``,
  started from w = g; Anderson's ridge 1e-4 is relative to the mean of diag GGᵀ.

Equal tolerances on the same residual: ‖R(u) − u‖₂ over each sample's latent (fpnets' default
norm, TorchDEQ's ``abs`` mode), ``--tol`` (default 1e-2: about 11 Picard iterations for the
freshly initialised network, where the model's own 0.1 on the reference max-channel norm takes
4–5), at most ``--max-iter`` (50); the adjoint on ‖w⁺ − w‖₂ / ‖w⁺‖₂ (fpnets ``relative=True``,
TorchDEQ ``rel``). TorchDEQ stops when the largest residual of the batch is below tol and returns,
per sample, R of the iterate with the lowest residual; fpnets freezes each sample when its own
residual is ≤ tol and returns that iterate. With latent BatchNorm in training mode R couples the
samples, so both evaluate R on the whole batch at every iteration (fpnets holds frozen samples).

Part 1, training step (``--steps`` alternating timed steps after ``--warmup``, medians; BatchNorm
in training mode, which TorchDEQ handles since it always evaluates the whole batch). Counts from
``--count-steps`` further untimed steps with counters installed: forward batched calls of R and
per-sample evaluations (a forward hook on R), the solver's iterations, the largest final residual;
backward VJPs through R (``torch.autograd.grad`` calls, plus backprops of ``loss.backward()``
through a recorded application of R, counted by tensor hooks) and R evaluations recomputed in the
backward pass (TorchDEQ's IFT re-applies R); held MiB: saved tensors autograd holds after the
forward pass (common.SavedTensors.live).

Part 2, gradient check (``--check-dtypes``, default float32 and float64; BatchNorm in evaluation
mode so both libraries see the same map, its running statistics first set by
``--check-bn-warmup`` no-grad training-mode forwards of the model): on one batch (dropout off),
the parameter gradients of TorchDEQ's 1-step gradient vs fpnets JFB and of TorchDEQ IFT vs fpnets
IFT, for both solvers, as relative errors ‖g_td − g_fp‖₂ / ‖g_fp‖₂ over all parameters and per part
(Q, R, S). Tight tolerances: float32 tol 1e-5 (the float32 floor of this residual is about 2e-6),
adjoint 1e-6 relative; float64 1e-10 / 1e-10; at most ``--check-max-iter`` iterations.

    python benchmarks/torchdeq_compare.py --data-dir ../shared/data/mnist
    python benchmarks/torchdeq_compare.py --data-dir ../shared/data/mnist --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import fpnets
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
    environment,
    fmt,
    markdown_table,
    median,
    mib,
    mnist_batches,
    script_parser,
    write_json,
)

LIBS = ("td", "fp")
SOLVERS = ("picard", "anderson")
GRADS = ("jfb", "ift")
CONFIG_NAMES = tuple(f"{lib}-{s}-{g}" for s in SOLVERS for g in GRADS for lib in LIBS)
TD_SOLVER = {"picard": "fixed_point_iter", "anderson": "anderson"}
CHECK_TOLS = {"float32": (1e-5, 1e-6), "float64": (1e-10, 1e-10)}


def label(name: str) -> str:
    lib, solver, grad = name.split("-")
    lib_s = "TorchDEQ" if lib == "td" else "fpnets"
    solver_s = ("fixed_point_iter" if lib == "td" else "Picard") if solver == "picard" else "Anderson"
    grad_s = ("1-step grad" if lib == "td" else "JFB") if grad == "jfb" else "IFT"
    return f"{lib_s} {solver_s} {grad_s}"


class Latent:
    """u* = R(u*, x) by one library, solver and gradient; ``stats()`` describes the last solve."""

    def __init__(
        self,
        name: str,
        operator: torch.nn.Module,
        *,
        tol: float,
        max_iter: int,
        adjoint_tol: float,
        adjoint_max_iter: int,
        m: int,
        warn: bool = True,
    ) -> None:
        self.lib, self.solver, self.grad = name.split("-")
        self.operator = operator
        self.last: Any = None
        self.adjoint_tol = adjoint_tol
        self.adjoint_infos: list[Any] = []  # TorchDEQ's backward solver statistics (its writer)
        if self.lib == "fp":
            if self.solver == "picard":
                forward: fpnets.Solver = fpnets.Picard(tol=tol, max_iter=max_iter)
                adjoint: fpnets.Solver = fpnets.Picard(
                    tol=adjoint_tol, max_iter=adjoint_max_iter, relative=True
                )
            else:
                forward = fpnets.Anderson(tol=tol, max_iter=max_iter, m=m)
                adjoint = fpnets.Anderson(tol=adjoint_tol, max_iter=adjoint_max_iter, m=m, relative=True)
            backward = fpnets.JFB() if self.grad == "jfb" else fpnets.IFT(adjoint, warn=False)
            self.layer = fpnets.FixedPointLayer(operator, forward, backward, warn=warn)
        else:
            from torchdeq import get_deq

            self.deq = get_deq(
                core="sliced",
                f_solver=TD_SOLVER[self.solver],
                b_solver=TD_SOLVER[self.solver],
                f_tol=tol,
                f_max_iter=max_iter,
                f_stop_mode="abs",
                b_tol=adjoint_tol,
                b_max_iter=adjoint_max_iter,
                b_stop_mode="rel",
                ift=self.grad == "ift",
            )
            self.deq.train()  # TorchDEQ attaches gradients only in its training mode
            self.solver_kwargs = {"m": m} if self.solver == "anderson" else {}

    def __call__(self, x: Tensor) -> Tensor:
        if self.lib == "fp":
            u = self.layer(x)
            self.last = self.layer.solution
            return u
        z0 = torch.zeros_like(x)
        zs, info = self.deq(
            lambda z: self.operator(z, x),
            z0,
            solver_kwargs=dict(self.solver_kwargs),
            backward_writer=self.adjoint_infos.append,
        )
        self.last = info
        return zs[-1]

    def adjoint_misses(self) -> int:
        """TorchDEQ IFT backward solves (since the last call) whose relative residual missed tol."""
        misses = sum(1 for i in self.adjoint_infos if float(i["rel_lowest"].max()) >= self.adjoint_tol)
        self.adjoint_infos.clear()
        return misses

    def stats(self) -> dict[str, Any]:
        if self.last is None:
            return {}
        if self.lib == "fp":
            sol = self.last
            return {
                "mean_depth": float(sol.iterations.float().mean()),
                "residual_max": float(sol.residual.max()),
                "converged": bool(sol.converged.all()),
            }
        info = self.last
        return {
            "lowest_step_mean": float(info["nstep"].float().mean()),
            "residual_max": float(info["abs_lowest"].max()),
        }


class Classifier(torch.nn.Module):
    """d ↦ S(u*) with u* = R(u*, Q(d)) found by ``latent`` (one library); Q, R, S of ``model``."""

    def __init__(self, model: torch.nn.Module, latent: Latent) -> None:
        super().__init__()
        self.model = model
        self.latent = latent  # not a module: its fpnets layer shares R with ``model``

    def forward(self, d: Tensor) -> Tensor:
        model = self.model
        x = model.encoder(d.contiguous(memory_format=model.memory_format))
        return model.readout(self.latent(x))


class Pipeline:
    """The whole classifier with one library in the middle, its optimizer and the batches."""

    def __init__(self, name: str, args: argparse.Namespace, batches: list[Any]) -> None:
        torch.manual_seed(args.seed)  # same initial weights for every configuration
        self.name = name
        self.device = torch.device(args.device)
        self.model = build_model(
            "mnist", "fpn", latent_blocks=args.blocks, gamma=args.gamma, lipschitz="none"
        ).to(self.device)
        if args.channels_last:
            self.model.channels_last_()
        self.model.train()
        self.latent = Latent(
            name,
            self.model.operator,
            tol=args.tol,
            max_iter=args.max_iter,
            adjoint_tol=args.adjoint_tol,
            adjoint_max_iter=args.adjoint_max_iter,
            m=args.anderson_m,
            warn=False,  # training: read the residuals from the counted steps instead
        )
        self.classifier = Classifier(self.model, self.latent)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=args.lr, weight_decay=1e-6)
        self.batches = batches
        self.index = 0

    def step(self) -> None:
        d, y = self.batches[self.index % len(self.batches)]
        self.index += 1
        train_step(self.classifier, d, y, F.cross_entropy, self.opt)

    def measure(self) -> dict[str, Any]:
        """One untimed step with counters installed."""
        d, y = self.batches[self.index % len(self.batches)]
        self.index += 1
        layer = getattr(self.latent, "layer", None)
        mode = None if layer is None else layer.backward_mode
        if isinstance(mode, fpnets.IFT):  # count adjoint solves that miss their tolerance
            layer.backward_mode = dataclasses.replace(mode, warn=True)
        self.latent.adjoint_misses()  # drop TorchDEQ's statistics of earlier steps
        try:
            with (
                CallCounter(self.model.operator) as calls,
                GradCallCounter() as grads,
                warnings.catch_warnings(record=True) as caught,
            ):
                warnings.simplefilter("always", fpnets.ConvergenceWarning)
                # counts and saved tensors at the end of the forward pass, then the backward phase
                with StepProbe(F.cross_entropy, self.opt, device=self.device, counter=calls) as probe:
                    train_step(self.classifier, d, y, probe.loss, self.opt)
        finally:
            if layer is not None:
                layer.backward_mode = mode
        misses = sum(1 for w in caught if issubclass(w.category, fpnets.ConvergenceWarning))
        misses += self.latent.adjoint_misses()
        return {
            "fwd_calls": probe.fwd_calls,
            "fwd_samples": probe.fwd_samples,
            "fwd_graph_calls": calls.graph_calls - calls.by_phase.get("backward", 0),
            "bwd_vjps": calls.backprops + grads.calls,
            "bwd_autograd_grad_calls": grads.calls,
            "bwd_backprops": calls.backprops,
            "bwd_forward_calls": calls.by_phase.get("backward", 0),
            "held_bytes": probe.held,
            "adjoint_misses": misses if self.latent.grad == "ift" else None,
            **self.latent.stats(),
        }


def _flat(params: list[Tensor | None]) -> Tensor:
    return torch.cat([p.reshape(-1) for p in params if p is not None])


def gradient_check(args: argparse.Namespace, batch: tuple[Tensor, Tensor], dtype_name: str) -> dict[str, Any]:
    """Parameter gradients of TorchDEQ vs fpnets at tight tolerances, BatchNorm in eval mode."""
    dtype = getattr(torch, dtype_name)
    device = torch.device(args.device)
    tol, adjoint_tol = CHECK_TOLS[dtype_name]
    torch.manual_seed(args.seed)
    model = build_model("mnist", "fpn", latent_blocks=args.blocks, gamma=args.gamma, lipschitz="none")
    model = model.to(device=device, dtype=dtype)
    d, y = batch
    d = d.to(device=device, dtype=dtype)
    y = y.to(device)
    model.train()
    with torch.no_grad():  # running statistics of the latent BatchNorm from training-mode solves
        for _ in range(args.check_bn_warmup):
            model(d)
    model.eval()  # BN with running statistics (the same map for both libraries), dropout off
    parts = {"Q": model.encoder, "R": model.operator, "S": model.readout}
    grads: dict[str, dict[str, Tensor]] = {}
    info: dict[str, Any] = {}
    for name in CONFIG_NAMES:
        latent = Latent(
            name,
            model.operator,
            tol=tol,
            max_iter=args.check_max_iter,
            adjoint_tol=adjoint_tol,
            adjoint_max_iter=args.check_max_iter,
            m=args.anderson_m,
        )
        model.zero_grad(set_to_none=True)
        with CallCounter(model.operator) as calls:
            loss = F.cross_entropy(model.readout(latent(model.encoder(d))), y)
            calls.phase = "backward"
            loss.backward()
        grads[name] = {k: _flat([p.grad for p in m.parameters()]).detach().clone() for k, m in parts.items()}
        info[name] = {
            "loss": float(loss.detach()),
            "fwd_calls": calls.by_phase.get("forward", 0),
            **latent.stats(),
        }

    def rel(a: str, b: str) -> dict[str, float]:
        out = {}
        for k in (*parts, "all"):
            ga = torch.cat(list(grads[a].values())) if k == "all" else grads[a][k]
            gb = torch.cat(list(grads[b].values())) if k == "all" else grads[b][k]
            out[k] = float((ga - gb).norm() / gb.norm().clamp_min(1e-300))
        return out

    comparisons: dict[str, dict[str, float]] = {}
    for s in SOLVERS:
        for g in GRADS:
            comparisons[f"td-{s}-{g} vs fp-{s}-{g}"] = rel(f"td-{s}-{g}", f"fp-{s}-{g}")
    # context: how far apart the gradients being compared are
    comparisons["fp-picard-jfb vs fp-picard-ift"] = rel("fp-picard-jfb", "fp-picard-ift")
    comparisons["fp-anderson-ift vs fp-picard-ift"] = rel("fp-anderson-ift", "fp-picard-ift")
    return {
        "dtype": dtype_name,
        "tol": tol,
        "adjoint_tol": adjoint_tol,
        "max_iter": args.check_max_iter,
        "batch_size": int(d.shape[0]),
        "relative_errors": comparisons,
        "runs": info,
    }


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    p = script_parser(__doc__)
    p.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    p.add_argument("--blocks", type=int, default=2, help="latent blocks (paper: 2)")
    p.add_argument("--gamma", type=float, default=0.5, help="contraction factor γ (paper: 0.5)")
    p.add_argument("--tol", type=float, default=1e-2, help="forward tolerance on ‖R(u) − u‖₂ per sample")
    p.add_argument("--max-iter", type=int, default=50, help="forward iteration cap")
    p.add_argument("--adjoint-tol", type=float, default=1e-4, help="relative adjoint tolerance (IFT)")
    p.add_argument("--adjoint-max-iter", type=int, default=50)
    p.add_argument("--anderson-m", type=int, default=6, help="Anderson memory (TorchDEQ's default: 6)")
    p.add_argument(
        "--configs",
        default=",".join(CONFIG_NAMES),
        help="comma-separated subset of " + ", ".join(CONFIG_NAMES),
    )
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--count-steps", type=int, default=3)
    p.add_argument(
        "--check-dtypes", default="float32,float64", help="dtypes of the gradient check ('' skips it)"
    )
    p.add_argument(
        "--check-max-iter", type=int, default=300, help="iteration cap of the gradient check solves"
    )
    p.add_argument("--check-bn-warmup", type=int, default=3)
    p.add_argument(
        "--check-batch-size", type=int, default=0, help="gradient-check batch (default: --batch-size)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true", help="NHWC layout for the training-step part")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: batch 20, 2 steps, check on 10 samples")
    p.add_argument("--json", default=str(RESULTS / "torchdeq_compare.json"))
    args = p.parse_args(argv)
    try:
        import torchdeq
    except ImportError:
        print(
            "torchdeq is not installed; install the benchmark extra (pip install -e '.[bench]', "
            "i.e. torchdeq==0.1.0) to run this comparison. Nothing to do."
        )
        return None
    if args.quick:
        args.batch_size, args.steps, args.warmup, args.count_steps = 20, 2, 1, 1
        args.check_batch_size = args.check_batch_size or 10
    if args.threads:
        torch.set_num_threads(args.threads)
    names = choose(args.configs, CONFIG_NAMES, "config")
    dtypes = choose(args.check_dtypes, list(CHECK_TOLS), "check dtype")
    env = environment(args.device)
    env["torchdeq"] = getattr(torchdeq, "__version__", None) or _dist_version("torchdeq")
    total = args.warmup + args.steps + args.count_steps
    batches = mnist_batches(args.data_dir, total, args.batch_size, args.seed, args.device)

    # ---- part 1: training steps
    pipes = {n: Pipeline(n, args, batches) for n in names}
    for pipe in pipes.values():
        for _ in range(args.warmup):
            pipe.step()
    times = alternate({n: pipe.step for n, pipe in pipes.items()}, args.steps, args.device)
    counts = {n: [pipe.measure() for _ in range(args.count_steps)] for n, pipe in pipes.items()}

    def mean(rows: list[dict[str, Any]], key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    header = [
        "config",
        "ms / step",
        "fwd R calls",
        "fwd R evals / sample",
        "max residual",
        "bwd VJPs",
        "bwd R calls",
        "held MiB",
        "adjoint misses",
        "× fpnets twin",
    ]
    rows, out_rows = [], []
    for n in names:
        c = counts[n]
        ms = 1e3 * median(times[n])
        samples = mean(c, "fwd_samples")
        twin = "fp-" + n[3:]
        rows.append(
            [
                label(n),
                f"{ms:.1f}",
                fmt(mean(c, "fwd_calls")),
                fmt(None if samples is None else samples / args.batch_size, ".2f"),
                fmt(mean(c, "residual_max"), ".2e"),
                fmt(mean(c, "bwd_vjps")),
                fmt(mean(c, "bwd_forward_calls")),
                fmt(mib(mean(c, "held_bytes"))),
                "—" if c[0]["adjoint_misses"] is None else f"{sum(r['adjoint_misses'] for r in c)}/{len(c)}",
                f"{ms / (1e3 * median(times[twin])):.2f}" if n.startswith("td-") and twin in times else "",
            ]
        )
        out_rows.append(
            {
                "config": n,
                "label": label(n),
                "median_ms": ms,
                "all_ms": [1e3 * s for s in times[n]],
                "counted_steps": c,
            }
        )
    table = markdown_table(header, rows)
    print(
        f"MNIST FPN latent fixed point ({args.blocks} latent blocks, γ={args.gamma}, latent BatchNorm in "
        f"training mode), batch {args.batch_size}, tol {args.tol:g} on ‖R(u) − u‖₂ / max {args.max_iter}, "
        f"adjoint {args.adjoint_tol:g} relative / max {args.adjoint_max_iter}, Anderson m={args.anderson_m}; "
        f"{args.steps} alternating steps after {args.warmup} warm-up, counts from {args.count_steps} "
        f"further step(s); {env['device']}, {env['cpu']}, {env['threads']} threads, torch {env['torch']}, "
        f"torchdeq {env['torchdeq']}, commit {env['commit']}, load {env['loadavg_at_start']:.2f}\n"
    )
    print(table)

    # ---- part 2: gradient agreement
    checks = []
    if dtypes:
        n_check = args.check_batch_size or args.batch_size
        check_batch = mnist_batches(args.data_dir, 1, n_check, args.seed + 1, "cpu")[0]
        for dt in dtypes:
            checks.append(gradient_check(args, check_batch, dt))
        crow = []
        for chk in checks:
            for pair, errs in chk["relative_errors"].items():
                crow.append([chk["dtype"], pair, *(f"{errs[k]:.2e}" for k in ("all", "Q", "R", "S"))])
        print(
            "\nGradient agreement (latent BatchNorm in eval mode, dropout off, one batch of "
            f"{n_check}; float32: tol 1e-5 / adjoint 1e-6 rel, float64: 1e-10 / 1e-10, at most "
            f"{args.check_max_iter} iterations). Relative error ‖g_a − g_b‖ / ‖g_b‖ of the "
            "parameter gradients; the last two rows per dtype show how far apart the gradients "
            "being compared are (JFB vs IFT, Anderson vs Picard within fpnets):\n"
        )
        print(markdown_table(["dtype", "a vs b", "all", "Q", "R", "S"], crow))
        resid = [
            [chk["dtype"], label(n), fmt(r.get("residual_max"), ".2e"), r["fwd_calls"]]
            for chk in checks
            for n, r in chk["runs"].items()
        ]
        print("\nGradient-check solves (largest final forward residual, forward calls of R):\n")
        print(markdown_table(["dtype", "config", "max residual", "fwd R calls"], resid))
    result: dict[str, Any] = {
        "command": command_line(),
        "args": vars(args),
        "env": env,
        "rows": out_rows,
        "table": table,
        "gradient_check": checks,
    }
    write_json(args.json, result)
    return result


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    main()
