"""Training time and peak memory of the CT F-FPN against depth: JFB vs IFT vs the unrolled network.

The ``ct`` task's bundled ``ct-ellipses`` config (64 × 64 images, 30 angles, 91 detectors, batch
16, Adam with the config's learning rate), built the way ``fpnets train`` builds it
(``fpnets.train.load_config`` + ``cfg.make_task().build_model()``), with the paper-form R_Θ (the
``ffpn`` variant's difference regulariser: 8 channels, 4 blocks). For each depth K of ``--depths``:

- ``jfb``: the F-FPN T(u; d) = P_d(R_Θ(u)), forward solve ``Picard(tol=0, max_iter=K)`` on the
  reference norm, so every solve runs exactly K evaluations of T (unless a sample hits an exact
  float fixed point: the "T calls" and "depth" columns say what ran), then JFB;
- ``ift``: the same forward solve, then the core's IFT with its default adjoint solver
  (``Anderson(tol=1e-6, max_iter=100, relative=True)``; ``[backward] name = "ift"`` in the task);
- ``unrolled``: the task's unrolled network (``model.variant = "unrolled"``, ``model.steps = K``):
  K applications of the same T from the same u₀ (Hann FBP), backpropagated through all of them.

The F-FPN and the unrolled network start from the same weights (``train.seed``). A training step is
what ``fpnets train`` does per batch: ``fpnets.train.train_step`` (forward, MSE, backward, Adam
step) and the task's ``after_step`` hook (for the F-FPN the reference Lipschitz rule: two more
graph-free applications of T; ``--lipschitz none`` drops it, ``--lipschitz NAME`` picks another
rule of ``model.lipschitz``; a no-op for the unrolled network).

Data: the shipped data config's ellipses with a smaller training split (``--train-images``, default
256; generated once and cached under ``--data-dir``); every configuration cycles through the same
batches in the same order.

Timing: every (method, K) configuration is built first; then ``--warmup`` untimed rounds and
``--repeats`` timed rounds, each round one step of every configuration in turn (round-robin, so all
rows see the same machine state). "T calls (fwd)": applications of T in the forward pass of the
instrumented step (the solve's K plus the one with a graph for JFB and IFT); "depth": the mean
evaluations per sample over the timed steps (below K only where a sample reached an exact float
fixed point and froze); "last change": max over the batch of max_p |u_K − u_{K−1}|_p at the end of
that forward pass (the reference stopping norm; 5e-3 is the shipped tolerance), which says whether
K iterations reached the fixed point. Reported: the median step in ms (and min/max), and the time per
epoch EXTRAPOLATED as median step × steps per epoch, an epoch being ceil(``--epoch-images`` /
batch) steps (default: the shipped config's 2000 training images, 125 steps). With ``--epoch`` the
timed rounds are instead one whole pass over the ``--train-images`` split, and the sum of those
step times is reported as the measured epoch (batches prepared beforehand: loader time excluded).
The machine's load average is recorded at the start and the end; a warning is printed when the
1-minute load exceeds half the cores (the timings are then not those of an idle machine).

Memory, from one more (untimed, instrumented) step of every configuration after the warm-up:

- peak MiB: the most tensor memory allocated during the step and alive at one time (the previous
  step's gradients are freed just before the step starts). On CPU: the allocation and free events
  of PyTorch's CPU allocator recorded by ``torch.profiler`` (``profile_memory=True``), summed in
  time order; blocks allocated before the step are not tracked, so their frees inside it (e.g. the
  previous step's ``model.solution``, a few KiB) do not lower the count, which makes it an upper
  bound of the peak above the level at the start. Tensor memory only: not the Python heap, not the
  allocator's caching, not the process's resident size. On CUDA: ``torch.cuda.max_memory_allocated``
  minus the memory allocated at the start of the step.
- held MiB: the bytes of the tensors autograd saved during the forward pass and still holds when
  the loss is computed (``common.StepProbe``, as ``memory_depth.py``; parameters and inputs saved
  by autograd included): what is kept for the backward pass.
- graph nodes: autograd nodes reachable from the loss.

Expected: JFB and IFT flat in depth (one application of T is kept for the backward pass), the
unrolled network growing linearly. IFT's cost also depends on its adjoint solve: the "VJPs / step"
column is the mean number of vector–Jacobian products per timed step (``torch.autograd.grad``
calls), "adjoint misses" the timed steps whose adjoint solve missed its tolerance (then the step
paid the solve's whole cap); ``--adjoint-tol`` and ``--adjoint-max-iter`` set that solve.

    python benchmarks/ct_backward.py --data-dir /tmp/ct-data --threads 2
    python benchmarks/ct_backward.py --quick --json /tmp/ct_backward.json    # smoke test, seconds
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import warnings
from typing import Any

import torch
from torch import nn

import fpnets
from fpnets.train import ConfigError, load_config, train_step

from common import (
    RESULTS,
    CallCounter,
    GradCallCounter,
    StepProbe,
    busy_warning,
    choose,
    command_line,
    cuda_peak,
    cuda_reset_peak,
    environment,
    fmt,
    git_commit,
    machine_load,
    markdown_table,
    median,
    mib,
    sync,
    write_json,
)

METHODS = ("jfb", "ift", "unrolled")
LABELS = {"jfb": "JFB", "ift": "IFT (Anderson adjoint)", "unrolled": "unrolled network"}
CONFIG = "ct-ellipses"

Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]


def config_overrides(method: str, depth: int, args: argparse.Namespace) -> list[str]:
    """``key=value`` overrides of the ct-ellipses config for ``method`` at depth K = ``depth``."""
    sets = [
        f"data.n_train={args.train_images}",
        "data.n_val=0",  # validation and test splits are not used here
        "data.n_test=0",
        f"train.seed={args.seed}",
    ]
    if args.quick:  # a tiny geometry and R_Θ: seconds, for the smoke test
        sets += ["data.image_size=32", "data.angles=12", "data.batch_size=4", "model.channels=4"]
    if args.batch_size:
        sets.append(f"data.batch_size={args.batch_size}")
    if method == "unrolled":
        sets += ["model.variant=unrolled", f"model.steps={depth}"]
    else:
        sets += [
            "model.variant=ffpn",
            "solver.name=picard",
            "solver.tol=0.0",
            f"solver.max_iter={depth}",
            f"backward.name={method}",
        ]
        if method == "ift" and (args.adjoint_tol is not None or args.adjoint_max_iter is not None):
            tol = 1e-6 if args.adjoint_tol is None else args.adjoint_tol  # the core's defaults otherwise
            cap = 100 if args.adjoint_max_iter is None else args.adjoint_max_iter
            sets.append(
                f'backward.options={{solver={{name="anderson", tol={tol!r}, max_iter={cap}, relative=true}}}}'
            )
        if args.lipschitz:
            sets.append(f"model.lipschitz={args.lipschitz}")
    return sets + list(args.set)


class Trainer:
    """One (method, K): the task's model, Adam, and the shared batches, stepped as ``fpnets train`` does."""

    def __init__(
        self, method: str, depth: int, args: argparse.Namespace, batches: list[Batch], device: torch.device
    ) -> None:
        cfg = load_config(args.config, config_overrides(method, depth, args))
        self.method, self.depth, self.device = method, depth, device
        self.task = cfg.make_task()
        torch.manual_seed(cfg.train.seed)  # the same initial R_Θ for every configuration
        self.model: nn.Module = self.task.build_model().to(device)
        self.model.train()
        o = cfg.optim
        self.opt = torch.optim.Adam(
            self.model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay
        )
        self.grad_clip = o.grad_clip
        self.batches = batches
        self.batch_size = cfg.data.batch_size
        self.n_parameters = sum(p.numel() for p in self.model.parameters())
        self.settings = {
            "model": type(self.model).__name__,
            "solver": repr(getattr(self.model, "solver", None)),
            "backward": repr(getattr(self.model, "backward_mode", None)),
            "steps": getattr(self.model, "steps", None),
            "lipschitz": getattr(self.model, "lipschitz", None),
        }
        self.steps = 0
        self.times: list[float] = []
        self.vjps: list[int] = []
        self.misses = 0
        self.adjoint_residuals: list[float] = []  # the largest residual of each missed adjoint solve
        self.depths: list[float] = []
        self.memory: dict[str, Any] = {}

    def _after_step(self) -> None:
        self.task.after_step(self.model)

    def _run(self, loss_fn: Any) -> None:
        inputs, target = self.batches[self.steps % len(self.batches)]
        train_step(
            self.model,
            inputs,
            target,
            loss_fn,
            self.opt,
            grad_clip=self.grad_clip,
            after_step=self._after_step,
        )
        self.steps += 1

    def step(self, timed: bool) -> None:
        """One training step; when ``timed``, its seconds, VJPs, adjoint misses and depth are kept."""
        with warnings.catch_warnings(record=True) as caught, GradCallCounter() as grads:
            warnings.simplefilter("always", fpnets.ConvergenceWarning)
            sync(self.device)
            t0 = time.perf_counter()
            self._run(self.task.loss)
            sync(self.device)
            seconds = time.perf_counter() - t0
        misses = 0
        for w in caught:  # count the adjoint's misses, pass every other warning on
            if issubclass(w.category, fpnets.ConvergenceWarning):
                misses += 1
                found = re.search(r"largest residual ([-+0-9.eE]+|nan|inf)", str(w.message))
                if found and timed:
                    self.adjoint_residuals.append(float(found.group(1)))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if timed:
            self.times.append(seconds)
            self.vjps.append(grads.calls)
            self.misses += misses > 0
            sol = getattr(self.model, "solution", None)
            self.depths.append(float(sol.iterations.float().mean()) if sol is not None else float(self.depth))

    def measure_memory(self) -> None:
        """One instrumented step: peak allocated memory, memory held for backward, graph size, T calls."""
        operator = getattr(self.model, "operator", None)
        counter = CallCounter(operator) if isinstance(operator, nn.Module) else None
        cuda = self.device.type == "cuda"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fpnets.ConvergenceWarning)
            # the previous step's gradients are freed before the measured region, not inside it
            self.opt.zero_grad(set_to_none=True)
            base = cuda_reset_peak(self.device)
            if counter is not None:
                counter.__enter__()
            try:
                probe = StepProbe(self.task.loss, self.opt, device=self.device, counter=counter)
                if cuda:
                    with probe:
                        self._run(probe.loss)
                    cpu_peak = None
                else:
                    with probe, cpu_memory_profile() as prof:
                        self._run(probe.loss)
                    cpu_peak = cpu_peak_bytes(prof)
            finally:
                if counter is not None:
                    counter.__exit__(None, None, None)
            peak = cuda_peak(self.device)
        sol = getattr(self.model, "solution", None)
        change = sol.residual if sol is not None else getattr(self.model, "last_step_change", None)
        self.memory = {
            "cpu_peak_bytes": cpu_peak,
            "cuda_peak_bytes": peak,
            "cuda_step_bytes": None if peak is None or base is None else peak - base,
            "held_bytes": probe.held,
            "saved_bytes": probe.forward.total(),
            "graph_nodes": probe.nodes,
            "forward_T_calls": probe.fwd_calls if counter is not None else None,
            "forward_T_graph_calls": probe.fwd_graph_calls if counter is not None else None,
            "solve_evaluations": sol.evaluations if sol is not None else None,
            "exact_fixed_points": int((sol.residual == 0).sum()) if sol is not None else 0,
            # max over samples of max_p |u_K − u_{K−1}|_p (the reference norm) at the end of the forward
            "last_change_max": None if change is None else float(change.max()),
        }

    def peak_bytes(self) -> int | None:
        m = self.memory
        return m["cuda_step_bytes"] if m.get("cuda_step_bytes") is not None else m.get("cpu_peak_bytes")

    def row(self, epoch_steps: int, epoch: bool) -> dict[str, Any]:
        med = median(self.times)
        return {
            "method": self.method,
            "depth": self.depth,
            "parameters": self.n_parameters,
            "batch_size": self.batch_size,
            "settings": self.settings,
            "timed_steps": len(self.times),
            "step_ms_median": 1e3 * med,
            "step_ms_min": 1e3 * min(self.times),
            "step_ms_max": 1e3 * max(self.times),
            "step_ms_all": [1e3 * t for t in self.times],
            "epoch_steps": epoch_steps,
            "epoch_s_extrapolated": epoch_steps * med,
            "epoch_s_measured": sum(self.times) if epoch else None,
            "mean_depth": sum(self.depths) / len(self.depths),
            "vjps_per_step": sum(self.vjps) / len(self.vjps),
            "adjoint_misses": self.misses,
            "adjoint_missed_residual_max": max(self.adjoint_residuals) if self.adjoint_residuals else None,
            "adjoint_missed_residual_min": min(self.adjoint_residuals) if self.adjoint_residuals else None,
            "peak_bytes": self.peak_bytes(),
            **self.memory,
        }


