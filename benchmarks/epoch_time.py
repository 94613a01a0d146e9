"""Seconds per training epoch of the paper's SVHN and CIFAR-10 networks: JFB vs Jacobian-based vs explicit.

The JFB paper's Table 2 (one TITAN X) reports the average time per training epoch of JFB and of
the Jacobian-based baseline: MNIST 17.6 vs 28.4 s (1.6×), SVHN 36.9 vs 92.8 s (2.5×), CIFAR-10
146.6 vs 530.9 s (3.6×). This script measures the same quantity for fpnets' models:

- every model × variant is built from its bundled training config (``fpnets.train.load_config``
  with ``model.variant`` = fpn / jacobian / explicit, then ``cfg.make_task().build_model()``): the
  paper's forward tolerance and depth cap (CIFAR-10: JFB 0.1 / 50, Jacobian-based 1e-4 / 500 with
  CG on the normal equations to 1e-4 / 500; SVHN: 1e-4 / 200 for both; MNIST 0.1 / 50), latent
  BatchNorm for JFB and explicit, none for the Jacobian-based network, the reference Lipschitz
  rule after every step, Adam with the config's learning rate and weight decay, batch 100;
- the data are SYNTHETIC: random images of the right shape (pixels 0.5 + 0.25·N(0, 1) clipped to
  [0, 1], stored as uint8 on the host and moved to the device every step, as the training loader
  does), random labels, a fixed seed. Accuracy is meaningless; only time is measured. CIFAR-10
  batches get the paper's augmentation (flip, padded crop, random erasing) on the fly, then every
  batch is normalised with the dataset's mean / std, as in training;
- a step is what the training loop does per batch: host-to-device copy, augmentation,
  normalisation, then ``fpnets.train.train_step`` (forward, cross-entropy, backward, Adam step,
  Lipschitz rule; under ``--amp fp16`` the same with a gradient scaler). No evaluation pass;
- the variants of a model take turns step by step (``--warmup`` untimed steps each, then
  ``--steps`` timed rounds), so load on the machine spreads evenly over them; CUDA is synchronised
  around every timed step. ``--budget`` stops a model's rounds early once its warm-up + timing
  has used that many seconds (at least 2 timed rounds are kept); the table says how many steps
  were timed.

Seconds per epoch are EXTRAPOLATED: median step time × steps per epoch, where an epoch is
ceil(N / batch) steps with N = ``--epoch-samples`` or the paper's training-set size (SVHN 73,257,
CIFAR-10 50,000, MNIST 60,000). The ratio column is variant / JFB (Jacobian-based / JFB is the
paper's 1.6× / 2.5× / 3.6×). After timing, one untimed step per implicit variant counts the
Jacobian products of its backward pass (calls of ``torch.autograd.grad``: each is one batched
vector–Jacobian or Jacobian–vector product over the whole batch; JFB needs none; the paper's
𝒥 mat-vec column may count differently). The paper's seconds are from a TITAN X: compare ratios.
``--reduced`` (batch 8, 2 steps after 1 warm-up, forward and CG capped at 3 iterations, 1 thread)
only checks that everything runs; ``--amp [bf16|fp16]`` times under autocast (CUDA only).

    python benchmarks/epoch_time.py --device cuda --steps 30 --warmup 10
    python benchmarks/epoch_time.py --reduced --device cpu --json /tmp/epoch_time.json   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fpnets.data import cifar_augment, dataset_info
from fpnets.tasks.classification import AUGMENTS
from fpnets.train import load_config, train_step

from common import (
    RESULTS,
    GradCallCounter,
    choose,
    command_line,
    environment,
    markdown_table,
    median,
    sync,
    write_json,
)

MODELS: dict[str, dict[str, Any]] = {
    # config: bundled training config; samples: training images per epoch in the paper
    "svhn": {"config": "svhn", "samples": 73_257},
    "cifar10": {"config": "cifar10", "samples": 50_000},
    "cifar10-unaugmented": {"config": "cifar10-unaugmented", "samples": 50_000},
    "mnist": {"config": "mnist", "samples": 60_000},
}
VARIANTS = ("fpn", "jacobian", "explicit")
"""Values of the classification task's ``model.variant`` timed here."""
LABELS = {"fpn": "JFB", "jacobian": "Jacobian-based", "explicit": "explicit"}
PAPER_S_PER_EPOCH = {  # Table 2, one TITAN X
    "mnist": {"jacobian": 28.4, "fpn": 17.6},
    "svhn": {"jacobian": 92.8, "fpn": 36.9},
    "cifar10": {"jacobian": 530.9, "fpn": 146.6},
}
REDUCED = {"batch": 8, "steps": 2, "warmup": 1, "max_iter": 3, "pool": 2, "threads": 1}
MIN_TIMED_ROUNDS = 2


