"""Jacobian regularisation (Bai, Koltun, Kolter 2021) on MNIST through ``fpnets train``: its effect on
forward iterations, time per step and accuracy, against no regularisation, side by side.

Each row is exactly ``fpnets train mnist`` (the shipped ``configs/mnist.toml``, the paper's network:
2 latent blocks, γ 0.5) with ``train.jacobian_weight = λ`` (and ``train.jacobian_probes``,
``train.jacobian_every``), for ``--epochs`` epochs from the same seed on the same data: the loss
is ℓ + λ · ‖∂R/∂u (u*)‖²_F / n, the Frobenius norm estimated by Hutchinson's estimator with
``probes`` Gaussian vectors at the fixed point of each training forward
(:meth:`fpnets.models.FixedPointNetwork.jacobian_penalty`). Reported per λ: forward iterations
per sample (training, the last epoch's mean; validation and test in eval mode), ms per training
step (the trainer's training time of the last epoch per batch of 100, validation excluded), validation accuracy after
each epoch, test accuracy of the validation-selected checkpoint. The runs go one after the other,
in the order of ``--weights`` and then again in reverse when ``--rounds 2`` (each round trains
every λ from scratch; the table gives the median of the rounds' ms/step, and the accuracies and
iterations of the first round, which are identical in the second: runs are deterministic).

    python benchmarks/jacobian_reg.py --data-dir ../shared/data/mnist --weights 0 0.1 1 10 --epochs 1 \\
        --json benchmarks/results/jacobian_reg.json

Timings are meaningful only on an otherwise idle machine (the load average is recorded).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fpnets.train import load_config, train

from common import (
    busy_warning,
    command_line,
    environment,
    fmt,
    machine_load,
    markdown_table,
    median,
    script_parser,
    write_json,
)


def run_one(weight: float, args: Any, run_dir: Path) -> dict[str, Any]:
    sets = [
        f"train.epochs={args.epochs}",
        f"train.jacobian_weight={weight}",
        f"train.jacobian_probes={args.probes}",
        f"train.jacobian_every={args.every}",
        f"run.threads={args.threads}",
        "run.plots=false",
        "run.tensorboard=false",
        *args.set,
    ]
    if args.limit:
        sets.append(f"data.limit={args.limit}")
    config = load_config("mnist", sets)
    result = train(config, run_dir=run_dir, data_dir=args.data_dir, progress=False)
    last = result.history[-1]
    return {
        "weight": weight,
        "epochs": len(result.history),
        "train_iters": last["train_iters"],
        "val_iters": last["val_iters"],
        "test_iters": result.test["iters"],
        "val_acc_per_epoch": [h["val_acc"] for h in result.history],
        "best_epoch": result.best_epoch,
        "val_acc": result.val["acc"],
        "test_acc": result.test["acc"],
        "train_acc": last["train_acc"],
        "samples_per_s": last["samples_per_s"],
        "ms_per_step": 1000.0 * config.data.batch_size / last["samples_per_s"],
        "epoch_s": last["epoch_s"],  # the last epoch: training and validation
        "rescales": last.get("rescales"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = script_parser(__doc__)
    p.add_argument("--data-dir", required=True, help="MNIST IDX files (as for fpnets train mnist)")
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 1.0, 10.0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--probes", type=int, default=1)
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, choices=[1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="data.limit (smoke tests); 0 = all")
    p.add_argument("--set", action="append", default=[], help="further config overrides")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if any(w < 0 for w in args.weights):
        raise SystemExit("--weights must be >= 0")
    torch.set_num_threads(args.threads)
    cores = os.cpu_count()
    load_start = machine_load()
    notes = [w for w in [busy_warning(load_start, cores, "at the start")] if w]
    rows: dict[float, list[dict[str, Any]]] = {w: [] for w in args.weights}
    with tempfile.TemporaryDirectory() as tmp:
        order = list(args.weights) + (list(reversed(args.weights)) if args.rounds == 2 else [])
        for i, w in enumerate(order):
            rows[w].append(run_one(w, args, Path(tmp) / f"run{i}"))
    load_end = machine_load()
    end = busy_warning(load_end, cores, "at the end")
    if end:
        notes.append(end)
    table = []
    out_rows = []
    for w in args.weights:
        first = rows[w][0]
        ms = median([r["ms_per_step"] for r in rows[w]])
        out_rows.append(
            {**first, "ms_per_step_rounds": [r["ms_per_step"] for r in rows[w]], "ms_per_step": ms}
        )
        table.append(
            [
                fmt(w, "g"),
                fmt(first["train_iters"], ".2f"),
                fmt(first["val_iters"], ".2f"),
                fmt(first["test_iters"], ".2f"),
                fmt(ms, ".1f"),
                " / ".join(f"{100 * a:.2f}" for a in first["val_acc_per_epoch"]),
                f"{100 * first['test_acc']:.2f}",
            ]
        )
    text = markdown_table(
        [
            "λ (train.jacobian_weight)",
            "train iters / sample",
            "val iters / sample (eval)",
            "test iters / sample (eval)",
            "ms / step",
            "val acc % per epoch",
            "test acc % (val-selected)",
        ],
        table,
    )
    print(text)
    for n in notes:
        print("warning: " + n, file=sys.stderr)
    payload = {
        "command": command_line(),
        "environment": environment("cpu"),
        "load_start": load_start,
        "load_end": load_end,
        "warnings": notes,
        "args": vars(args),
        "rows": out_rows,
        "table": text,
    }
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
