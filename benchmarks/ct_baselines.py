"""CT baselines on the random-ellipse data, and the Lipschitz facts of the projection step P_d.

    python benchmarks/ct_baselines.py --data-dir ../shared/data/ct --out benchmarks/results/ct_baselines.json
    python benchmarks/ct_baselines.py --geometry 128 --n-val 100 --n-test 1000 --data-dir ...

Reports, for the chosen geometry:
- the projection step's constants: max column sum C (the Schur bound ‖AᵀWA‖₂ ≤ max C), the
  measured s‖AᵀWA‖₂ (power iteration, s = 1/max C; ≤ 1 by the bound) and so the interval
  [1 − λ s‖AᵀWA‖, 1] holding the linear part's spectrum, and, for comparison, the reference code's
  λ‖A D^½‖₂² with D = diag(1/nnz of column), λ = 1.99, in pixel units (width = N);
- test PSNR / SSIM / MSE (means) of FBP (ramp, Hann), TV (Chambolle–Pock, λ chosen on the validation
  split by PSNR) and untrained TV superiorisation (its initial step scalars).
No training happens here (the F-FPN, unrolled and TVS models are trained by the trainer).
"""

from __future__ import annotations

import argparse
import math

import torch

from fpnets.operators.radon import (
    ParallelBeamGeometry,
    RadonTransform,
    RelaxedProjection,
    geometry_preset,
    system_matrix,
)
from fpnets.tasks.ct import (
    METRICS,
    EllipseDataConfig,
    FBPReconstructor,
    TVReconstructor,
    TVSuperiorization,
    load_ellipse_splits,
)

from common import command_line, environment, markdown_table, write_json


def top_eigenvalue(apply, n: int, iters: int = 300) -> float:
    """Largest eigenvalue of a symmetric PSD map by power iteration (float64)."""
    v = torch.rand(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v /= torch.linalg.vector_norm(v)
    lam = 0.0
    for _ in range(iters):
        w = apply(v)
        lam = float(torch.linalg.vector_norm(w))
        v = w / lam
    return lam


def projection_facts(geom: ParallelBeamGeometry, relaxation: float = 1.99) -> dict[str, float]:
    radon = RadonTransform(geom)
    proj = RelaxedProjection(radon, relaxation=relaxation)
    a, at = system_matrix(geom)
    rows = radon.row_sums().reshape(-1, 1)
    w = torch.where(rows > 0, 1 / rows.clamp_min(1e-300), torch.zeros_like(rows))
    mu = top_eigenvalue(lambda v: proj.step * (at @ (w * (a @ v))), geom.n * geom.n)
    pixel = ParallelBeamGeometry(
        n=geom.n,
        n_angles=geom.n_angles,
        n_detectors=geom.n_detectors,
        width=float(geom.n),
        detector_spacing=None,
    )
    ap, apt = system_matrix(pixel)
    nnz = torch.zeros(geom.n * geom.n, dtype=torch.float64)
    nnz.index_add_(0, ap.col_indices(), torch.ones(ap.col_indices().shape, dtype=torch.float64))
    d_half = torch.where(nnz > 0, nnz.clamp_min(1).rsqrt(), torch.zeros_like(nnz)).reshape(-1, 1)
    ref = top_eigenvalue(lambda v: d_half * (apt @ (ap @ (d_half * v))), geom.n * geom.n)
    return {
        "max_column_sum": proj.max_column_sum,
        "step_s": proj.step,
        "s_norm_AtWA": mu,
        "linear_part_spectrum_low": 1 - relaxation * mu,
        "linear_part_spectrum_high": 1.0,
        "reference_lambda_norm_AD_half_sq_pixel_units": relaxation * ref,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data-dir", default=None, help="cache directory of the ellipse data (default: in memory)"
    )
    p.add_argument("--out", default=None, help="JSON file for the results")
    p.add_argument("--geometry", default="64", help="geometry preset: 64 / small or 128 / paper")
    p.add_argument("--n-val", type=int, default=50)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tv-iterations", type=int, default=300)
    p.add_argument("--lambdas", default="0.0001,0.0003,0.001,0.003,0.01", help="TV λ candidates (comma list)")
    args = p.parse_args()
    geom = geometry_preset(args.geometry)
    cfg = EllipseDataConfig(geometry=geom, n_train=0, n_val=args.n_val, n_test=args.n_test, seed=args.seed)
    data = load_ellipse_splits(args.data_dir, cfg)
    facts = projection_facts(geom)

    tv = TVReconstructor(geom, iterations=args.tv_iterations)
    lambdas = [float(x) for x in args.lambdas.split(",") if x.strip()]
    tv_scores = tv.select_lambda(data.val.sinograms.double(), data.val.images.double(), lambdas)
    models = {
        "fbp-ramp": FBPReconstructor(geom, "ramp"),
        "fbp-hann": FBPReconstructor(geom, "hann"),
        f"tv (λ={tv.lam:g})": tv,
        "tvs (untrained)": TVSuperiorization(geom),
    }
    results: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        sums = dict.fromkeys(METRICS, 0.0)
        with torch.no_grad():
            for start in range(0, len(data.test), 64):
                d = data.test.sinograms[start : start + 64].double()
                u = data.test.images[start : start + 64].double()
                out = model(d)
                for metric, fn in METRICS.items():
                    sums[metric] += float(fn(out, u).sum())
        results[name] = {k: v / len(data.test) for k, v in sums.items()}
    rows = [[n, f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", f"{r['mse']:.2e}"] for n, r in results.items()]
    print(markdown_table(["method", "PSNR (dB)", "SSIM", "MSE"], rows))
    print({k: (round(v, 6) if math.isfinite(v) else v) for k, v in facts.items()})
    write_json(
        args.out,
        {
            "command": command_line(),
            "environment": environment(),
            "geometry": geom.describe(),
            "data": cfg.record(),
            "projection": facts,
            "tv_validation_psnr": tv_scores,
            "test": results,
        },
    )


if __name__ == "__main__":
    main()
