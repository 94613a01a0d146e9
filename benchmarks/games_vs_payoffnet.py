"""Contextual matrix games: the N-FPNs (the authors', contractive, model-based) against Payoff-Net.

For each number of actions n, one dataset is generated (contexts d ~ U[0, 1]³, antisymmetric payoff
B(d) with free entries W d, exact QRE targets; see docs/games.md) and every model is trained on it
with the same epochs, Adam, batch size and data order. The learning rate is reduced on plateaus of
the validation MSE (the test split is evaluated once, after the last epoch). Reported per (n, model):
test MSE to the exact QRE, QRE residual and duality gap of the predictions under the true games,
forward iterations, parameters, and training time (wall clock; meaningful only on an idle machine).

The paper (McKenzie et al. 2021, CPU, n = 5…25, 2000 training games, 100 epochs, batch 200) reports
a lower test MSE for the N-FPN than for Payoff-Net at 3–6× less training time for n ≤ 15. The
defaults here are small, to run in a few minutes; the paper's scale is

    python benchmarks/games_vs_payoffnet.py --sizes 5,10,15,20,25 --train 2000 --test 100 --epochs 100 \\
        --batch 200 --data-dir ../shared/data/games --out benchmarks/results/games.json

Models (``--models``): nfpn, contractive, logit (the logit best-response N-FPN), payoff (the model-based N-FPN: Payoff-Net's payoff network
inside F_Θ, so its fixed point is the QRE of B̂(d); warm-started Newton forward, JFB gradient),
payoff-cold (the same, every solve from uniform strategies) and payoffnet. Learning rates default
to the authors' (N-FPN: 1e-2 for n < 25, else 1e-3; Payoff-Net and the payoff N-FPNs, which share
its network: 1e-1); ``--lr`` overrides all. Payoff-Net's hidden width is chosen so its parameter count is closest to the
N-FPN's (``--payoff-hidden 3`` gives the authors' network).

The peer: ``--peer-dir DIR`` (a checkout of github.com/DanielMckenzie/Nash_FPNs, the folder that holds
``matrix-games/``) adds the model ``payoffnet-authors``: the authors' own Payoff-Net (their
``Networks.Payoff_Net``, hidden width 3, with their differentiable solver: a per-game NumPy Newton
method on the KKT system and a per-game linear solve in the backward), imported from that checkout
and trained in the same loop on the same data. Their ``utils`` module imports ``prettytable`` only
to print parameter tables; when that package is absent an empty stand-in module is registered.

Targets (``--targets``): ``qre`` (default) trains and tests on the exact QREs. ``paper-pgd`` replaces
every split's targets by our re-implementation of the authors' generator's mechanism (their
``Generate_Data.py``): projected gradient x ← P_{Δ×Δ}(x − s F(x)) from uniform strategies for all
games at once, s = 5e-5 halved every 100 steps, stopped when the largest change ‖x − x_prev‖ over all
games is below 1e-8 or after 20,000 steps (their F takes log(x + 1e-12): here the library's
``game_gradient`` at x + 1e-12). Those targets are not
QREs; the MSE columns are then to these targets (the paper's metric) and ``test_mse_to_qre`` is the
distance of the same predictions to the exact QREs.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import fpnets
from fpnets.operators.simplex import project_simplex
from fpnets.tasks.games import (
    ContractiveNashFPN,
    GameData,
    GameDataConfig,
    LogitNashFPN,
    NashFPN,
    PayoffNashFPN,
    PayoffNet,
    game_gradient,
    game_metrics,
    load_games,
    mse,
    mse_loss,
    payoff_net_hidden_for,
)

from common import choose, command_line, environment, fmt, markdown_table, script_parser, write_json

MODEL_NAMES = ("nfpn", "contractive", "logit", "payoff", "payoff-cold", "payoffnet", "payoffnet-authors")
"""logit: the N-FPN whose operator is the logit best response of a learned game (a (ρ/2)-contraction,
no zero outputs); payoff: the model-based N-FPN (Payoff-Net's payoff network as F_Θ, JFB, warm-started Newton
forward); payoff-cold: the same without warm starts (every solve from uniform strategies);
payoffnet-authors: the authors' Payoff-Net code, from ``--peer-dir``."""
DEFAULT_MODELS = MODEL_NAMES[:-1]
PAYOFF_NETWORK_MODELS = ("payoffnet", "payoffnet-authors", "payoff", "payoff-cold")
"""The models built on Payoff-Net's payoff network: they train at Payoff-Net's learning rate."""
TARGETS = ("qre", "paper-pgd")


