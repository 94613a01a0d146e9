"""Forward solves: accuracy, per-sample stopping, coupled operators, traces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fpnets
from fpnets import Anderson, FixedPointLayer, Picard

from conftest import contraction_matrix

SOLVERS = {
    "picard": lambda tol, cap: Picard(tol=tol, max_iter=cap),
    "km": lambda tol, cap: Picard(tol=tol, max_iter=cap, damping=0.7),
    "anderson": lambda tol, cap: Anderson(tol=tol, max_iter=cap, m=5),
    "anderson-damped": lambda tol, cap: Anderson(tol=tol, max_iter=cap, m=3, beta=0.8),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_linear_contraction_matches_closed_form(name: str, dtype: torch.dtype) -> None:
    n, batch, gamma = 30, 6, 0.8
    a = contraction_matrix(n, gamma, dtype)
    b = torch.randn(batch, n, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    sol = fpnets.fixed_point(
        lambda z, b: z @ a.T + b, torch.zeros_like(b), b, solver=SOLVERS[name](tol, 2000)
    )
    exact = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - a.double(), b.double().T).T
    assert sol.value.dtype == dtype
    assert bool(sol.converged.all()), sol.message
    assert sol.status is fpnets.Status.CONVERGED
    # ‖u − u*‖ ≤ ‖T(u) − u‖ / (1 − γ) for a γ-contraction
    err = torch.linalg.vector_norm(sol.value.double() - exact, dim=1)
    slack = 1e-4 if dtype == torch.float32 else 1e-12
    assert torch.all(err <= tol / (1 - gamma) + slack), err
    assert torch.all(sol.residual <= tol)
    # the reported residual is the residual of the returned value
    recomputed = torch.linalg.vector_norm(sol.value @ a.T + b - sol.value, dim=1)
    torch.testing.assert_close(sol.residual, recomputed, rtol=1e-3, atol=1e-6)


def test_anderson_needs_fewer_evaluations_than_picard() -> None:
    n, gamma = 40, 0.95
    a = contraction_matrix(n, gamma)
    b = torch.randn(8, n, dtype=torch.float64)
    kw = dict(tol=1e-8, max_iter=2000)
    pic = fpnets.fixed_point(lambda z, b: z @ a.T + b, torch.zeros_like(b), b, solver=Picard(**kw))
    and_ = fpnets.fixed_point(lambda z, b: z @ a.T + b, torch.zeros_like(b), b, solver=Anderson(m=8, **kw))
    assert and_.iterations.max() < pic.iterations.min()


@pytest.mark.parametrize("beta", [1.0, 0.7])
def test_anderson_on_a_channels_last_latent_matches_the_nchw_solve(beta: float) -> None:
    # Anderson keeps its history in T's memory order; the iterates must not depend on the layout
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.mul_(0.5)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    solver = Anderson(tol=0.0, max_iter=7, m=3, beta=beta)
    plain = fpnets.fixed_point(
        lambda z, x: conv(z) + x, torch.zeros_like(x), x, solver=solver, warn=False, trace=True
    )
    conv_cl = conv.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def t_cl(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = conv_cl(z) + x
        assert z.is_contiguous(memory_format=torch.channels_last)  # every iterate stays NHWC
        return out

    nhwc = fpnets.fixed_point(t_cl, torch.zeros_like(x_cl), x_cl, solver=solver, warn=False, trace=True)
    assert not nhwc.value.is_contiguous()
    assert nhwc.value.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc.trace, plain.trace, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(nhwc.value, plain.value, rtol=1e-10, atol=1e-12)


def test_relative_residual() -> None:
    a = contraction_matrix(10, 0.5)
    b = 1000.0 * torch.randn(3, 10, dtype=torch.float64)
    sol = fpnets.fixed_point(
        lambda z, b: z @ a.T + b, torch.zeros_like(b), b, solver=Picard(tol=1e-6, max_iter=200, relative=True)
    )
    fz = sol.value @ a.T + b
    rel = torch.linalg.vector_norm(fz - sol.value, dim=1) / torch.linalg.vector_norm(fz, dim=1)
    assert torch.all(rel <= 1e-6)
    torch.testing.assert_close(sol.residual, rel, rtol=1e-6, atol=0)


def _scalar_contraction(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """T(z; c, b) = c_b z + 1 for c = column 0 of the argument: (B, n), (B, 1) -> (B, n)."""
    return c * z + 1.0


@pytest.mark.parametrize("name", ["picard", "anderson"])
def test_per_sample_stopping_depths_and_solo_equality(name: str) -> None:
    c = torch.tensor([[0.05], [0.9], [0.3], [0.97]], dtype=torch.float64)
    z0 = torch.zeros(4, 5, dtype=torch.float64)
    batch_sizes: list[int] = []

    def f(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        batch_sizes.append(z.shape[0])
        return _scalar_contraction(z, c)

    solver = SOLVERS[name](1e-9, 1000)
    with torch.no_grad():  # no gradient to attach: the solve's evaluations only
        sol = fpnets.fixed_point(f, z0, c, solver=solver)
    assert len(set(sol.iterations.tolist())) >= (4 if name == "picard" else 2)  # depth varies per sample
    order = torch.argsort(c.squeeze(1))
    assert torch.all(sol.iterations[order][1:] >= sol.iterations[order][:-1])  # harder → deeper
    # T ran on the active samples only: the batch shrank as samples converged
    assert batch_sizes[0] == 4 and min(batch_sizes) == int((sol.iterations == sol.iterations.max()).sum())
    assert sum(batch_sizes) == int(sol.iterations.sum())
    for i in range(4):
        solo = fpnets.fixed_point(_scalar_contraction, z0[i : i + 1], c[i : i + 1], solver=solver)
        assert torch.equal(solo.value[0], sol.value[i])
        assert int(solo.iterations[0]) == int(sol.iterations[i])
        torch.testing.assert_close(
            sol.value[i], torch.full((5,), 1 / (1 - float(c[i])), dtype=torch.float64), rtol=0, atol=1e-7
        )


def test_closure_without_args_evaluates_whole_batch_but_freezes() -> None:
    c = torch.tensor([[0.05], [0.9]], dtype=torch.float64)
    sizes: list[int] = []

    def f(z: torch.Tensor) -> torch.Tensor:
        sizes.append(z.shape[0])
        return _scalar_contraction(z, c)

    sol = fpnets.fixed_point(f, torch.zeros(2, 3, dtype=torch.float64), solver=Picard(tol=1e-9, max_iter=500))
    assert set(sizes) == {2}
    solo = fpnets.fixed_point(
        _scalar_contraction,
        torch.zeros(1, 3, dtype=torch.float64),
        c[:1],
        solver=Picard(tol=1e-9, max_iter=500),
    )
    assert torch.equal(sol.value[0], solo.value[0])
    assert sol.iterations[0] < sol.iterations[1]


class _BatchNormOperator(nn.Module):
    """T(u; x) = 0.5 · BN(W u) + x: couples samples while BN uses batch statistics."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.lin = nn.Linear(n, n, bias=False)
        self.bn = nn.BatchNorm1d(n, affine=False)
        with torch.no_grad():
            self.lin.weight.copy_(contraction_matrix(n, 0.5, torch.float32))

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.bn(self.lin(u)) + x


