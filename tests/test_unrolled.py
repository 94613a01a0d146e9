"""Unrolled backward against autograd through a hand-written loop, in float64.

The loop is ``for k: y = T(u); if r(u, y) <= tol or k == max_iter: stop; u = update(u, y)``, per
sample, with a stopped sample held at its value. Each sample returns u (the iterate whose residual
was measured) and carries the gradient of its last evaluation y = T(u). Samples stop at different
evaluations, the first one included, for per-sample and whole-batch (coupled) solves.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import fpnets
from fpnets import IFT, JFB, Anderson, Neumann, Picard, Solver, Unrolled

from conftest import contraction_matrix

D = torch.float64


def _residual(u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """r_b = ‖y_b − u_b‖₂ over the non-batch dimensions: (B, ...) -> (B,)."""
    return torch.linalg.vector_norm((y - u).reshape(u.shape[0], -1), dim=1)


def hand_loop(
    t: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, solver: Solver
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u*, T at each sample's last evaluation, depth) by the plain loop, on the whole batch.

    Picard is written out, u ← u + α(y − u); Anderson takes the solver's own step on the whole
    batch (its mixing coefficients are per sample, so a held sample does not change the others).
    """
    batch = z0.shape[0]
    mask_shape = (batch,) + (1,) * (z0.dim() - 1)
    u = z0
    done = torch.zeros(batch, dtype=torch.bool)
    depth = torch.zeros(batch, dtype=torch.long)
    value, last = torch.zeros_like(z0), torch.zeros_like(z0)
    state: tuple = ()
    for k in range(1, solver.max_iter + 1):
        y = t(u)  # evaluation k, on the whole batch (stopped samples held)
        stop = ~done & ((_residual(u, y) <= solver.tol) | (k == solver.max_iter))
        value = torch.where(stop.view(mask_shape), u, value)
        last = torch.where(stop.view(mask_shape), y, last)
        depth = torch.where(stop, k, depth)
        done = done | stop
        if bool(done.all()):
            break
        if isinstance(solver, Picard):
            new = u + solver.damping * (y - u)
        else:
            if k == 1:
                state = solver.init(u, y)
            new, state = solver.update(u, y, state, k)
        u = torch.where(done.view(mask_shape), u, new)
    return value, last, depth