class Autocast(nn.Module):
    """``model(x)`` under ``torch.autocast`` on CUDA (bf16 or fp16): the forward pass of an AMP step."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast("cuda", dtype=self.dtype):
            return self.model(x)


class Trainer:
    """One model × variant: network, Adam, and a pool of synthetic batches cycled through."""

    def __init__(self, model_name: str, variant: str, args: argparse.Namespace, device: torch.device) -> None:
        spec = MODELS[model_name]
        overrides = [f"model.variant={variant}"]
        if args.channels_last is not None:
            overrides.append(f"model.channels_last={str(args.channels_last).lower()}")
        cfg = load_config(spec["config"], overrides)
        if args.max_iter:  # --reduced: cap the forward solve and the CG solve
            cfg.solver.max_iter = min(cfg.solver.max_iter or args.max_iter, args.max_iter)
            inner = cfg.backward.options.get("solver")
            if isinstance(inner, dict) and "max_iter" in inner:
                inner["max_iter"] = min(int(inner["max_iter"]), args.max_iter)
        self.model_name, self.variant, self.cfg, self.device = model_name, variant, cfg, device
        info = dataset_info(cfg.data.name)
        torch.manual_seed(args.seed)
        self.model = cfg.make_task().build_model().to(device)  # NHWC when model.channels_last
        self.channels_last = cfg.model.channels_last
        self.model.train()
        o = cfg.optim
        self.opt = torch.optim.Adam(
            self.model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay
        )
        preset = AUGMENTS[cfg.data.augment]  # the config checked the name
        self.augment = None if preset is None else cifar_augment(preset)
        self.mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
        self.amp = args.amp
        self.amp_dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16
        # the forward pass under autocast with --amp; the loss too (cross_entropy then runs in float32)
        self.forward_model: nn.Module = Autocast(self.model, self.amp_dtype) if args.amp else self.model
        self.scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
        # synthetic data: the same images and labels for every variant of a model
        gen = torch.Generator().manual_seed(args.seed)
        shape = (args.pool, args.batch, info.in_channels, *info.image_size)
        pixels = (0.5 + 0.25 * torch.randn(shape, generator=gen)).clamp_(0.0, 1.0)
        self.images = pixels.mul_(255.0).round_().to(torch.uint8)  # (P, B, C, H, W) on the host
        self.labels = torch.randint(0, info.num_classes, (args.pool, args.batch), generator=gen)
        if device.type == "cuda":
            self.images, self.labels = self.images.pin_memory(), self.labels.pin_memory()
        self.seed = args.seed
        self.steps = 0
        self.depths: list[torch.Tensor] = []
        self.converged: list[torch.Tensor] = []
        self.matvecs: int | None = None

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.steps % self.images.shape[0]
        x = self.images[i].to(self.device, non_blocking=True).float().div_(255.0)
        y = self.labels[i].to(self.device, non_blocking=True)
        if self.augment is not None:  # a CPU generator per batch, as BatchLoader does
            x = self.augment(x, torch.Generator().manual_seed(self.seed * 1_000_003 + self.steps))
        return (x - self.mean) / self.std, y

    def criterion(self, output: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy ℓ (under autocast with ``--amp``, as the forward pass)."""
        ctx = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp else contextlib.nullcontext()
        with ctx:
            return F.cross_entropy(output, target)

    def step(self) -> None:
        x, y = self.batch()
        if self.scaler is None:
            train_step(
                self.forward_model, x, y, self.criterion, self.opt, after_step=self.model.after_optimizer_step
            )
        else:  # fp16: the loss scaled for backward, the optimizer stepped through the scaler
            self.opt.zero_grad(set_to_none=True)
            loss = self.criterion(self.forward_model(x), y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.model.after_optimizer_step()
        sol = self.model.solution
        if sol is not None:  # kept on the device: no extra synchronisation inside the timed step
            self.depths.append(sol.iterations.float().mean())
            self.converged.append(sol.converged.float().mean())
        self.steps += 1

    def count_matvecs(self) -> int:
        """Jacobian products in one backward pass (untimed; gradients discarded, no update).

        Not a training step: the backward pass alone is counted, and the weights stay as they are.
        """
        x, y = self.batch()
        loss = self.criterion(self.forward_model(x), y)
        self.opt.zero_grad(set_to_none=True)
        with GradCallCounter() as grads:  # calls of torch.autograd.grad: one product each
            loss.backward()
        self.opt.zero_grad(set_to_none=True)
        self.model._rescale_point = None  # this forward is not followed by an optimizer step
        self.steps += 1
        return grads.calls

    def settings(self) -> dict[str, Any]:
        c = self.cfg
        inner = c.backward.options.get("solver") if isinstance(c.backward.options, dict) else None
        return {
            "config": MODELS[self.model_name]["config"],
            "tol": c.solver.tol,
            "max_iter": c.solver.max_iter,
            "backward": "none (explicit)" if self.variant == "explicit" else c.backward.name,
            "cg": inner if self.variant == "jacobian" else None,
            "lr": c.optim.lr,
            "weight_decay": c.optim.weight_decay,
            "augment": c.data.augment,
            "channels_last": self.channels_last,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }


def time_model(model_name: str, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    trainers = {v: Trainer(model_name, v, args, device) for v in args.variant_list}
    start = time.perf_counter()

    def over_budget() -> bool:
        return bool(args.budget) and time.perf_counter() - start > args.budget

    warm = 0
    for _ in range(args.warmup):  # warm-up rounds: at least one, then until half the budget is gone
        if warm and args.budget and time.perf_counter() - start > args.budget / 2:
            break
        for t in trainers.values():
            t.step()
        warm += 1
    sync(device)
    for t in trainers.values():
        t.depths.clear()
        t.converged.clear()
    times: dict[str, list[float]] = {v: [] for v in trainers}
    budget_hit = False
    for r in range(args.steps):
        if r >= MIN_TIMED_ROUNDS and over_budget():
            budget_hit = True
            break
        for v, t in trainers.items():
            sync(device)
            t0 = time.perf_counter()
            t.step()
            sync(device)
            times[v].append(time.perf_counter() - t0)
    for t in trainers.values():
        if t.variant != "explicit":
            t.matvecs = t.count_matvecs()
    samples = args.epoch_samples or MODELS[model_name]["samples"]
    steps_per_epoch = math.ceil(samples / args.batch)
    base = median(times["fpn"]) if "fpn" in times else None
    rows = []
    for v, t in trainers.items():
        med = median(times[v])
        mean = sum(times[v]) / len(times[v])
        depth = float(torch.stack(t.depths).mean()) if t.depths else None
        paper = PAPER_S_PER_EPOCH.get(model_name, {})
        rows.append(
            {
                "model": model_name,
                "variant": v,
                "method": LABELS[v],
                **t.settings(),
                "batch": args.batch,
                "warmup_steps": warm,
                "timed_steps": len(times[v]),
                "budget_hit": budget_hit,
                "median_step_s": med,
                "mean_step_s": mean,
                "all_step_s": times[v],
                "epoch_samples": samples,
                "steps_per_epoch": steps_per_epoch,
                "fraction_of_epoch_timed": len(times[v]) / steps_per_epoch,
                "s_per_epoch_extrapolated": med * steps_per_epoch,
                "s_per_epoch_extrapolated_from_mean": mean * steps_per_epoch,
                "ratio_vs_jfb": med / base if base else None,
                "mean_forward_depth": depth,
                "max_forward_depth": float(torch.stack(t.depths).max()) if t.depths else None,
                "converged_fraction": float(torch.stack(t.converged).mean()) if t.converged else None,
                "jacobian_products_per_step": t.matvecs,
                "jacobian_products_per_epoch_extrapolated": (
                    None if t.matvecs is None else t.matvecs * steps_per_epoch
                ),
                "paper_s_per_epoch": paper.get(v),
                "paper_ratio_vs_jfb": (paper[v] / paper["fpn"] if v in paper and "fpn" in paper else None),
            }
        )
    return rows


def fmt(x: float | None, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def table(rows: list[dict[str, Any]]) -> str:
    header = [
        "model",
        "method",
        "tol / max depth",
        "ms / step (median)",
        "s / epoch (extrapolated)",
        "× JFB",
        "paper s / epoch",
        "paper × JFB",
        "mean depth",
        "𝒥 products / step",
        "steps timed",
    ]
    out = []
    for r in rows:
        solve = "–" if r["variant"] == "explicit" else f"{r['tol']:g} / {r['max_iter']}"
        if r["cg"]:
            solve += f" (CG {r['cg'].get('tol', '?'):g} / {r['cg'].get('max_iter', '?')})"
        out.append(
            [
                r["model"],
                r["method"],
                solve,
                f"{1e3 * r['median_step_s']:.1f}",
                f"{r['s_per_epoch_extrapolated']:.1f}",
                fmt(r["ratio_vs_jfb"], ".2f") + ("×" if r["ratio_vs_jfb"] else ""),
                fmt(r["paper_s_per_epoch"], ".1f"),
                fmt(r["paper_ratio_vs_jfb"], ".2f") + ("×" if r["paper_ratio_vs_jfb"] else ""),
                fmt(r["mean_forward_depth"], ".1f"),
                fmt(r["jacobian_products_per_step"], "d"),
                f"{r['timed_steps']}" + (" (budget)" if r["budget_hit"] else ""),
            ]
        )
    return markdown_table(header, out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--models", default="svhn,cifar10", help="comma-separated subset of " + ", ".join(MODELS))
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS)
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 30)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per variant first (default 10)")
    p.add_argument(
        "--samples", type=int, default=0, help="time this many samples (ceil(samples / batch) steps)"
    )
    p.add_argument(
        "--epoch-samples", type=int, default=0, help="samples per epoch (default: the paper's training set)"
    )
    p.add_argument("--batch", type=int, default=None, help="batch size (default 100, the paper's)")
    p.add_argument(
        "--budget", type=float, default=0.0, help="seconds per model for warm-up + timing; 0: none"
    )
    p.add_argument(
        "--reduced",
        action="store_true",
        help=f"tiny smoke run: batch {REDUCED['batch']}, {REDUCED['steps']} steps after {REDUCED['warmup']} "
        f"warm-up, forward and CG capped at {REDUCED['max_iter']} iterations, {REDUCED['threads']} thread",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC models (default: the config's model.channels_last, on, as in training)",
    )
    p.add_argument(
        "--amp", nargs="?", const="bf16", choices=["bf16", "fp16"], default=None, help="autocast (CUDA only)"
    )
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(RESULTS / "epoch_time.json"), help="output JSON ('' for none)")
    args = p.parse_args(argv)
    args.batch = args.batch or (REDUCED["batch"] if args.reduced else 100)
    args.steps = args.steps or (REDUCED["steps"] if args.reduced else 30)
    if args.samples:
        args.steps = math.ceil(args.samples / args.batch)
    args.warmup = args.warmup if args.warmup is not None else (REDUCED["warmup"] if args.reduced else 10)
    args.max_iter = REDUCED["max_iter"] if args.reduced else 0
    if args.reduced and not args.threads:  # robust on busy cores
        args.threads = REDUCED["threads"]
    args.pool = REDUCED["pool"] if args.reduced else min(args.steps + args.warmup, 16)
    args.model_list = choose(args.models, MODELS, "model")
    args.variant_list = choose(args.variants, VARIANTS, "variant")
    if min(args.steps, args.batch) < 1 or args.warmup < 0:
        p.error("--steps and --batch must be positive, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    if args.amp and device.type != "cuda":
        raise SystemExit("--amp: autocast is supported on CUDA only")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    env = environment(device)
    rows: list[dict[str, Any]] = []
    for model_name in args.model_list:
        rows += time_model(model_name, args, device)
    where = env.get("gpu") or f"{env['cpu']}, {env['threads']} threads"
    print(
        f"Seconds per training epoch on SYNTHETIC data (random images and labels, seed {args.seed}: "
        "accuracy is meaningless, only time is measured); batch "
        f"{args.batch}, variants alternating step by step, {args.warmup} warm-up step(s) each, up to "
        f"{args.steps} timed; s / epoch is EXTRAPOLATED = median step time × ceil(N / batch) steps "
        "(N: SVHN 73,257, CIFAR-10 50,000, MNIST 60,000 unless --epoch-samples); training steps only, no "
        f"evaluation pass. {where}, torch {env['torch']}, commit {env['commit']}"
        + (f", AMP {args.amp}" if args.amp else "")
        + (", REDUCED smoke settings (forward/CG capped)" if args.reduced else "")
        + ". Paper (Table 2): one TITAN X.\n"
    )
    print(table(rows))
    result: dict[str, Any] = {
        "command": command_line(),
        "args": vars(args),
        "env": env,
        "synthetic_data": True,
        "extrapolated": True,
        "rows": rows,
    }
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
