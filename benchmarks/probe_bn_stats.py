"""Does the reference's Lipschitz probe explain its faster eval-mode solve? (issue 11)

The reference implementation evaluates R twice in training mode on noise-perturbed inputs at every
training step (its ``normalize_lip_const``), which updates the latent BatchNorm running statistics;
fpnets restores them after its probe. This trains the paper's MNIST network (2 blocks, γ 0.5,
shipped ``configs/mnist.toml``) for ``--steps`` steps twice from the same seed and batches, once
with fpnets' probe and once with a probe that keeps the statistics updates, and evaluates both on
the test set in eval mode: accuracy, mean forward iterations per sample, time of the pass, and the
mean running variance of each latent BatchNorm.

    python benchmarks/probe_bn_stats.py --data-dir ../shared/data/mnist --steps 300 --json OUT
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from fpnets.layers import reference_rescale_
from fpnets.train import evaluate, load_config, train_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config("mnist", ["model.latent_blocks=2", "model.gamma=0.5"])
    task = cfg.make_task()
    splits = task.load_splits(args.data_dir)
    out: dict = {"steps": args.steps, "threads": args.threads, "torch": torch.__version__}
    for keep in (False, True):
        torch.manual_seed(0)
        model = task.build_model()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        loader = task.loader(splits.train, train=True)
        loader.set_epoch(0)

        def hook(model=model, keep=keep) -> None:
            if not keep:
                model.after_optimizer_step()  # fpnets: statistics restored after the probe
                return
            u, x = model._rescale_point
            model._rescale_point = None
            op = model.operator
            with torch.no_grad():  # as the reference: R in training mode, statistics updated
                reference_rescale_(op, u, x, op.gamma, op.rescalable_parameters(), op.num_blocks)

        model.train()
        for b, (x, y) in enumerate(loader):
            if b == args.steps:
                break
            train_step(model, x, y, F.cross_entropy, opt, after_step=hook)
        t = time.perf_counter()
        stats = evaluate(task, model, task.loader(splits.test, train=False))
        stats["eval_s"] = time.perf_counter() - t
        bns = [m for m in model.operator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        stats["mean_running_var"] = [float(m.running_var.mean()) for m in bns]
        name = "probe keeps BN statistics (reference)" if keep else "statistics restored (fpnets)"
        out[name] = stats
        print(f"{name}: test acc {100 * stats['acc']:.2f}%, iterations {stats['iters']:.2f}, "
              f"eval {stats['eval_s']:.2f} s, running var {stats['mean_running_var']}", flush=True)  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