class _Tanh(nn.Module):
    """T(u; x) = γ tanh(u Wᵀ + x Uᵀ + b), ‖W‖₂ = 1: a γ-contraction that does not couple samples."""

    def __init__(self, n: int = 5, m: int = 3, gamma: float = 0.8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.gamma = gamma
        self.w = nn.Parameter(contraction_matrix(n, 1.0, D, 3))
        self.u = nn.Parameter(torch.randn(n, m, generator=g, dtype=D) / m**0.5)
        self.b = nn.Parameter(0.1 * torch.randn(n, generator=g, dtype=D))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (B, n), (B, m) -> (B, n)
        return self.gamma * torch.tanh(z @ self.w.T + x @ self.u.T + self.b)


class _Coupled(nn.Module):
    """T(u; x) = 0.6 tanh(u Wᵀ + x) + 0.02 BN(u Vᵀ), BN with batch statistics: couples the samples.

    The coupling is weak, so that a sample started at the batch's fixed point still stops at its
    first evaluation while its neighbours, started away from it, move the batch statistics a little.
    """

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.w = nn.Parameter(contraction_matrix(n, 1.0, D, 5))
        self.v = nn.Parameter(contraction_matrix(n, 1.0, D, 6))
        self.bn = nn.BatchNorm1d(n, dtype=D)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (B, n), (B, n) -> (B, n)
        return 0.6 * torch.tanh(z @ self.w.T + x) + 0.02 * self.bn(z @ self.v.T)


SOLVERS = {
    "picard": Picard(tol=1e-7, max_iter=60),
    "km": Picard(tol=1e-7, max_iter=80, damping=0.7),
    "anderson": Anderson(tol=1e-7, max_iter=60, m=3),
    "anderson-damped": Anderson(tol=1e-7, max_iter=60, m=4, beta=0.8),
}


def _weights(shape: torch.Size) -> torch.Tensor:
    return torch.randn(shape, dtype=D, generator=torch.Generator().manual_seed(11))


def _loss(u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (c * u).sum() + (u**2).sum()


def _upstream(u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """g = ∂ℓ/∂u at u."""
    u = u.detach().requires_grad_()
    return torch.autograd.grad(_loss(u, c), u)[0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _start_near_fixed_point(op: nn.Module, x: torch.Tensor, offsets: list[float]) -> torch.Tensor:
    """z0 with row b at distance offsets[b] from u* (0: exactly u*); the batch fixed point for a coupled op."""
    with torch.no_grad():
        z0 = torch.zeros(x.shape[0], op.w.shape[0], dtype=D)
        solver = Anderson(tol=1e-14, max_iter=300, m=5)
        star = fpnets.fixed_point(op, z0, x, solver=solver, coupled=True, throw=True).value
    direction = _weights(star.shape)
    direction = direction / torch.linalg.vector_norm(direction, dim=1, keepdim=True)
    return star + torch.tensor(offsets, dtype=D)[:, None] * direction


def _compare(op: nn.Module, x: torch.Tensor, z0: torch.Tensor, solver: Solver, coupled: bool) -> torch.Tensor:
    params = [*op.parameters(), x]
    c = _weights(z0.shape)
    sol = fpnets.fixed_point(op, z0, x, solver=solver, backward=Unrolled(), coupled=coupled, warn=False)
    got = torch.autograd.grad(_loss(sol.value, c), params)

    value, last, depth = hand_loop(lambda u: op(u, x), z0, solver)
    upstream = _upstream(value, c)
    want = torch.autograd.grad(last, params, upstream)

    assert torch.equal(sol.iterations, depth)
    torch.testing.assert_close(sol.value, value, rtol=0, atol=1e-13)
    for a, b in zip(got, want, strict=True):
        # norm-wise: Anderson's small least-squares solves amplify the round-off of batched products
        assert _rel(a, b) < 1e-8, (a, b)
    return depth


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_per_sample_solve_matches_the_hand_written_loop(name: str) -> None:
    op = _Tanh()
    x = torch.randn(5, 3, dtype=D, generator=torch.Generator().manual_seed(1)).requires_grad_()
    # sample 0 starts at its fixed point, sample 1 next to it; the others start far away
    z0 = _start_near_fixed_point(op, x.detach(), [0.0, 3e-7, 1.0, 2.0, 0.5])
    depth = _compare(op, x, z0, SOLVERS[name], coupled=False)
    assert int(depth[0]) == 1 and 1 < int(depth[1]) < int(depth[2:].min()) and len(set(depth.tolist())) >= 3


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_coupled_solve_matches_the_hand_written_loop(name: str) -> None:
    op = _Coupled().train()
    x = torch.randn(5, 4, dtype=D, generator=torch.Generator().manual_seed(2)).requires_grad_()
    z0 = _start_near_fixed_point(op, x.detach(), [0.0, 2e-7, 6e-7, 2e-6, 5e-6])
    depth = _compare(op, x, z0, SOLVERS[name], coupled=True)
    assert int(depth[0]) == 1 and len(set(depth.tolist())) >= 2


@pytest.mark.parametrize("name", ["picard", "anderson"])
@pytest.mark.parametrize("coupled", [False, True])
def test_whole_batch_converging_at_the_first_evaluation(name: str, coupled: bool) -> None:
    op = _Coupled().train() if coupled else _Tanh(n=4, m=4)
    x = torch.randn(3, 4, dtype=D, generator=torch.Generator().manual_seed(4)).requires_grad_()
    z0 = _start_near_fixed_point(op, x.detach(), [0.0, 0.0, 0.0])
    depth = _compare(op, x, z0, SOLVERS[name], coupled=coupled)  # no "does not require grad" error
    assert depth.tolist() == [1, 1, 1]


def test_affine_map_exact_gradient_including_a_sample_at_its_fixed_point() -> None:
    # T(u) = 0.5 u + x from z0 = 0: u_j = 2(1 − 2⁻ʲ) x, so a sample stopping after k evaluations
    # returns u_{k−1} and carries d T(u_{k−1}) / dx = d u_k / dx = 2(1 − 2⁻ᵏ), which is 1 for k = 1
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=D, requires_grad=True)
    for solver in (Picard(tol=1e-6, max_iter=100), Anderson(tol=1e-6, max_iter=100, m=2)):
        grads = {}
        for backward in (Unrolled(), JFB(), IFT(), Neumann(3)):
            sol = fpnets.fixed_point(
                lambda u, x: 0.5 * u + x, torch.zeros(2, 2, dtype=D), x, solver=solver, backward=backward
            )
            grads[type(backward).__name__] = torch.autograd.grad(sol.value.sum(), x)[0]
        k = sol.iterations
        assert int(k[0]) == 1 and int(k[1]) > 1
        unrolled = grads["Unrolled"]
        if isinstance(solver, Picard):  # Anderson's mixing leaves the closed form of Picard's iterates
            exact = 2.0 * (1.0 - 0.5 ** k.to(D))
            torch.testing.assert_close(unrolled, exact[:, None].expand(2, 2), rtol=1e-12, atol=0)
        # at the first evaluation Unrolled is JFB's gradient ∂T/∂x = 1
        torch.testing.assert_close(unrolled[0], torch.ones(2, dtype=D), rtol=0, atol=0)
        torch.testing.assert_close(grads["JFB"][0], torch.ones(2, dtype=D), rtol=0, atol=0)
        torch.testing.assert_close(unrolled[1], grads["IFT"][1], rtol=1e-5, atol=0)  # 2 = (1 − 0.5)⁻¹


def test_whole_batch_at_its_fixed_point_backpropagates() -> None:
    x = torch.zeros(3, 2, dtype=D, requires_grad=True)
    sol = fpnets.fixed_point(lambda u, x: 0.5 * u + x, torch.zeros(3, 2, dtype=D), x, backward=Unrolled())
    assert sol.iterations.tolist() == [1, 1, 1]
    sol.value.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(3, 2, dtype=D), rtol=0, atol=0)


def test_gradient_reaches_z0_through_the_iterations() -> None:
    op = _Tanh()
    x = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(6))
    z0 = _start_near_fixed_point(op, x, [0.0, 1e-3, 0.5, 1.0]).requires_grad_()
    solver = SOLVERS["anderson"]
    c = _weights(z0.shape)
    sol = fpnets.fixed_point(op, z0, x, solver=solver, backward=Unrolled())
    (got,) = torch.autograd.grad(_loss(sol.value, c), z0)
    value, last, _ = hand_loop(lambda u: op(u, x), z0, solver)
    upstream = _upstream(value, c)
    (want,) = torch.autograd.grad(last, z0, upstream)
    assert _rel(got, want) < 1e-8
    assert bool((got[0] != 0).any())  # a sample stopped at evaluation 1 still reaches its z0 (∂T/∂u)
