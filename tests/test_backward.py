"""Backward modes against exact references in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fpnets
from fpnets import IFT, JFB, Anderson, CGNormal, Neumann, Picard, Unrolled

from conftest import contraction_matrix

D = torch.float64
FORWARD = Picard(tol=1e-13, max_iter=2000)


class TanhOperator(nn.Module):
    """T(z; x) = γ tanh(z Wᵀ + x Uᵀ + b), with ‖W‖₂ ≤ 1, so Lip_z(T) ≤ γ."""

    def __init__(self, n: int, m: int, gamma: float = 0.7, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.gamma = gamma
        self.w = nn.Parameter(contraction_matrix(n, 1.0, D, seed))
        self.u = nn.Parameter(torch.randn(n, m, generator=g, dtype=D) / m**0.5)
        self.b = nn.Parameter(0.1 * torch.randn(n, generator=g, dtype=D))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (B, n), (B, m) -> (B, n)
        return self.gamma * torch.tanh(z @ self.w.T + x @ self.u.T + self.b)


def _dense_jacobian(f, z: torch.Tensor) -> torch.Tensor:
    """Full Jacobian of a batch map as a (B·n, B·n) matrix."""
    jac = torch.autograd.functional.jacobian(f, z)  # (B, n, B, n)
    return jac.reshape(z.numel(), z.numel())


def exact_implicit_grads(op, x, z_star, g, series: int | None = None):
    """∂ℓ/∂(params, x) = (∂T/∂·)ᵀ w with (I − J)ᵀ w = g, or w = Σ_{i≤k} (Jᵀ)^i g."""
    z_star = z_star.detach()
    jac = _dense_jacobian(lambda z: op(z, x.detach()), z_star)
    eye = torch.eye(jac.shape[0], dtype=D)
    if series is None:
        w = torch.linalg.solve((eye - jac).T, g.reshape(-1))
    else:
        w, term = g.reshape(-1).clone(), g.reshape(-1).clone()
        for _ in range(series):
            term = jac.T @ term
            w = w + term
    y = op(z_star, x)
    return torch.autograd.grad(y, [*op.parameters(), x], w.reshape(g.shape))


def _loss(u: torch.Tensor) -> torch.Tensor:
    return (torch.sin(u) * torch.arange(u.shape[1], dtype=u.dtype)).sum() + (u**2).sum()


def _grads(op, x, backward, solver=FORWARD):
    z0 = torch.zeros(x.shape[0], op.w.shape[0], dtype=D)
    sol = fpnets.fixed_point(op, z0, x, solver=solver, backward=backward)
    loss = _loss(sol.value)
    return sol, torch.autograd.grad(loss, [*op.parameters(), x])


def _upstream(u: torch.Tensor) -> torch.Tensor:
    u = u.detach().requires_grad_()
    return torch.autograd.grad(_loss(u), u)[0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


ADJOINT_SOLVERS = {
    "picard": Picard(tol=1e-13, max_iter=2000, relative=True),
    "anderson": Anderson(tol=1e-13, max_iter=500, relative=True),
    "cg": CGNormal(tol=1e-13, max_iter=200),
}


@pytest.mark.parametrize("adjoint", sorted(ADJOINT_SOLVERS))
def test_ift_matches_dense_implicit_gradient(adjoint: str) -> None:
    op = TanhOperator(5, 3)
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    sol, grads = _grads(op, x, IFT(ADJOINT_SOLVERS[adjoint]))
    exact = exact_implicit_grads(op, x, sol.value, _upstream(sol.value))
    for got, want in zip(grads, exact, strict=True):
        assert _rel(got, want) < 1e-6


def test_ift_gradcheck() -> None:
    op = TanhOperator(4, 3, gamma=0.6)
    backward = IFT(Anderson(tol=1e-14, max_iter=500, relative=True))

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        def t(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return 0.6 * torch.tanh(z @ w.T + x @ op.u.T + op.b)

        z0 = torch.zeros(x.shape[0], 4, dtype=D)
        return fpnets.fixed_point(t, z0, x, solver=Picard(tol=1e-14, max_iter=5000), backward=backward).value

    x = torch.randn(3, 3, dtype=D, requires_grad=True)
    w = op.w.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (x, w), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_jfb_is_backprop_through_one_application() -> None:
    op = TanhOperator(5, 3)
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    sol, grads = _grads(op, x, JFB())
    y = op(sol.value.detach(), x)
    reference = torch.autograd.grad(y, [*op.parameters(), x], _upstream(sol.value))
    for got, want in zip(grads, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("seed", range(8))
def test_jfb_is_a_descent_direction(seed: int) -> None:
    op = TanhOperator(6, 4, gamma=0.5, seed=seed)
    x = torch.randn(5, 4, dtype=D, generator=torch.Generator().manual_seed(100 + seed), requires_grad=True)
    sol, jfb = _grads(op, x, JFB())
    exact = exact_implicit_grads(op, x, sol.value, _upstream(sol.value))
    params = len(list(op.parameters()))
    inner = sum(float((a * b).sum()) for a, b in zip(jfb[:params], exact[:params], strict=True))
    assert inner > 0


@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_neumann_equals_truncated_series(k: int) -> None:
    op = TanhOperator(5, 3)
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    sol, grads = _grads(op, x, Neumann(k))
    series = exact_implicit_grads(op, x, sol.value, _upstream(sol.value), series=k)
    for got, want in zip(grads, series, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_neumann_zero_is_jfb_and_long_series_approaches_ift() -> None:
    op = TanhOperator(5, 3)
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    _, jfb = _grads(op, x, JFB())
    _, n0 = _grads(op, x, Neumann(0))
    _, ift = _grads(op, x, IFT(Picard(tol=1e-14, max_iter=5000, relative=True)))
    _, n_short = _grads(op, x, Neumann(3))
    _, n_long = _grads(op, x, Neumann(120))
    for a, b in zip(jfb, n0, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    errs_short = [_rel(a, b) for a, b in zip(n_short, ift, strict=True)]
    errs_long = [_rel(a, b) for a, b in zip(n_long, ift, strict=True)]
    assert max(errs_long) < 1e-10
    assert max(errs_long) < min(errs_short)


def test_unrolled_equals_autograd_through_the_same_iterations() -> None:
    op = TanhOperator(5, 3)
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    k = 12
    solver = Picard(tol=0.0, max_iter=k)
    with pytest.warns(fpnets.ConvergenceWarning):
        sol, grads = _grads(op, x, Unrolled(), solver=solver)
    assert sol.iterations.tolist() == [k] * 4
    z = torch.zeros(4, 5, dtype=D)
    for _ in range(k - 1):  # k evaluations; the last one only measures the residual
        z = op(z, x)
    torch.testing.assert_close(sol.value, z, rtol=0, atol=0)
    # the gradient is that of the k-th evaluation T(z), backpropagated through all k of them
    y = op(z, x)
    reference = torch.autograd.grad(y, [*op.parameters(), x], _upstream(z))
    for got, want in zip(grads, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("solver", [Picard(tol=1e-9, max_iter=300), Anderson(tol=1e-9, max_iter=300)])
def test_backward_mode_never_changes_forward_value(solver) -> None:
    op = TanhOperator(5, 3, gamma=0.9)
    x = torch.randn(6, 3, dtype=D)
    x[:2] *= 10  # saturated samples converge at another depth
    values = []
    for backward in [JFB(), IFT(), Neumann(4), Unrolled()]:
        values.append(fpnets.fixed_point(op, torch.zeros(6, 5, dtype=D), x, solver=solver, backward=backward))
    with torch.no_grad():
        values.append(fpnets.fixed_point(op, torch.zeros(6, 5, dtype=D), x, solver=solver))
    for sol in values[1:]:
        assert torch.equal(sol.value, values[0].value)
        assert torch.equal(sol.iterations, values[0].iterations)


class _CoupledOperator(nn.Module):
    """T(u; x) = 0.5 · BN(u Wᵀ) + x, BatchNorm with batch statistics (couples samples)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(contraction_matrix(n, 0.4, D))
        self.bn = nn.BatchNorm1d(n, affine=True, dtype=D)

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.bn(u @ self.w.T) + x