def cpu_memory_profile() -> Any:
    """``torch.profiler`` on CPU recording allocator events (``profile_memory=True``): a context manager."""
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU], profile_memory=True)


def cpu_peak_bytes(prof: Any) -> int:
    """The largest running sum of CPU allocations (+) and frees (−) over a profiled region, in time
    order: the most memory allocated inside the region and alive at one time (the profiler records
    no free of a block allocated before the region)."""
    events = prof.profiler.kineto_results.events()
    mem = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and str(e.device_type()).lower().endswith("cpu")
    )
    level = peak = 0
    for _, nbytes in mem:
        level += nbytes
        peak = max(peak, level)
    return peak


def load_batches(args: argparse.Namespace, device: torch.device) -> tuple[list[Batch], dict[str, Any]]:
    """The shuffled training batches of one epoch (the task's own loader, epoch 0) and the data facts."""
    cfg = load_config(args.config, config_overrides("jfb", 1, args))
    task = cfg.make_task()
    splits = task.load_splits(args.data_dir)
    loader = task.loader(splits.train, train=True, device=device)
    loader.set_epoch(0)
    batches = [(tuple(inputs), target) for inputs, target in loader]
    d = cfg.data
    geom = task.geometry
    facts = {
        "config": args.config,
        "train_images": len(splits.train.target),
        "batch_size": d.batch_size,
        "batches": len(batches),
        "image_size": geom.n,
        "angles": geom.n_angles,
        "detectors": geom.n_detectors,
        "noise": d.noise,
        "data_seed": d.seed,
        "shipped_n_train": load_config(args.config).data.n_train,
    }
    return batches, facts