class AuthorsPayoffNet(nn.Module):
    """The authors' ``Networks.Payoff_Net`` (imported from a Nash_FPNs checkout), its (B, 2n) output
    reshaped to our (B, 2, n) profiles. Nothing of theirs is copied into this repository."""

    def __init__(self, net: nn.Module, n: int) -> None:
        super().__init__()
        self.net, self.n = net, n
        self.solution = None  # their solver reports no iteration counts

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return self.net(d).view(-1, 2, self.n)  # (B, 2n) → (B, 2, n)


def authors_payoff_net_class(peer_dir: str | None) -> type[nn.Module]:
    """``Payoff_Net`` from ``<peer_dir>/matrix-games/Networks.py``; a clear exit when it is missing."""
    if peer_dir is None:
        raise SystemExit(
            "payoffnet-authors needs --peer-dir: a checkout of github.com/DanielMckenzie/Nash_FPNs "
            "(the folder that holds matrix-games/)"
        )
    folder = Path(peer_dir) / "matrix-games"
    if not (folder / "Networks.py").is_file():
        raise SystemExit(f"--peer-dir {peer_dir}: no matrix-games/Networks.py there (a Nash_FPNs checkout?)")
    try:
        import prettytable  # noqa: F401  (their utils module imports it to print tables)
    except ImportError:
        sys.modules["prettytable"] = types.SimpleNamespace(PrettyTable=None)  # type: ignore[assignment]
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    try:
        from Networks import Payoff_Net  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SystemExit(
            f"--peer-dir {peer_dir}: importing matrix-games/Networks.py failed ({exc}); "
            "install what it needs or check the checkout"
        ) from None
    return Payoff_Net


