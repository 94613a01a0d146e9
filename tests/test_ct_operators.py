"""CT physics: the ray transform A, its adjoint, FBP, the relaxed projection step and TV reconstruction."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from fpnets.operators.radon import (
    PAPER_GEOMETRY,
    SMALL_GEOMETRY,
    ParallelBeamGeometry,
    RadonTransform,
    RelaxedProjection,
    geometry_preset,
    system_matrix,
)
from fpnets.operators.tv import (
    divergence,
    gradient,
    smoothed_tv_gradient,
    total_variation,
    tv_reconstruct,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # the problems here are tiny: with several threads, OpenMP synchronisation on a busy machine
    # costs far more than the arithmetic
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = ParallelBeamGeometry(n=10, n_angles=6, n_detectors=15)
F64 = torch.float64


def dense(geom: ParallelBeamGeometry) -> torch.Tensor:
    a, _ = system_matrix(geom)
    return a.to_dense()


def chord_in_square(theta: float, s: float, half: float) -> float:
    """Length of the line x·(cos θ, sin θ) = s inside [−half, half]² (Liang–Barsky clipping)."""
    c, sn = math.cos(theta), math.sin(theta)
    p0, d = (s * c, s * sn), (-sn, c)
    lo, hi = -math.inf, math.inf
    for k in range(2):
        if abs(d[k]) < 1e-14:
            if abs(p0[k]) > half:
                return 0.0
            continue
        t1, t2 = (-half - p0[k]) / d[k], (half - p0[k]) / d[k]
        lo, hi = max(lo, min(t1, t2)), min(hi, max(t1, t2))
    return max(0.0, hi - lo)


# ----------------------------------------------------------------------------------------------
# Geometry and matrix


def test_presets_cover_the_image_diagonal() -> None:
    assert geometry_preset("paper") == PAPER_GEOMETRY
    assert geometry_preset(64) == SMALL_GEOMETRY
    for g in (PAPER_GEOMETRY, SMALL_GEOMETRY):
        assert g.covers_image()
        assert g.n_detectors % 2 == 1  # a detector on the rotation axis
    with pytest.raises(ValueError, match="unknown CT geometry"):
        geometry_preset("huge")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be a positive integer"),
        ({"n_angles": 2.5}, "n_angles must be a positive integer"),
        ({"width": -1.0}, "width must be a finite number"),
        ({"detector_spacing": float("nan")}, "detector_spacing must be"),
    ],
)
def test_geometry_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ParallelBeamGeometry(**kwargs)


@pytest.mark.parametrize(
    "geom",
    [TINY, ParallelBeamGeometry(n=9, n_angles=5, n_detectors=14, width=3.0, detector_spacing=0.31)],
)
def test_row_sums_are_exact_chord_lengths(geom: ParallelBeamGeometry) -> None:
    # Σ_p a_{r,p} is the length of ray r inside the square: an exact check of the ray tracing
    rows = RadonTransform(geom).row_sums().numpy()
    theta, s = geom.angles(), geom.detector_positions()
    exact = np.array([[chord_in_square(t, x, geom.width / 2) for x in s] for t in theta])
    # a ray running along the square's own edge gives half its length to the one pixel row it borders
    axis = np.isclose(np.sin(2 * theta), 0.0, atol=1e-12)[:, None]
    on_edge = axis & np.isclose(np.abs(s), geom.width / 2, rtol=0, atol=1e-12)[None, :]
    exact[on_edge] *= 0.5
    np.testing.assert_allclose(rows, exact, rtol=0, atol=1e-12)


def test_each_entry_is_at_most_the_pixel_diagonal() -> None:
    a = dense(TINY)
    assert float(a.min()) >= 0.0
    assert float(a.max()) <= TINY.pixel_size * math.sqrt(2) + 1e-12


def test_adjointness_float64() -> None:
    for geom in (TINY, SMALL_GEOMETRY):
        op = RadonTransform(geom)
        g = torch.Generator().manual_seed(1)
        u = torch.randn(3, 1, geom.n, geom.n, dtype=F64, generator=g)
        v = torch.randn(3, 1, *geom.sinogram_shape, dtype=F64, generator=g)
        lhs = (op(u) * v).sum()
        rhs = (u * op.adjoint(v)).sum()
        assert abs(float(lhs - rhs)) <= 1e-10 * abs(float(lhs))


def test_forward_matches_dense_matrix_and_float32() -> None:
    op = RadonTransform(TINY)
    u = torch.rand(2, 1, 10, 10, dtype=F64)
    expected = (u.reshape(2, -1) @ dense(TINY).t()).reshape(2, 1, 6, 15)
    torch.testing.assert_close(op(u), expected, rtol=1e-12, atol=1e-12)
    y32 = op(u.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), expected, rtol=1e-5, atol=1e-5)


def test_autograd_uses_the_adjoint() -> None:
    op = RadonTransform(TINY)
    u = torch.rand(2, 1, 10, 10, dtype=F64, requires_grad=True)
    v = torch.randn(2, 1, 6, 15, dtype=F64)
    (grad,) = torch.autograd.grad((op(u) * v).sum(), u)
    torch.testing.assert_close(grad, op.adjoint(v))
    small, _ = tiny_problem()
    x = torch.rand(1, 1, 6, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: small.adjoint(small(z)), (x,))


def test_disc_sinogram_matches_analytic_line_integrals() -> None:
    geom = SMALL_GEOMETRY
    x, y = geom.pixel_centres()
    h, r, ss = geom.pixel_size, 0.6, 8
    offsets = (np.arange(ss) + 0.5) / ss * h - h / 2
    frac = np.mean([(x + a) ** 2 + (y + b) ** 2 <= r * r for a in offsets for b in offsets], axis=0)  # area
    sino = RadonTransform(geom)(torch.from_numpy(frac)[None, None])[0, 0].numpy()
    s = geom.detector_positions()
    exact = 2 * np.sqrt(np.clip(r * r - s**2, 0, None))  # the same at every angle
    err = np.abs(sino - exact[None])
    # pixelisation error: below one pixel near the rim (where the chord has a square-root edge),
    # a small fraction of a pixel on average
    assert err.max() <= 1.2 * h
    assert err.mean() <= 0.1 * h


@pytest.mark.parametrize(("angles", "bound"), [(30, 0.06), (90, 0.035)])
@pytest.mark.parametrize("filt", ["ramp", "hann"])
def test_fbp_reconstructs_a_smooth_phantom(angles: int, bound: float, filt: str) -> None:
    geom = ParallelBeamGeometry(n=64, n_angles=angles, n_detectors=91)
    x, y = geom.pixel_centres()
    f = 0.8 * np.clip(1 - (x**2 + y**2) / 0.49, 0, None) ** 2 + 0.2 * np.exp(
        -((x - 0.2) ** 2 + (y + 0.1) ** 2) / 0.05
    )
    u = torch.from_numpy(f)[None, None]
    op = RadonTransform(geom)
    rec = op.fbp(op(u), filt)
    assert float(torch.linalg.vector_norm(rec - u) / torch.linalg.vector_norm(u)) < bound


def test_fbp_rejects_unknown_filter() -> None:
    op = RadonTransform(TINY)
    with pytest.raises(ValueError, match="unknown FBP filter"):
        op.fbp(torch.zeros(1, 1, 6, 15), "shepp")  # type: ignore[arg-type]


def test_power_iteration_norm_matches_svd() -> None:
    op = RadonTransform(TINY)
    exact = float(torch.linalg.matrix_norm(dense(TINY), ord=2))
    assert op.norm() == pytest.approx(exact, rel=1e-6)


def test_shape_dtype_and_nan_errors() -> None:
    op = RadonTransform(TINY)
    with pytest.raises(ValueError, match=r"images of shape \(B, 1, 10, 10\)"):
        op(torch.zeros(2, 10, 10))
    with pytest.raises(ValueError, match=r"sinograms of shape \(B, 1, 6, 15\)"):
        op.adjoint(torch.zeros(2, 1, 15, 6))
    with pytest.raises(TypeError, match="float32 and float64"):
        op(torch.zeros(1, 1, 10, 10, dtype=torch.int64))
    bad = torch.zeros(1, 1, 10, 10)
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        op(bad)
    with pytest.raises(TypeError, match="ParallelBeamGeometry"):
        RadonTransform("128")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:  # pragma: no cover - runs on the GPU machine
    op = RadonTransform(TINY)
    u = torch.rand(2, 1, 10, 10, dtype=F64)
    torch.testing.assert_close(op(u.cuda()).cpu(), op(u))
    torch.testing.assert_close(op.fbp(op(u).cuda()).cpu(), op.fbp(op(u)))


# ----------------------------------------------------------------------------------------------
# Relaxed projection


def linear_part(proj: RelaxedProjection) -> torch.Tensor:
    """The matrix of v ↦ v − λ S Aᵀ W A v (d = 0, no box)."""
    geom = proj.radon.geometry
    n = geom.n * geom.n
    eye = torch.eye(n, dtype=F64).reshape(n, 1, geom.n, geom.n)
    cols = proj.linear_step(eye, torch.zeros(n, 1, *geom.sinogram_shape, dtype=F64))
    return cols.reshape(n, n).t()


@pytest.mark.parametrize("relaxation", [1.0, 1.99, 2.0])
def test_landweber_step_is_nonexpansive(relaxation: float) -> None:
    proj = RelaxedProjection(RadonTransform(TINY), relaxation=relaxation)
    m = linear_part(proj)
    torch.testing.assert_close(m, m.t(), rtol=0, atol=1e-13)  # symmetric
    eig = torch.linalg.eigvalsh(m)
    assert float(eig.max()) <= 1 + 1e-12
    assert float(eig.min()) >= 1 - relaxation - 1e-12
    assert float(eig.abs().max()) <= 1 + 1e-12  # Lipschitz constant ≤ 1
    g = torch.Generator().manual_seed(0)
    d = torch.randn(16, 1, 6, 15, dtype=F64, generator=g)
    u = 2 * torch.rand(16, 1, 10, 10, dtype=F64, generator=g) - 0.5
    v = 2 * torch.rand(16, 1, 10, 10, dtype=F64, generator=g) - 0.5
    lhs = torch.linalg.vector_norm((proj(u, d) - proj(v, d)).flatten(1), dim=1)
    rhs = torch.linalg.vector_norm((u - v).flatten(1), dim=1)
    assert (lhs <= rhs * (1 + 1e-12)).all()
    out = proj(u, d)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_schur_bound_holds_and_is_used() -> None:
    op = RadonTransform(TINY)
    a = dense(TINY)
    w = 1.0 / a.sum(1).clamp_min(1e-300) * (a.sum(1) > 0)
    atwa = a.t() @ (w[:, None] * a)
    colmax = float(a.sum(0).max())
    assert float(torch.linalg.matrix_norm(atwa, ord=2)) <= colmax * (1 + 1e-12)
    assert RelaxedProjection(op).step == pytest.approx(1 / colmax)


def test_sart_step_is_nonexpansive_in_the_weighted_norm() -> None:
    op = RadonTransform(TINY)
    proj = RelaxedProjection(op, weighting="sart", relaxation=1.9)
    c = op.column_sums().reshape(-1)
    m = linear_part(proj)
    # ‖M‖_C = ‖C^½ M C^−½‖₂
    weighted = c.sqrt()[:, None] * m / c.sqrt()[None, :]
    assert float(torch.linalg.matrix_norm(weighted, ord=2)) <= 1 + 1e-12


def test_projection_rejects_expansive_settings() -> None:
    op = RadonTransform(TINY)
    limit = 1.0 / float(op.column_sums().max())
    with pytest.raises(ValueError, match="not provably nonexpansive"):
        RelaxedProjection(op, step=1.5 * limit)
    with pytest.raises(ValueError, match=r"relaxation λ must lie in \(0, 2\]"):
        RelaxedProjection(op, relaxation=2.5)
    with pytest.raises(ValueError, match="unknown weighting"):
        RelaxedProjection(op, weighting="kaczmarz")  # type: ignore[arg-type]
    proj = RelaxedProjection(op, step=0.5 * limit)
    assert proj.step == pytest.approx(0.5 * limit)
    with pytest.raises(ValueError, match="same batch size"):
        proj(torch.zeros(2, 1, 10, 10), torch.zeros(3, 1, 6, 15))


# ----------------------------------------------------------------------------------------------
# TV


def test_divergence_is_minus_the_adjoint_of_gradient() -> None:
    u = torch.randn(2, 1, 7, 9, dtype=F64)
    q = torch.randn(2, 2, 7, 9, dtype=F64)
    assert float((gradient(u) * q).sum() + (u * divergence(q)).sum()) == pytest.approx(0.0, abs=1e-12)


def test_smoothed_tv_gradient_matches_autograd() -> None:
    u = torch.randn(2, 1, 6, 6, dtype=F64, requires_grad=True)
    eps = 0.1
    tv_eps = torch.sqrt(gradient(u).square().sum(1) + eps**2).sum()
    (grad,) = torch.autograd.grad(tv_eps, u)
    torch.testing.assert_close(smoothed_tv_gradient(u.detach(), eps), grad)


def tiny_problem(seed: int = 0) -> tuple[RadonTransform, torch.Tensor]:
    op = RadonTransform(ParallelBeamGeometry(n=6, n_angles=16, n_detectors=9))  # full column rank
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(2, 1, 6, 6, dtype=F64, generator=g)
    return op, op(u) + 0.01 * torch.randn(2, 1, 16, 9, dtype=F64, generator=g)


def objective(op: RadonTransform, u: torch.Tensor, d: torch.Tensor, lam: float) -> torch.Tensor:
    return 0.5 * (op(u) - d).square().flatten(1).sum(1) + lam * total_variation(u)


def test_chambolle_pock_converges_to_the_minimiser() -> None:
    op, d = tiny_problem()
    lam = 0.05
    short = tv_reconstruct(op, d, lam, iterations=20)
    res = tv_reconstruct(op, d, lam, iterations=1000, tol=1e-10)
    assert (res.gap >= -1e-12).all()
    assert (res.gap < short.gap).all()
    assert (res.gap <= 1e-9 * res.primal).all() and res.converged.all()
    torch.testing.assert_close(res.primal, objective(op, res.image, d, lam))
    # P(u*) − min P ≤ gap: no feasible perturbation does better by more than the gap
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        other = (res.image + 0.05 * torch.randn(res.image.shape, dtype=F64, generator=g)).clamp(0, 1)
        assert (objective(op, other, d, lam) >= res.primal - res.gap - 1e-12).all()
    assert float(res.image.min()) >= 0 and float(res.image.max()) <= 1


def test_chambolle_pock_small_lambda_approaches_box_least_squares() -> None:
    from scipy.optimize import lsq_linear

    op, d = tiny_problem(seed=1)
    a = dense(op.geometry).numpy()
    # min_{u ∈ [0,1]} ½‖Au − d‖², exactly (scipy's bounded least squares)
    u_ls = np.stack([lsq_linear(a, d[b].reshape(-1).numpy(), bounds=(0, 1), tol=1e-12).x for b in range(2)])
    u_ls = torch.from_numpy(u_ls).reshape(2, 1, 6, 6)
    ls = objective(op, u_ls, d, 0.0)
    excess = []
    for lam in (1e-2, 1e-4):
        res = tv_reconstruct(op, d, lam, iterations=500)
        fit = objective(op, res.image, d, 0.0)
        # 0 ≤ fit(u_λ) − min fit ≤ λ TV(u_ls) + gap, which vanishes with λ
        bound = lam * total_variation(u_ls) + res.gap
        assert (fit - ls >= -1e-10).all()
        assert (fit - ls <= bound + 1e-10).all()
        excess.append(float((fit - ls).max()))
    assert excess[1] <= 0.1 * excess[0]


def test_per_sample_lambda_matches_separate_runs() -> None:
    op, d = tiny_problem()
    both = tv_reconstruct(op, d, torch.tensor([0.01, 0.1], dtype=F64), iterations=50)
    for b, lam in enumerate((0.01, 0.1)):
        one = tv_reconstruct(op, d[b : b + 1], lam, iterations=50)
        torch.testing.assert_close(both.image[b : b + 1], one.image)


def test_tv_reconstruct_errors() -> None:
    op, d = tiny_problem()
    with pytest.raises(ValueError, match="sinograms of shape"):
        tv_reconstruct(op, d[:, 0], 0.1)
    with pytest.raises(ValueError, match="lam"):
        tv_reconstruct(op, d, -1.0)
    bad = d.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        tv_reconstruct(op, bad, 0.1)