def table(rows: list[dict[str, Any]], cuda: bool, epoch: bool) -> str:
    jfb = {r["depth"]: r["step_ms_median"] for r in rows if r["method"] == "jfb"}
    steps = rows[0]["epoch_steps"]
    header = [
        "method",
        "K",
        "T calls (fwd)",
        "depth",
        "last change",
        "ms / step (median)",
        "min–max",
        f"s / epoch ({steps} steps, extrap.)",
        *(["s / epoch (measured)"] if epoch else []),
        "× JFB",
        "CUDA peak MiB" if cuda else "CPU peak MiB",
        "held MiB",
        "graph nodes",
        "VJPs / step",
        "adjoint misses",
    ]
    out = []
    for r in rows:
        ratio = r["step_ms_median"] / jfb[r["depth"]] if r["depth"] in jfb else None
        calls = r["forward_T_calls"]
        out.append(
            [
                LABELS[r["method"]],
                r["depth"],
                "—" if calls is None else calls,
                f"{r['mean_depth']:.2f}",
                fmt(r["last_change_max"], ".1e"),
                f"{r['step_ms_median']:.0f}",
                f"{r['step_ms_min']:.0f}–{r['step_ms_max']:.0f}",
                f"{r['epoch_s_extrapolated']:.1f}",
                *([f"{r['epoch_s_measured']:.1f}"] if epoch else []),
                "—" if ratio is None else f"{ratio:.2f}",
                "—" if r["peak_bytes"] is None else f"{mib(r['peak_bytes']):.1f}",
                f"{mib(r['held_bytes']):.1f}",
                r["graph_nodes"],
                f"{r['vjps_per_step']:.1f}",
                f"{r['adjoint_misses']}/{r['timed_steps']}" if r["method"] == "ift" else "—",
            ]
        )
    return markdown_table(header, out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from common import script_parser

    p = script_parser(__doc__)
    p.add_argument("--config", default=CONFIG, help="the ct config (default: the bundled ct-ellipses)")
    p.add_argument("--data-dir", default=None, help="where the generated ellipses are cached")
    p.add_argument("--train-images", type=int, default=None, help="training images generated (default 256)")
    p.add_argument("--batch-size", type=int, default=0, help="batch size (default: the config's, 16)")
    p.add_argument("--depths", default=None, help="comma-separated depths K (default 5,10,20,40)")
    p.add_argument("--methods", default=",".join(METHODS), help="subset of " + ", ".join(METHODS))
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2)")
    p.add_argument("--epoch", action="store_true", help="time one whole pass over the training split")
    p.add_argument(
        "--epoch-images",
        type=int,
        default=0,
        help="images per epoch for the extrapolated epoch (default: the shipped config's n_train, 2000)",
    )
    p.add_argument(
        "--lipschitz",
        default=None,
        metavar="RULE",
        help="the F-FPN's model.lipschitz rule after each step, e.g. reference, none (default: the "
        "config's, reference); the config checks the name",
    )
    p.add_argument(
        "--adjoint-tol",
        type=float,
        default=None,
        help="IFT: relative tolerance of the Anderson adjoint (1e-6)",
    )
    p.add_argument("--adjoint-max-iter", type=int, default=None, help="IFT: cap of the adjoint solve (100)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: the config's run.threads)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="train.seed: initial weights and batch order")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 32×32 images, 12 angles, 4 channels, batch 4, 8 images, depths 2,4,8, "
        "1 warm-up and 2 timed rounds (options given explicitly win)",
    )
    p.add_argument("--json", default=str(RESULTS / "ct_backward.json"), help="JSON output ('' for none)")
    args = p.parse_args(argv)
    # what the user did not set: the defaults, or the tiny ones of --quick
    defaults = {"train_images": 256, "depths": "5,10,20,40", "warmup": 2, "repeats": 10}
    if args.quick:
        defaults = {"train_images": 8, "depths": "2,4,8", "warmup": 1, "repeats": 2}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    methods = choose(args.methods, METHODS, "method")
    depths = [int(k) for k in args.depths.split(",") if k.strip()]
    if not depths or min(depths) < 1:
        raise SystemExit(f"--depths must be positive integers, got {args.depths!r}")
    if args.repeats < 1 or args.warmup < 0 or args.train_images < 1:
        raise SystemExit("--repeats must be >= 1, --warmup >= 0 and --train-images >= 1")
    threads = args.threads or load_config(args.config).run.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    load_start = machine_load()
    cores = environment(device)["cores"]
    notes = [w for w in [busy_warning(load_start, cores, "at the start")] if w]
    for w in notes:
        print(f"warning: {w}", file=sys.stderr, flush=True)

    t_setup = time.perf_counter()
    try:
        batches, data = load_batches(args, device)
        trainers = [Trainer(m, k, args, batches, device) for k in depths for m in methods]
    except ConfigError as exc:
        raise SystemExit(f"ct_backward.py: {exc}") from None
    setup_s = time.perf_counter() - t_setup
    for _ in range(args.warmup):
        for tr in trainers:
            tr.step(timed=False)
    for tr in trainers:
        tr.measure_memory()
    rounds = len(batches) if args.epoch else args.repeats
    t_timed = time.perf_counter()
    for _ in range(rounds):
        for tr in trainers:
            tr.step(timed=True)
    timed_s = time.perf_counter() - t_timed

    epoch_images = args.epoch_images or data["shipped_n_train"]
    epoch_steps = math.ceil(epoch_images / data["batch_size"])
    rows = [tr.row(epoch_steps, args.epoch) for tr in trainers]
    load_end = machine_load()
    end_warning = busy_warning(load_end, cores, "at the end")
    if end_warning:
        print(f"warning: {end_warning}", file=sys.stderr, flush=True)
        notes.append(end_warning)
    short = [r for r in rows if r["solve_evaluations"] is not None and r["solve_evaluations"] < r["depth"]]
    if short:
        notes.append(
            "the forward solve stopped before K (every sample reached an exact float fixed point) for: "
            + ", ".join(f"{r['method']} K={r['depth']} ({r['solve_evaluations']} evaluations)" for r in short)
        )

    partial = [r for r in rows if r["mean_depth"] < r["depth"]]
    if partial:
        notes.append(
            "some samples froze at an exact float fixed point (residual 0) before K, so the mean depth per "
            "sample is below K (the batch still ran K evaluations) for: "
            + ", ".join(f"{r['method']} K={r['depth']} (mean {r['mean_depth']:.2f})" for r in partial)
        )
    missed = [r for r in rows if r["method"] == "ift" and r["adjoint_misses"]]
    if missed:
        notes.append(
            "IFT's adjoint solve missed its tolerance (so ran to its cap) in "
            + ", ".join(
                f"{r['adjoint_misses']}/{r['timed_steps']} steps at K={r['depth']} (largest residual "
                f"{fmt(r['adjoint_missed_residual_min'], '.2e')}–{fmt(r['adjoint_missed_residual_max'], '.2e')})"
                for r in missed
            )
            + ": its step time is that of the cap (--adjoint-tol, --adjoint-max-iter)"
        )

    env = environment(device)
    cuda = device.type == "cuda"
    text = table(rows, cuda, args.epoch)
    title = (
        f"CT F-FPN ({data['config']}, paper-form R_Θ, {rows[0]['parameters']} parameters), "
        f"{data['image_size']}×{data['image_size']}, {data['angles']} angles, batch {data['batch_size']}, "
        f"{data['train_images']} training images; {env['cpu']}, {threads} thread(s), torch {env['torch']}, "
        f"commit {env['commit']}"
    )
    print(title + "\n")
    print(text)
    print(
        f"\ns / epoch (extrap.) = median step × {epoch_steps} steps (ceil({epoch_images} / "
        f"{data['batch_size']})); load average (1/5/15 min) at start {load_start['loadavg']}, "
        f"at end {load_end['loadavg']}; setup {setup_s:.1f} s, timed rounds {timed_s:.1f} s"
    )
    for n in notes:
        print("\nNote: " + n)
    result: dict[str, Any] = {
        "command": command_line(),
        "commit": git_commit(),
        "args": vars(args),
        "hardware": {**env, "threads": threads},
        "load": {"start": load_start, "end": load_end},
        "data": data,
        "epoch_images": epoch_images,
        "epoch_steps": epoch_steps,
        "setup_s": setup_s,
        "timed_s": timed_s,
        "rows": rows,
        "notes": notes,
        "table": text,
        "title": title,
    }
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