@pytest.mark.parametrize("adjoint", ["anderson", "cg"])
def test_ift_exact_for_an_operator_that_couples_samples(adjoint: str) -> None:
    op = _CoupledOperator(4).train()
    x = torch.randn(6, 4, dtype=D, requires_grad=True)
    z0 = torch.zeros(6, 4, dtype=D)
    sol = fpnets.fixed_point(
        op,
        z0,
        x,
        solver=Picard(tol=1e-13, max_iter=3000),
        backward=IFT(ADJOINT_SOLVERS[adjoint]),
        coupled=True,
    )
    grads = torch.autograd.grad(_loss(sol.value), [*op.parameters(), x])
    exact = exact_implicit_grads(op, x, sol.value, _upstream(sol.value))
    for got, want in zip(grads, exact, strict=True):
        assert _rel(got, want) < 1e-6


def test_ift_adjoint_nonconvergence_warns_or_raises() -> None:
    op = TanhOperator(5, 3, gamma=0.95)
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    sol = fpnets.fixed_point(
        op, torch.zeros(4, 5, dtype=D), x, solver=FORWARD, backward=IFT(Picard(1e-14, 2))
    )
    with pytest.warns(fpnets.ConvergenceWarning, match=r"IFT adjoint solve did not converge.*max_iter=2"):
        _loss(sol.value).backward()
    sol = fpnets.fixed_point(
        op, torch.zeros(4, 5, dtype=D), x, solver=FORWARD, backward=IFT(CGNormal(1e-14, 1), throw=True)
    )
    with pytest.raises(fpnets.ConvergenceError, match=r"did not converge.*max_iter=1"):
        _loss(sol.value).backward()