def test_coupled_operator_evaluates_whole_batch_and_freezes_converged() -> None:
    op = _BatchNormOperator(6)
    sizes: list[int] = []
    op.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape[0]))
    layer = FixedPointLayer(op, Picard(tol=1e-3, max_iter=200), trace=True, warn=False)
    x = torch.randn(16, 6)
    x[:4] *= 0.01  # small inputs: these settle sooner
    layer.train()
    assert fpnets.couples_samples(op)
    layer(x)
    sol = layer.solution
    assert sol is not None and sol.trace is not None
    assert set(sizes) == {16}  # whole batch each time, the coupling is respected
    # a frozen sample keeps its residual in the trace from the step it converged on
    depth = sol.iterations
    for b in range(16):
        k = int(depth[b])
        assert torch.all(sol.trace[k - 1 :, b] == sol.trace[k - 1, b])
    # in eval mode BN uses running statistics: samples are independent, subsets are evaluated
    layer.eval()
    assert not fpnets.couples_samples(op)
    sizes.clear()
    out = layer(x)
    assert min(sizes) < 16 or bool((layer.solution.iterations == layer.solution.iterations[0]).all())
    solo = layer(x[5:6])
    torch.testing.assert_close(solo[0], out[5], rtol=0, atol=1e-6)


def test_trace_records_residual_history() -> None:
    a = contraction_matrix(8, 0.5)
    b = torch.randn(3, 8, dtype=torch.float64)
    sol = fpnets.fixed_point(
        lambda z, b: z @ a.T + b, torch.zeros_like(b), b, solver=Picard(tol=1e-8, max_iter=100), trace=True
    )
    assert sol.trace is not None
    assert sol.trace.shape == (int(sol.iterations.max()), 3)
    torch.testing.assert_close(sol.trace[-1], sol.residual)
    # while a sample is active, a 0.5-contraction's residual shrinks at least by half per Picard step
    active = torch.arange(1, sol.trace.shape[0])[:, None] < sol.iterations[None, :]
    shrinks = sol.trace[1:] <= 0.5 * sol.trace[:-1] + 1e-15
    assert torch.all(shrinks | ~active)
    # and once frozen, it stays
    assert torch.all((sol.trace[1:] == sol.trace[:-1]) | active)


def test_fixed_point_layer_keeps_solution_and_initial_latent() -> None:
    class Op(nn.Module):
        def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * u + x

        def initial_latent(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x  # already the fixed point

    layer = FixedPointLayer(Op(), Picard(tol=1e-12, max_iter=10))
    x = torch.randn(3, 4, dtype=torch.float64)
    out = layer(x)
    torch.testing.assert_close(out, 2 * x)
    assert layer.solution is not None
    assert layer.solution.iterations.tolist() == [1, 1, 1]
    assert not layer.solution.value.requires_grad
    assert "converged" in layer.solution.message
