"""The CT benchmark table: trained runs of `fpnets train ct-ellipses` and the FBP / TV baselines on
one held-out test split.

    python benchmarks/ct_table.py --runs runs/ct-contractive runs/ct-ffpn runs/ct-unrolled runs/ct-tvs \
        --baselines --data-dir DIR --out benchmarks/results/ct_table.json

For every run (its best checkpoint and the config stored with it) and for FBP (filter chosen on
validation by PSNR) and TV (λ chosen on validation by PSNR), on the test split of the first run's
config: PSNR and SSIM (mean and standard deviation over the test images), MSE, the parameter count,
the training time (the sum of the run's epoch times in metrics.csv), the reconstruction time per
image (wall clock of the no-grad forward over the test split / its size, in this process), for the
F-FPNs the fraction of test solves that met the tolerance and the mean iterations, the proven
Lipschitz bound of T (contractive form) and the authors' one-direction estimate
ρ = mean|T(u+δ) − T(u)| / mean|δ| at the test fixed points (δ = 0.05 N(0, I)), and, with
``--lipschitz``, the power-iteration estimate of ‖∂T/∂u‖₂ (Euclidean) at every test solution
(:func:`fpnets.layers.lipschitz_estimate`, 30 steps: a lower bound of the local Lipschitz constant;
above 1 means T expands in some direction there). ``--max-iter N`` (with ``--damping``) replaces the
F-FPN runs' solver cap (and Krasnosel'skii–Mann damping of Picard) for diagnosis. Times are wall
clock on whatever machine runs this, so indicative only on a shared one.

    python benchmarks/ct_table.py --runs RUN --max-iter 300 --lipschitz --data-dir DIR --out FILE

``--untrained VARIANT ...`` adds the variants of ``--config`` at their initialisation (seeded with
``train.seed``, no training), e.g. the potential F-FPN, whose untrained R_Θ is a Huber-TV step.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fpnets.layers import lipschitz_estimate
from fpnets.tasks.ct import FFPN
from fpnets.tasks.ct.metrics import mse, psnr, ssim
from fpnets.tasks.ct.task import CTTask
from fpnets.train import load_model, read_metrics_csv

from common import command_line, environment, markdown_table, write_json


def _stats(values: Tensor) -> dict[str, float]:
    v = values.to(torch.float64)
    return {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0}


@torch.no_grad()
def evaluate_model(
    model: nn.Module, sinograms: Tensor, images: Tensor, batch_size: int, lipschitz: bool = False
) -> dict[str, Any]:
    """Per-image metrics, wall-clock time, convergence and ρ of ``model`` on (d, u) pairs; with
    ``lipschitz``, the power-iteration estimate of ‖∂T/∂u‖₂ at every solution (F-FPNs)."""
    model.eval()
    outs, converged, iterations, ratios, lips, eigs, cosines = [], [], [], [], [], [], []
    elapsed = 0.0
    for start in range(0, sinograms.shape[0], batch_size):
        d = sinograms[start : start + batch_size]  # (B, 1, K, D)
        t0 = time.perf_counter()
        u = model(d)  # (B, 1, N, N)
        elapsed += time.perf_counter() - t0
        outs.append(u.to(torch.float64))
        sol = getattr(model, "solution", None)
        if sol is not None:
            converged.append(sol.converged)
            iterations.append(sol.iterations.to(torch.float64))
        if isinstance(model, FFPN):
            delta = 0.05 * torch.randn(u.shape, generator=torch.Generator().manual_seed(start), dtype=u.dtype)
            diff = model.operator(u + delta, d) - model.operator(u, d)
            ratios.append(float(diff.abs().mean() / delta.abs().mean()))
            if lipschitz:
                gen = torch.Generator().manual_seed(start)
                lips.append(
                    lipschitz_estimate(lambda z, d=d: model.operator(z, d), u, iters=30, generator=gen)
                )
                eigs.append(_dominant_eigenvalue(lambda z, d=d: model.operator(z, d), u, gen))
                t1 = model.operator(u, d)
                r1, r2 = t1 - u, model.operator(t1, d) - t1  # successive residuals (B, 1, N, N)
                cosines.append(torch.nn.functional.cosine_similarity(r1.flatten(1), r2.flatten(1), dim=1))
    u = torch.cat(outs)
    truth = images.to(torch.float64)
    n = u.shape[0]
    out: dict[str, Any] = {
        "n": n,
        "psnr": _stats(psnr(u, truth)),
        "ssim": _stats(ssim(u, truth)),
        "mse": _stats(mse(u, truth)),
        "seconds_per_image": elapsed / n,
    }
    if converged:
        out["converged_fraction"] = float(torch.cat(converged).double().mean())
        out["iterations_mean"] = float(torch.cat(iterations).mean())
    if ratios:
        out["rho_estimate"] = sum(ratios) / len(ratios)
    if lips:
        lip = torch.cat(lips).to(torch.float64)  # (n,)
        out["jacobian_norm"] = {
            "median": float(lip.median()),
            "max": float(lip.max()),
            "min": float(lip.min()),
            "fraction_above_1": float((lip > 1).double().mean()),
        }
        eig = torch.cat(eigs).to(torch.float64)  # (n,)
        out["dominant_eigenvalue"] = {
            "median": float(eig.median()),
            "min": float(eig.min()),
            "max": float(eig.max()),
        }
        out["residual_cosine_median"] = float(torch.cat(cosines).median())
    return out


def _dominant_eigenvalue(f: Any, u: Tensor, generator: torch.Generator, iters: int = 30) -> Tensor:
    """Rayleigh quotient ⟨v, Jv⟩ after ``iters`` steps of power iteration on J = ∂f/∂u at u, per
    sample (J v by the double-VJP trick). A real value above 1: the iteration drifts along v."""
    z = u.detach().requires_grad_()
    with torch.enable_grad():
        y = f(z)
        dummy = torch.zeros_like(y, requires_grad=True)
        (jt_dummy,) = torch.autograd.grad(y, z, dummy, create_graph=True)
        v = torch.randn(u.shape, dtype=u.dtype, generator=generator)
        rayleigh = torch.zeros(u.shape[0], dtype=u.dtype)
        for _ in range(iters):
            v = v / torch.linalg.vector_norm(v.flatten(1), dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
            (jv,) = torch.autograd.grad(jt_dummy, dummy, v, retain_graph=True)
            rayleigh = (jv * v).flatten(1).sum(1)
            v = jv.detach()
    return rayleigh.detach()


def evaluate_run(
    run_dir: Path,
    data_dir: str | None,
    *,
    max_iter: int | None = None,
    damping: float | None = None,
    lipschitz: bool = False,
) -> tuple[dict[str, Any], CTTask, Any]:
    saved = load_model(run_dir, data_dir=data_dir, device="cpu")
    config, task, splits, model = saved.config, saved.task, saved.splits, saved.model
    if not isinstance(task, CTTask):
        raise SystemExit(f"{run_dir} is a {config.task.name!r} run, not a CT run")
    if isinstance(model, FFPN) and (max_iter is not None or damping is not None):
        changes: dict[str, Any] = {} if max_iter is None else {"max_iter": max_iter}
        if damping is not None:
            changes["damping"] = damping
        model.solver = dataclasses.replace(model.solver, **changes)  # type: ignore[type-var]
    test = splits.test
    result = evaluate_model(model, test.inputs[0], test.target, config.data.eval_batch_size, lipschitz)
    rows = read_metrics_csv(run_dir / "metrics.csv")
    result.update(
        {
            "method": config.model.variant,
            "run": str(run_dir),
            "best_epoch": saved.checkpoint.epoch,
            "epochs": len(rows),
            "n_train": len(splits.train),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": sum(r["epoch_s"] or 0.0 for r in rows),
            "lipschitz_bound": getattr(model, "lipschitz_bound", None),
            "solver": repr(getattr(model, "solver", None)) if isinstance(model, FFPN) else None,
        }
    )
    return result, task, splits


def evaluate_untrained(
    config_name: str, variant: str, splits: Any, lipschitz: bool = False
) -> dict[str, Any]:
    """``variant`` of ``config_name`` at its initialisation (no training), on the test split."""
    from fpnets.train import load_config

    config = load_config(config_name, [f"model.variant={variant}"])
    task = config.make_task()
    torch.manual_seed(config.train.seed)
    model = task.build_model()
    test = splits.test
    result = evaluate_model(model, test.inputs[0], test.target, config.data.eval_batch_size, lipschitz)
    result.update(
        {
            "method": f"{variant} (untrained)",
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": 0.0,
            "lipschitz_bound": getattr(model, "lipschitz_bound", None),
            "solver": repr(getattr(model, "solver", None)) if isinstance(model, FFPN) else None,
            "config": config.to_toml(),
        }
    )
    return result


def evaluate_baselines(task: CTTask, splits: Any) -> list[dict[str, Any]]:
    out = []
    for kind in ("fbp", "tv"):
        t0 = time.perf_counter()
        model = task.build_baseline(kind, splits.val)
        select_seconds = time.perf_counter() - t0
        test = splits.test
        result = evaluate_model(
            model, test.inputs[0].to(torch.float64), test.target, task.config.data.eval_batch_size
        )
        result.update(
            {
                "method": kind,
                "parameters": 0,
                "train_seconds": None,
                "selection_seconds": select_seconds,
                "chosen": {"filter": model.filter} if kind == "fbp" else {"lambda": model.lam},
                "select_samples": task.config.model.select_samples,
            }
        )
        out.append(result)
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", nargs="*", default=[], type=Path, help="run directories of CT runs")
    parser.add_argument("--baselines", action="store_true", help="also evaluate FBP and TV")
    parser.add_argument(
        "--untrained", nargs="*", default=[], help="variants of --config evaluated at their initialisation"
    )
    parser.add_argument(
        "--config", default="ct-ellipses", help="config for the baselines when no run is given"
    )
    parser.add_argument("--data-dir", default=None, help="where the CT data are cached")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-iter", type=int, default=None, help="override the F-FPN runs' solver cap")
    parser.add_argument("--damping", type=float, default=None, help="Picard damping α for the F-FPN runs")
    parser.add_argument(
        "--lipschitz", action="store_true", help="power-iteration ‖∂T/∂u‖₂ at every test solution"
    )
    parser.add_argument("--out", default=None, help="JSON output file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    env = environment("cpu")
    results, task, splits = [], None, None
    for run in args.runs:
        result, task, splits = evaluate_run(
            run, args.data_dir, max_iter=args.max_iter, damping=args.damping, lipschitz=args.lipschitz
        )
        results.append(result)
    if (args.baselines or args.untrained) and task is None:
        from fpnets.train import load_config

        task = load_config(args.config).make_task()
        splits = task.load_splits(args.data_dir)
    for variant in args.untrained:
        results.append(evaluate_untrained(args.config, variant, splits, args.lipschitz))
    if args.baselines:
        results.extend(evaluate_baselines(task, splits))  # type: ignore[arg-type]
    header = [
        "method",
        "params",
        "PSNR (dB)",
        "SSIM",
        "train s",
        "s / image",
        "converged",
        "iters",
        "Lip bound",
        "‖∂T/∂u‖₂ med / max",
    ]
    rows = [
        [
            r["method"],
            r["parameters"],
            f"{r['psnr']['mean']:.2f} ± {r['psnr']['std']:.2f}",
            f"{r['ssim']['mean']:.3f} ± {r['ssim']['std']:.3f}",
            _fmt(r.get("train_seconds"), ".0f"),
            _fmt(r["seconds_per_image"], ".4f"),
            _fmt(r.get("converged_fraction"), ".3f"),
            _fmt(r.get("iterations_mean"), ".1f"),
            _fmt(r.get("lipschitz_bound"), ".3g"),
            (
                f"{r['jacobian_norm']['median']:.3f} / {r['jacobian_norm']['max']:.3f}"
                if "jacobian_norm" in r
                else "–"
            ),
        ]
        for r in results
    ]
    table = markdown_table(header, rows)
    print(table)
    write_json(args.out, {"command": command_line(), "environment": env, "results": results, "table": table})


if __name__ == "__main__":
    main()
