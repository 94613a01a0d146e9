"""The logit N-FPN (fpnets.tasks.games.LogitNashFPN): contraction, fixed point = QRE, gradients."""

from __future__ import annotations

import pytest
import torch

import fpnets
from fpnets.tasks.games import (
    ContractiveNashFPN,
    LogitNashFPN,
    build_game_model,
    mse_loss,
    solve_qre,
)

F64 = torch.float64


def _scaled(model: torch.nn.Module, factor: float) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    return model


def test_softmax_jacobian_norm_is_at_most_one_half() -> None:
    # the bound behind γ = ρ/2: ‖diag(p) − ppᵀ‖₂ ≤ 1/2, attained at p = (1/2, 1/2, 0, …)
    torch.manual_seed(0)
    logits = 4 * torch.randn(500, 6, dtype=F64)
    p = torch.softmax(logits, -1)
    J = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    assert torch.linalg.matrix_norm(J, ord=2).max() <= 0.5 + 1e-12
    half = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=F64)
    J = torch.diag(half) - torch.outer(half, half)
    assert torch.linalg.matrix_norm(J, ord=2).item() == pytest.approx(0.5)


def test_logit_operator_is_a_contraction_for_any_parameters() -> None:
    torch.manual_seed(1)
    n = 5
    model = _scaled(LogitNashFPN(n, rho=1.5).double(), 50.0)  # far outside the initial range
    assert model.contraction_bound == pytest.approx(0.75)
    d = 3 * torch.randn(64, 3, dtype=F64)  # contexts outside [0, 1] too
    G, c = model.injection(d)
    assert torch.linalg.matrix_norm(G, ord=2).max() <= model.rho + 1e-9
    # on the simplices, where the iterates live, and off them
    z = torch.softmax(3 * torch.randn(64, 2, n, dtype=F64), -1)
    y = torch.softmax(3 * torch.randn(64, 2, n, dtype=F64), -1)
    z_off, y_off = 2 * torch.randn(64, 2, n, dtype=F64), 2 * torch.randn(64, 2, n, dtype=F64)
    for a, b in ((z, y), (z_off, y_off), (z, z + 1e-4 * torch.randn_like(z))):
        num = torch.linalg.vector_norm((model.operator(a, G, c) - model.operator(b, G, c)).flatten(1), dim=-1)
        ratio = num / torch.linalg.vector_norm((a - b).flatten(1), dim=-1)
        assert ratio.max() <= model.contraction_bound + 1e-9


def test_logit_outputs_are_strictly_inside_the_simplices_and_converge() -> None:
    torch.manual_seed(2)
    model = _scaled(LogitNashFPN(4, solver=fpnets.Picard(tol=1e-12, max_iter=200)).double(), 5.0)
    x = model(torch.rand(32, 3, dtype=F64))
    assert model.solution is not None and model.solution.converged.all()
    assert (x > 0).all()
    torch.testing.assert_close(x.sum(-1), torch.ones(32, 2, dtype=F64))
    # Picard with a γ-contraction: at most log(tol / r₀)/log γ + 2 iterations
    assert (
        model.solution.iterations.max() <= torch.log(torch.tensor(1e-12)) / torch.log(torch.tensor(0.5)) + 2
    )


def test_fixed_point_is_the_qre_of_the_learned_game() -> None:
    torch.manual_seed(3)
    n = 6
    model = LogitNashFPN(n, rho=1.9, solver=fpnets.Picard(tol=1e-13, max_iter=500)).double()
    d = torch.rand(16, 3, dtype=F64)
    # untrained, c ≡ 0: the learned game is the zero-sum game with payoff G(d), and the fixed point is
    # its QRE as the library's exact Newton solver computes it
    G, c = model.injection(d)
    assert c.abs().max() == 0
    x = model(d).detach()
    ref = solve_qre(G.detach(), tol=1e-13)
    assert ref.converged.all()
    torch.testing.assert_close(x, ref.x, atol=1e-11, rtol=0)
    # with a linear term: F_Θ(x) = K(d)x + c(d) + log x + 1 is constant across each player's actions
    with torch.no_grad():
        model.offset[-1].weight.normal_(0, 2.0)
        model.offset[-1].bias.normal_(0, 2.0)
    x = model(d).detach()
    G, c = model.injection(d)
    F = model.coupled(x, G) + c + torch.log(x) + 1
    assert c.abs().max() > 0.1
    assert (F - F.mean(-1, keepdim=True)).abs().max() <= 1e-10


def test_jfb_is_a_descent_direction_and_exact_modes_agree() -> None:
    d = torch.rand(12, 3, dtype=F64)
    target = torch.softmax(torch.randn(12, 2, 5, dtype=F64), -1)
    grads = {}
    for name, backward in (
        ("jfb", fpnets.JFB()),
        ("ift", fpnets.IFT(fpnets.Anderson(tol=1e-12, max_iter=200))),
        ("unrolled", fpnets.Unrolled()),
    ):
        torch.manual_seed(4)
        model = LogitNashFPN(
            5, rho=1.0, solver=fpnets.Picard(tol=1e-12, max_iter=200), backward=backward, warn=False
        ).double()
        _scaled(model, 2.0)
        mse_loss(model(d), target).backward()
        grads[name] = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(grads["ift"], grads["unrolled"], rtol=1e-6, atol=1e-10)
    cos = torch.nn.functional.cosine_similarity(grads["jfb"], grads["ift"], dim=0)
    assert cos > 0.5  # γ = 1/2: the paper's condition for a descent direction holds
    assert not torch.allclose(grads["jfb"], grads["ift"])  # JFB is not the exact gradient


def test_no_dead_outputs_where_the_projection_has_them() -> None:
    # the same coupling and a linear term that pushes one action far down: the projected step of the
    # contractive N-FPN sets it to exactly 0 (zero gradient there), the logit step keeps it positive
    torch.manual_seed(5)
    n = 4
    d = torch.rand(8, 3, dtype=F64)
    target = torch.full((8, 2, n), 1 / n, dtype=F64)
    for cls, dead in ((ContractiveNashFPN, True), (LogitNashFPN, False)):
        torch.manual_seed(6)
        model = cls(n, solver=fpnets.Picard(tol=1e-12, max_iter=300), warn=False).double()
        with torch.no_grad():
            model.offset[-1].bias.zero_()
            model.offset[-1].bias[0] = 20.0  # c₁ of action 0: a high cost for player 1
        x = model(d)
        mse_loss(x, target).backward()
        grad = model.offset[-1].bias.grad
        assert ((x[:, 0, 0] == 0).all()) == dead
        assert (grad[0] == 0) == dead
        assert (grad != 0).sum() >= 2 * n - 1


def test_bad_rho_is_refused_and_the_registry_builds_it() -> None:
    for rho in (0.0, 2.0, -1.0):
        with pytest.raises(ValueError, match=r"rho must lie in \(0, 2\) for a contraction"):
            LogitNashFPN(3, rho=rho)
    model = build_game_model("logit", 4, rho=0.5, hidden=7)
    assert isinstance(model, LogitNashFPN) and model.contraction_bound == 0.25
    assert model.offset[0].out_features == 7
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['mu'\] for 'logit'"):
        build_game_model("logit", 4, mu=1.0)
    with pytest.raises(ValueError, match=r"the context must be \(B, 3\)"):
        model(torch.rand(2, 4))