@pytest.mark.parametrize(
    "solver", [Anderson(tol=0.0, max_iter=8, m=3), Picard(tol=0.0, max_iter=8, damping=0.6)]
)
def test_unrolled_gradient_of_a_fixed_depth_solve_passes_gradcheck(solver) -> None:
    op = TanhOperator(4, 3, gamma=0.8)

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        def t(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return 0.8 * torch.tanh(z @ w.T + x @ op.u.T + op.b)

        z0 = torch.zeros(x.shape[0], 4, dtype=D)
        u = fpnets.fixed_point(t, z0, x, solver=solver, backward=Unrolled(), warn=False).value
        # Unrolled differentiates the last evaluation T(u_{k-1}); shift the forward value to it
        # (a constant shift) so that finite differences see the same function
        return u + (t(u, x) - u).detach()

    x = torch.randn(3, 3, dtype=D, requires_grad=True)
    w = op.w.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (x, w))


@pytest.mark.parametrize(
    "backward", [JFB(), Neumann(3), IFT(Anderson(tol=1e-13, max_iter=300, relative=True))]
)
def test_whole_batch_solve_reuses_its_last_evaluation_for_the_gradient(backward) -> None:
    op = TanhOperator(5, 3)
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    calls = {"n": 0}

    def f(z: torch.Tensor) -> torch.Tensor:  # a closure: evaluated on the whole batch
        calls["n"] += 1
        return op(z, x)

    sol = fpnets.fixed_point(f, torch.zeros(4, 5, dtype=D), solver=FORWARD, backward=backward)
    assert calls["n"] == sol.evaluations  # no extra application of T for the gradient
    grads = torch.autograd.grad(_loss(sol.value), [*op.parameters(), x])
    _, reference = _grads(op, x, backward)  # the subset path, which applies T once more
    for got, want in zip(grads, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
