"""Projection onto the probability simplex and products of simplices (fpnets.operators.simplex)."""

from __future__ import annotations

import pytest
import torch

from fpnets.operators.simplex import project_simplex, project_simplex_product, simplex_threshold


def _bisection_reference(y: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """P_Δ(y) row by row in float64 by bisection on θ in Σ max(y − θ, 0) = 1 (decreasing in θ)."""
    out = torch.empty_like(y, dtype=torch.float64)
    for r, row in enumerate(y.to(torch.float64)):
        lo, hi = float(row.min()) - 1.0, float(row.max())  # sum ≥ 1 at lo, = 0 at hi
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            if float(torch.clamp(row - mid, min=0).sum()) > 1.0:
                lo = mid
            else:
                hi = mid
        out[r] = torch.clamp(row - 0.5 * (lo + hi), min=0)
    return out


def _random_simplex(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    e = -torch.log(torch.rand(*shape, generator=gen, dtype=torch.float64))  # Dirichlet(1) via exponentials
    return e / e.sum(-1, keepdim=True)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 50])
def test_projection_is_in_simplex_and_matches_bisection(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    y = 3.0 * torch.randn(64, n, generator=gen, dtype=torch.float64)
    y[0] = 0.2  # ties
    x = project_simplex(y)
    assert (x >= 0).all()
    torch.testing.assert_close(x.sum(-1), torch.ones(64, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(x, _bisection_reference(y), rtol=0, atol=1e-12)


def test_projection_optimality_idempotence_and_nonexpansiveness() -> None:
    gen = torch.Generator().manual_seed(0)
    y = 2.0 * torch.randn(200, 6, generator=gen, dtype=torch.float64)
    x = project_simplex(y)
    # variational inequality ⟨y − P(y), z − P(y)⟩ ≤ 0 for every z in Δ (random z, and the vertices)
    z = _random_simplex((200, 30, 6), gen)
    vi = ((y - x).unsqueeze(1) * (z - x.unsqueeze(1))).sum(-1)
    assert vi.max() <= 1e-12
    verts = torch.eye(6, dtype=torch.float64)
    assert (((y - x).unsqueeze(1) * (verts - x.unsqueeze(1))).sum(-1)).max() <= 1e-12
    torch.testing.assert_close(project_simplex(x), x, rtol=0, atol=1e-14)  # P(P(y)) = P(y)
    w = 2.0 * torch.randn(200, 6, generator=gen, dtype=torch.float64)
    lhs = torch.linalg.vector_norm(project_simplex(w) - x, dim=-1)
    assert (lhs <= torch.linalg.vector_norm(w - y, dim=-1) + 1e-12).all()  # ‖P(w) − P(y)‖ ≤ ‖w − y‖


def test_points_of_the_simplex_are_fixed_and_shift_is_invariant() -> None:
    gen = torch.Generator().manual_seed(1)
    x = _random_simplex((20, 5), gen)
    torch.testing.assert_close(project_simplex(x), x, rtol=0, atol=1e-14)
    y = torch.randn(20, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(project_simplex(y + 3.7), project_simplex(y), rtol=0, atol=1e-12)
    theta = simplex_threshold(y)
    assert theta.shape == (20, 1)
    torch.testing.assert_close(torch.clamp(y - theta, min=0), project_simplex(y))


def test_any_dimension_and_leading_batch_dims() -> None:
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64)
    x = project_simplex(y, dim=1)
    ref = project_simplex(y.movedim(1, -1)).movedim(-1, 1)
    torch.testing.assert_close(x, ref)
    torch.testing.assert_close(x.sum(1), torch.ones(3, 5, 6, dtype=torch.float64))


def test_product_of_simplices_equal_and_unequal_blocks() -> None:
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(10, 2, 4, generator=gen, dtype=torch.float64)
    x = project_simplex_product(y)
    torch.testing.assert_close(x[:, 0], project_simplex(y[:, 0]))
    torch.testing.assert_close(x[:, 1], project_simplex(y[:, 1]))
    flat = y.reshape(10, 8)
    torch.testing.assert_close(project_simplex_product(flat, [4, 4]), x.reshape(10, 8))
    z = torch.randn(10, 9, generator=gen, dtype=torch.float64)
    p = project_simplex_product(z, [2, 3, 4])
    torch.testing.assert_close(p[:, :2], _bisection_reference(z[:, :2]), rtol=0, atol=1e-12)
    torch.testing.assert_close(p[:, 2:5], _bisection_reference(z[:, 2:5]), rtol=0, atol=1e-12)
    torch.testing.assert_close(p[:, 5:], _bisection_reference(z[:, 5:]), rtol=0, atol=1e-12)


def test_gradient_flows_and_matches_the_active_piece() -> None:
    gen = torch.Generator().manual_seed(4)
    y = torch.randn(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(project_simplex, (y,), eps=1e-7, atol=1e-6)
    x = project_simplex(y)
    c = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    (g,) = torch.autograd.grad((x * c).sum(), y)
    # on the support S the Jacobian is I − 11ᵀ/|S| (zero off S): g = c − mean_S(c) on S, 0 off S
    support = x.detach() > 0
    mean_s = (c * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
    torch.testing.assert_close(g, torch.where(support, c - mean_s, torch.zeros_like(c)))


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        project_simplex(torch.tensor([0.1, float("nan")]))
    with pytest.raises(TypeError, match="floating-point"):
        project_simplex(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="sum to 5"):
        project_simplex_product(torch.zeros(2, 6), [2, 3])
    with pytest.raises(ValueError, match="positive integers"):
        project_simplex_product(torch.zeros(2, 6), [6, 0])
    with pytest.raises(ValueError, match=r"\(\.\.\., P, n\)"):
        project_simplex_product(torch.zeros(6))