def paper_pgd_targets(B: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The authors' generator's mechanism (re-implemented, float64): projected gradient on the
    game gradient from uniform strategies, step 5e-5 halved every 100 steps, stopped when the
    largest ‖x − x_prev‖ over all games is below 1e-8 or after 20,000 steps.

    Args:
        B: (N, n, n) the true payoff matrices of all games (solved together, as theirs are).

    Returns:
        the (N, 2, n) iterates and the number of steps taken.
    """
    n = B.shape[-1]
    x = B.new_full((B.shape[0], 2, n), 1.0 / (2 * n))  # their start: 1/(2n) per entry
    step, k = 5e-5, 0
    while k < 20_000:
        new = project_simplex(x - step * game_gradient(B, x + 1e-12))  # their log(x + 1e-12)
        change = float((new - x).flatten(1).norm(dim=1).max())
        x, k = new, k + 1
        if change < 1e-8:
            break
        if k % 100 == 0:
            step *= 0.5
    return x, k


def with_paper_targets(data: GameData) -> tuple[GameData, dict[str, torch.Tensor], dict[str, Any]]:
    """``data`` with every split's targets replaced by :func:`paper_pgd_targets`; also the exact QREs
    per split and facts about the replacement (steps, mean squared distance to the QREs)."""
    names = ("train", "val", "test")
    splits = [data.split(s) for s in names]
    sizes = [len(s) for s in splits]
    B = data.payoff(torch.cat([s.context for s in splits]).to(torch.float64))
    targets, steps = paper_pgd_targets(B)
    exact = {name: s.target for name, s in zip(names, splits, strict=True)}
    parts = dict(zip(names, targets.split(sizes), strict=True))
    replaced = {
        name: dataclasses.replace(s, target=parts[name]) for name, s in zip(names, splits, strict=True)
    }
    mse_to_qre = {name: float(mse(parts[name], exact[name]).mean()) for name in names if len(parts[name])}
    facts = {"steps": steps, "mse_to_qre": mse_to_qre}
    return dataclasses.replace(data, **replaced), exact, facts


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--sizes must be a comma-separated list of integers, got {text!r}") from None
    if not sizes or any(n < 2 for n in sizes):
        raise SystemExit(f"--sizes must list integers >= 2, got {text!r}")
    return sizes


def build(name: str, n: int, k: int, args: argparse.Namespace) -> nn.Module:
    if name == "payoffnet-authors":
        return AuthorsPayoffNet(authors_payoff_net_class(args.peer_dir)(n, k), n)
    solver = fpnets.Picard(tol=args.fp_tol, max_iter=args.fp_max_iter)
    if name == "nfpn":
        return NashFPN(n, k, solver=solver, warn=False)
    if name in ("contractive", "logit"):
        cls, keys = (ContractiveNashFPN, ("mu", "rho")) if name == "contractive" else (LogitNashFPN, ("rho",))
        opts = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
        return cls(n, k, solver=solver, warn=False, **opts)
    if args.payoff_hidden == "match":
        hidden = payoff_net_hidden_for(sum(p.numel() for p in NashFPN(n, k).parameters()), n, k)
    else:
        hidden = int(args.payoff_hidden)
    if name in ("payoff", "payoff-cold"):
        warm = 0 if name == "payoff-cold" else 100_000
        return PayoffNashFPN(n, k, hidden=hidden, solver=solver, warm_starts=warm, warn=False)
    return PayoffNet(n, k, hidden=hidden)


def learning_rate(name: str, n: int, args: argparse.Namespace) -> float:
    if args.lr is not None:
        return args.lr
    if name in PAYOFF_NETWORK_MODELS:
        return 1e-1
    return 1e-2 if n < 25 else 1e-3


def evaluate(
    model: nn.Module, data: GameData, split: str, batch: int, exact: torch.Tensor | None = None
) -> dict[str, float]:
    """Mean of every metric over a split (float32 model, float64 metrics); with ``exact`` (the
    split's exact QREs when the targets are not), also ``mse_to_qre``."""
    s = data.split(split)
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for i in range(0, len(s), batch):
            d, x = s.context[i : i + batch], s.target[i : i + batch]
            pred = model(d.float())
            sol = getattr(model, "solution", None)
            its = None if sol is None else sol.iterations
            metrics = game_metrics(pred, x, data.payoff(d), its)
            if exact is not None:
                metrics["mse_to_qre"] = mse(pred, exact[i : i + batch])
            for key, v in metrics.items():
                sums[key] = sums.get(key, 0.0) + float(v.sum())
    return {k: v / len(s) for k, v in sums.items()}


def train(model: nn.Module, data: GameData, lr: float, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, "min")
    d_train, x_train = data.train.context.float(), data.train.target.float()
    order = torch.Generator().manual_seed(args.seed)
    history: list[dict[str, float]] = []
    seconds = forward_s = 0.0
    for epoch in range(args.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(data.train), generator=order)
        total, batches = 0.0, 0
        for i in range(0, len(perm), args.batch):
            idx = perm[i : i + args.batch]
            opt.zero_grad(set_to_none=True)
            tf = time.perf_counter()
            loss = mse_loss(model(d_train[idx]), x_train[idx])
            forward_s += time.perf_counter() - tf
            loss.backward()
            opt.step()
            total, batches = total + float(loss.detach()), batches + 1
        seconds += time.perf_counter() - t0
        val = evaluate(model, data, "val", args.eval_batch) if len(data.val) else {}
        if val:
            sched.step(val["mse"])
        row = {"epoch": epoch + 1, "train_loss": total / batches, "lr": opt.param_groups[0]["lr"]}
        row.update({f"val_{k}": v for k, v in val.items()})
        history.append(row)
        if not math.isfinite(row["train_loss"]):
            break
    # forward_s: the forward passes and losses of the training steps (for the QRE models the Newton
    # solves); the rest of train_time_s is backward, optimizer step and batching
    return {"train_time_s": seconds, "forward_s": forward_s, "history": history}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = script_parser(__doc__)
    p.add_argument("--sizes", default="5,10,25,50", help="numbers of actions n (comma-separated)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"subset of {','.join(MODEL_NAMES)}")
    p.add_argument("--peer-dir", default=None, help="a Nash_FPNs checkout, for the model payoffnet-authors")
    p.add_argument("--targets", default="qre", help=f"one of {', '.join(TARGETS)} (see the module docstring)")
    p.add_argument("--train", type=int, default=500, help="training games")
    p.add_argument("--val", type=int, default=100, help="validation games (learning-rate schedule)")
    p.add_argument("--test", type=int, default=200, help="test games")
    p.add_argument("--context-dim", type=int, default=3)
    p.add_argument("--payoff-low", type=float, default=0.0, help="W ~ U[low, high] (the authors: 0)")
    p.add_argument("--payoff-high", type=float, default=10.0, help="(the authors: 10)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--eval-batch", type=int, default=500)
    p.add_argument(
        "--lr", type=float, default=None, help="learning rate for every model (default: the authors')"
    )
    p.add_argument("--fp-tol", type=float, default=1e-5, help="N-FPN forward tolerance (the authors': 1e-5)")
    p.add_argument(
        "--fp-max-iter", type=int, default=100, help="N-FPN forward iteration cap (the authors': 100)"
    )
    p.add_argument(
        "--mu", type=float, default=None, help="μ of the contractive variant (default: the model's)"
    )
    p.add_argument(
        "--rho",
        type=float,
        default=None,
        help="ρ of the contractive and logit variants (default: the models'; logit: ρ -> 0 is a softmax regression)",
    )
    p.add_argument(
        "--payoff-hidden", default="match", help="Payoff-Net hidden width, or 'match' (parameter count)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--data-dir", default=None, help="cache directory for the generated games (default: no cache)"
    )
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    sizes = parse_sizes(args.sizes)
    names = choose(args.models, MODEL_NAMES, "model")
    if args.targets not in TARGETS:
        raise SystemExit(f"--targets must be one of {', '.join(TARGETS)}, got {args.targets!r}")
    if args.payoff_hidden != "match" and not args.payoff_hidden.isdigit():
        raise SystemExit(f"--payoff-hidden must be a positive integer or 'match', got {args.payoff_hidden!r}")
    for name in names:  # fail before any training: a missing --peer-dir, an option a model refuses
        try:
            build(name, sizes[0], args.context_dim, args)
        except ValueError as exc:
            raise SystemExit(f"--models {name}: {exc}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    payload: dict[str, Any] = {"command": command_line(), "environment": environment(), "args": vars(args)}
    for n in sizes:
        cfg = GameDataConfig(
            n,
            args.context_dim,
            n_train=args.train,
            n_val=args.val,
            n_test=args.test,
            seed=args.seed,
            payoff_low=args.payoff_low,
            payoff_high=args.payoff_high,
        )
        t0 = time.perf_counter()
        data = load_games(cfg, args.data_dir)
        exact: dict[str, torch.Tensor] | None = None
        if args.targets == "paper-pgd":
            data, exact, facts = with_paper_targets(data)
            payload.setdefault("paper_targets", {})[str(n)] = facts
        data_s = time.perf_counter() - t0
        for name in names:
            torch.manual_seed(args.seed)
            model = build(name, n, args.context_dim, args)
            lr = learning_rate(name, n, args)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", fpnets.ConvergenceWarning)
                run = train(model, data, lr, args)
                test = evaluate(
                    model, data, "test", args.eval_batch, None if exact is None else exact["test"]
                )
            row = {
                "n": n,
                "model": name,
                "parameters": sum(p.numel() for p in model.parameters()),
                "lr": lr,
                "epochs": len(run["history"]),
                "data_s": data_s,
                "train_time_s": run["train_time_s"],
                "forward_s": run["forward_s"],
                **{f"test_{k}": v for k, v in test.items()},
                "history": run["history"],
            }
            if isinstance(model, (ContractiveNashFPN, LogitNashFPN)):
                row["contraction_bound"] = model.contraction_bound
            rows.append(row)
            payload["rows"] = rows
            write_json(args.out, payload)  # after every model: a partial result survives
    table = [
        [
            r["n"],
            r["model"],
            r["parameters"],
            fmt(r["test_mse"], ".3e"),
            fmt(r["test_qre_residual"], ".3e"),
            fmt(r["test_duality_gap"], ".3e"),
            fmt(r.get("test_iterations"), ".1f"),
            fmt(r["train_time_s"], ".2f"),
            fmt(r["forward_s"], ".2f"),
        ]
        for r in rows
    ]
    header = [
        "n",
        "model",
        "params",
        "test MSE",
        "QRE residual",
        "duality gap",
        "iterations",
        "train s",
        "of which forward s",
    ]
    print(markdown_table(header, table))
    payload["rows"] = rows
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
