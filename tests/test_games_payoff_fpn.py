"""The model-based N-FPN for matrix games (PayoffNashFPN): fixed point, gradient, warm starts."""

from __future__ import annotations

import pytest
import torch

import fpnets
from fpnets.tasks.games import PayoffNashFPN, PayoffNet, build_game_model, mse_loss, qre_residual

F64 = torch.float64


def pair(n: int = 5, hidden: int = 6, seed: int = 0, scale: float = 3.0) -> tuple[PayoffNashFPN, PayoffNet]:
    """A PayoffNashFPN and a PayoffNet with the same payoff network (float64, payoffs of size ~scale)."""
    torch.manual_seed(seed)
    fpn = PayoffNashFPN(
        n, hidden=hidden, qre_tol=1e-13, solver=fpnets.Picard(tol=1e-10, max_iter=50)
    ).double()
    with torch.no_grad():
        for p in fpn.net.parameters():
            p.mul_(scale)
    net = PayoffNet(n, hidden=hidden, tol=1e-13).double()
    net.load_state_dict(fpn.state_dict())
    return fpn, net


def target_like(x: torch.Tensor, seed: int) -> torch.Tensor:
    t = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return t / t.sum(-1, keepdim=True)


def test_output_is_the_qre_of_the_learned_payoff_and_a_fixed_point_of_t() -> None:
    fpn, net = pair()
    d = torch.rand(8, 3, dtype=F64)
    x = fpn(d)
    B = fpn.payoff(d).detach()
    assert float(qre_residual(B, x.detach()).max()) <= 1e-10
    torch.testing.assert_close(x.detach(), net(d).detach(), rtol=0, atol=1e-10)  # Payoff-Net's answer
    assert float((fpn.operator(x.detach(), B) - x.detach()).norm(dim=(1, 2)).max()) <= 1e-10
    sol = fpn.solution
    assert sol is not None and bool(sol.converged.all())
    # the reported depth is the Newton steps plus the one evaluation of T that checks the point
    assert torch.equal(sol.iterations, fpn.newton_iterations + 1)
    # a non-equilibrium profile is not a fixed point of T
    u = torch.full_like(x, 0.2)
    assert float((fpn.operator(u, B) - u).norm(dim=(1, 2)).min()) > 1e-3


def test_jfb_gradient_is_a_descent_direction_of_the_exact_loss() -> None:
    for seed in range(4):
        fpn, net = pair(seed=seed)
        d = torch.rand(16, 3, dtype=F64)
        target = target_like(fpn(d), seed)
        jfb = torch.autograd.grad(mse_loss(fpn(d), target), list(fpn.parameters()))
        exact = torch.autograd.grad(mse_loss(net(d), target), list(net.parameters()))  # implicit, exact
        g1 = torch.cat([g.flatten() for g in jfb])
        g2 = torch.cat([g.flatten() for g in exact])
        assert float(g1 @ g2) > 0.1 * float(g1.norm() * g2.norm()), seed
        # and the exact gradient is the derivative of the loss (central differences, one direction)
        v = torch.randn(g2.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
        h = 1e-6
        flat = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(flat + h * v, net.parameters())
            up = mse_loss(net(d), target)
            torch.nn.utils.vector_to_parameters(flat - h * v, net.parameters())
            down = mse_loss(net(d), target)
            torch.nn.utils.vector_to_parameters(flat, net.parameters())
        assert float(g2 @ v) == pytest.approx(float((up - down) / (2 * h)), rel=1e-5, abs=1e-12)


def test_adam_with_jfb_fits_games_of_the_same_model_class() -> None:
    # targets: the QREs of a payoff network with other weights; JFB training lowers the error 10×
    teacher, _ = pair(n=4, seed=1)
    d = torch.rand(64, 3, dtype=F64)
    with torch.no_grad():
        target = teacher(d)
    fpn, _ = pair(n=4, seed=2, scale=1.0)
    opt = torch.optim.Adam(fpn.parameters(), lr=3e-2)
    with torch.no_grad():
        first = float(mse_loss(fpn(d), target))
    for _ in range(150):
        opt.zero_grad()
        mse_loss(fpn(d), target).backward()
        opt.step()
    with torch.no_grad():
        last = float(mse_loss(fpn(d), target))
    assert last < 0.1 * first, (first, last)


def test_warm_start_reuses_the_last_solution_of_a_context() -> None:
    fpn, _ = pair(n=6)
    d = torch.rand(5, 3, dtype=F64)
    with torch.no_grad():
        first = fpn(d)
        cold = fpn.newton_iterations.clone()
        again = fpn(d)
    assert int(cold.min()) >= 2 and int(fpn.newton_iterations.max()) <= 1
    torch.testing.assert_close(again, first, rtol=0, atol=1e-12)
    assert len(fpn.warm) == 5
    none = PayoffNashFPN(6, hidden=6, warm_starts=0).double()
    none.load_state_dict(fpn.state_dict())
    with torch.no_grad():
        none(d)
        none(d)
    assert len(none.warm) == 0 and torch.equal(none.newton_iterations, cold)


def test_core_backward_modes_and_errors() -> None:
    fpn = build_game_model("payoff", 4, hidden=3, backward=fpnets.Unrolled())
    assert isinstance(fpn, PayoffNashFPN) and sum(p.numel() for p in fpn.parameters()) == 4 * 3 + 4 * 6
    x = fpn(torch.rand(3, 3))
    assert x.dtype == torch.float32 and x.shape == (3, 2, 4)
    x.sum().backward()
    with pytest.raises(ValueError, match=r"context must be \(B, 3\)"):
        fpn(torch.rand(3, 2))
    with pytest.raises(ValueError, match="contexts hold NaN or Inf"):
        fpn(torch.tensor([[0.1, float("nan"), 0.2]]))
    with pytest.raises(ValueError, match="alpha must be > 0"):
        PayoffNashFPN(4, alpha=0.0)
    with pytest.raises(ValueError, match="hidden must be >= 1"):
        PayoffNashFPN(4, hidden=0)
    with pytest.raises(ValueError, match="n_actions must be an integer >= 2"):
        PayoffNashFPN(1)
    with pytest.raises(ValueError, match="capacity must be an integer >= 0"):
        PayoffNashFPN(4, warm_starts=-1)
