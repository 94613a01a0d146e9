"""Time per training step of the MNIST FPN, from a straight port of the reference to fpnets' fast path.

Every configuration trains its own copy of the same network (same initial weights, same batches,
batch 100, Adam 2e-4, tolerance 0.1 on the reference's stopping norm, at most 50 iterations) and
the configurations take turns step by step, so load on the machine spreads evenly over them; each
figure is a median over ``--steps`` timed steps after ``--warmup`` steps. The configurations add
one change at a time:

- ``reference-procedure``: the reference implementation's training step re-enacted in plain PyTorch
  on the same modules (no fpnets solve): NCHW tensors, the encoder Q computed twice (once without
  a graph for the solve, once with one), fixed-point iteration stopped on the largest channel-norm
  residual of the batch, one more application of R with a graph (JFB), and the Lipschitz probe
  (two more applications of R) after every step. This is the baseline the ratios are taken to.
- ``port``: the same algorithm through fpnets (``fpnets.train.train_step``): NCHW tensors, probe
  after every step, encoder once.
- ``channels_last``: NHWC memory layout (oneDNN convolutions about 2× faster on this CPU).
- ``probe/25``: the Lipschitz probe every 25 steps; a probe that does not rescale leaves training
  bitwise unchanged (tests/test_models.py), and on MNIST it does not rescale (column ``rescales``).
- ``compiled``: the graph-free forward iterations through ``torch.compile``.
- ``anderson``: Anderson acceleration (m=5) instead of Picard.

With ``--trajectory-steps N`` each configuration is then trained N steps more (sequentially) and
its validation accuracy recorded every N/5 steps, to show the accuracy trajectory is unchanged.
With ``--profile N`` each configuration's next N steps run under ``torch.profiler`` (the operators
that took the most CPU time are printed), and one application of R on a training batch is timed
eagerly without a graph, eagerly with one, and through ``torch.compile`` without one.

    python benchmarks/train_step.py --data-dir ../shared/data/mnist --blocks 1 --gamma 0.9
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

from fpnets.data import BatchLoader, load_splits
from fpnets.models import build_model
from fpnets.train import train_step

from common import RESULTS, alternate, choose, command_line, environment, markdown_table, median, write_json

CONFIGS: dict[str, dict[str, Any]] = {
    "reference-procedure": {"channels_last": False, "lipschitz_every": 1, "procedure": True},
    "port": {"channels_last": False, "lipschitz_every": 1},
    "channels_last": {"channels_last": True, "lipschitz_every": 1},
    "probe/25": {"channels_last": True, "lipschitz_every": 25},
    "compiled": {"channels_last": True, "lipschitz_every": 25, "compile": True},
    "anderson": {"channels_last": True, "lipschitz_every": 25, "compile": True, "solver": "anderson"},
}


class Trainer:
    """One configuration: model, optimizer, and an endless stream of training batches."""

    def __init__(self, name: str, cfg: dict[str, Any], args: argparse.Namespace, splits: Any) -> None:
        torch.manual_seed(args.seed)
        opts: dict[str, Any] = {"latent_blocks": args.blocks, "gamma": args.gamma}
        opts["lipschitz_every"] = cfg["lipschitz_every"]
        opts["compile"] = cfg.get("compile", False)
        if "solver" in cfg:
            opts["solver"] = {"name": cfg["solver"]}
        self.name = name
        self.model = build_model("mnist", args.variant, **opts)
        if cfg["channels_last"]:
            self.model.channels_last_()
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=2e-4, weight_decay=1e-6)
        self.loader = BatchLoader(
            splits.train, batch_size=100, shuffle=True, seed=args.seed, normalize=splits.info
        )
        self.epoch = 0
        self.batches = iter(self.loader)
        self.depths: list[float] = []
        self.procedure = bool(cfg.get("procedure", False))

    def reference_step(self, d: torch.Tensor, y: torch.Tensor) -> None:
        """One training step as the reference implementation does it, on the same modules."""
        m, op = self.model, self.model.operator
        with torch.no_grad():
            q = m.encoder(d)  # Q(d) for the solve (no graph)
            u = torch.zeros_like(q)
            depth, res = 0, float("inf")
            while res > 0.1 and depth < 50:  # stop on the batch's largest channel-norm residual
                ru = op(u, q)
                res = float(torch.linalg.vector_norm(ru - u, dim=1).max())
                u = ru
                depth += 1
        q = m.encoder(d)  # Q(d) again, with a graph
        logits = m.readout(op(u, q))  # JFB: one application of R at the detached fixed point
        loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():  # Lipschitz probe: two more applications of R, rescale if ρ > γ
            du, dq = torch.randn_like(u), torch.randn_like(q)
            q2 = q.detach() + dq
            delta = op(u + du, q2) - op(u, q2)
            ratio = float(
                torch.linalg.vector_norm(delta, dim=1).mean() / torch.linalg.vector_norm(du, dim=1).mean()
            )
            if ratio > op.gamma:
                factor = (op.gamma / ratio) ** (1.0 / op.num_blocks)
                for p in op.rescalable_parameters():
                    p.mul_(factor)
                self.model.rescales += 1
        self.depths.append(float(depth))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self.batches)
        except StopIteration:
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            self.batches = iter(self.loader)
            return next(self.batches)

    def step(self) -> None:
        x, y = self.next_batch()
        if self.procedure:
            self.reference_step(x, y)
            return
        train_step(self.model, x, y, F.cross_entropy, self.opt, after_step=self.model.after_optimizer_step)
        if self.model.solution is not None:
            self.depths.append(float(self.model.solution.iterations.float().mean()))

    @torch.no_grad()
    def val_accuracy(self, loader: BatchLoader) -> float:
        self.model.eval()
        correct = total = 0
        for x, y in loader:
            correct += int((self.model(x).argmax(1) == y).sum())
            total += y.numel()
        self.model.train()
        return 100.0 * correct / total


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    p.add_argument("--blocks", type=int, default=1, help="latent blocks (reference checkpoint: 1; paper: 2)")
    p.add_argument("--gamma", type=float, default=0.9)
    p.add_argument("--variant", default="fpn")
    p.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS)
    )
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--trajectory-steps", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--profile", type=int, default=0, help="profile this many steps per config")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(RESULTS / "train_step.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = choose(args.configs, list(CONFIGS), "config")
    env = environment()
    splits = load_splits("mnist", args.data_dir)
    trainers = {n: Trainer(n, CONFIGS[n], args, splits) for n in names}
    for t in trainers.values():
        for _ in range(args.warmup):
            t.step()
        t.depths.clear()
    times = alternate({n: t.step for n, t in trainers.items()}, args.steps)
    base = median(times[names[0]])
    rows, out_rows = [], []
    for n in names:
        t = trainers[n]
        ms = 1e3 * median(times[n])
        depth = sum(t.depths) / max(len(t.depths), 1)
        rows.append(
            [
                n,
                f"{ms:.1f}",
                f"{base / median(times[n]):.2f}×",
                f"{depth:.2f}",
                t.model.rescales,
            ]
        )
        out_rows.append(
            {
                "config": n,
                "settings": CONFIGS[n],
                "median_ms": ms,
                "all_ms": [1e3 * s for s in times[n]],
                "mean_depth": depth,
                "speedup_vs_port": base / median(times[n]),
                "rescales": t.model.rescales,
            }
        )
    header = [
        "config",
        "ms / step",
        f"× vs {names[0]}",
        "mean depth",
        "rescales",
    ]
    table = markdown_table(header, rows)
    result: dict[str, Any] = {"command": command_line(), "args": vars(args), "env": env, "rows": out_rows}
    print(
        f"MNIST FPN ({args.blocks} latent block(s), γ={args.gamma}), batch 100, {args.steps} alternating steps "
        f"after {args.warmup} warm-up; {env['cpu']}, {env['threads']} threads, torch {env['torch']}, "
        f"commit {env['commit']}, load {env['loadavg_at_start']:.2f}\n"
    )
    print(table)
    if args.trajectory_steps:
        val = BatchLoader(splits.val, batch_size=1000, normalize=splits.info)
        every = max(args.trajectory_steps // 5, 1)
        traj: dict[str, list[tuple[int, float]]] = {}
        for n, t in trainers.items():
            traj[n] = []
            for s in range(1, args.trajectory_steps + 1):
                t.step()
                if s % every == 0:
                    traj[n].append((s, t.val_accuracy(val)))
        steps = [s for s, _ in next(iter(traj.values()))]
        trows = [[n, *[f"{a:.2f}" for _, a in traj[n]], trainers[n].model.rescales] for n in names]
        offset = args.warmup + args.steps
        print(
            "\nValidation accuracy (%) after more training steps (counted after the timed ones, "
            f"{offset} steps in):\n"
        )
        print(markdown_table(["config", *[f"+{s}" for s in steps], "rescales"], trows))
        result["trajectory"] = traj
    if args.profile:
        result["profile"] = {n: profile(t, args.profile) for n, t in trainers.items()}
    write_json(args.json, result)
    return result


def profile(t: Trainer, steps: int) -> dict[str, Any]:
    """torch.profiler over ``steps`` training steps, and the cost of one application of R."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            t.step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    top = [
        [
            e.key,
            f"{e.self_cpu_time_total / 1e3 / steps:.2f}",
            f"{100 * e.self_cpu_time_total / total:.1f}%",
            f"{e.count / steps:.1f}",
        ]
        for e in events[:12]
    ]
    print(
        f"\n{t.name}: torch.profiler over {steps} steps, {total / 1e3 / steps:.1f} ms of CPU time per step\n"
    )
    print(markdown_table(["operator", "self ms / step", "share", "calls / step"], top))

    m, op = t.model, t.model.operator
    x, _ = t.next_batch()
    x = x.contiguous(memory_format=m.memory_format)
    with torch.no_grad():
        q = m.encoder(x)
        u = torch.zeros_like(q)
        for _ in range(5):
            u = op(u, q)
    compiled = torch.compile(op)

    def eager() -> None:
        with torch.no_grad():
            op(u, q)

    def graph() -> None:
        with torch.enable_grad():
            op(u.detach().clone(), q)

    def fused() -> None:
        with torch.no_grad():
            compiled(u, q)

    for fn in (eager, graph, fused):  # warm-up (and compilation)
        for _ in range(3):
            fn()
    times = alternate({"eager, no graph": eager, "eager, graph": graph, "compiled, no graph": fused}, 40)
    cost = {k: 1e3 * median(v) for k, v in times.items()}
    print("\none application of R: " + ", ".join(f"{k} {v:.2f} ms" for k, v in cost.items()))
    return {"top": top, "cpu_ms_per_step": total / 1e3 / steps, "r_application_ms": cost}


if __name__ == "__main__":
    main()
