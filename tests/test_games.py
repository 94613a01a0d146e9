"""Contextual matrix games (fpnets.tasks.games): exact QREs, the QRE layer, data, models, metrics."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fpnets
from fpnets.operators.simplex import project_simplex
from fpnets.tasks.games import (
    DIRECTIONS,
    ContractiveNashFPN,
    GameDataConfig,
    GameDataError,
    NashFPN,
    PayoffNet,
    QREConvergenceError,
    QREConvergenceWarning,
    antisymmetric,
    best_response,
    build_game_model,
    duality_gap,
    game_gradient,
    game_metrics,
    generate_games,
    load_games,
    mse_loss,
    payoff_matrices,
    payoff_net_hidden_for,
    projected_residual,
    qre,
    qre_residual,
    solve_qre,
)
from fpnets.tasks.games.data import cache_path
from fpnets.tasks.games.models import contraction_factor

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


def _games(n: int, count: int, seed: int, scale: float = 10.0, signed: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    W = torch.rand(n * (n - 1) // 2, 3, generator=gen, dtype=F64)
    W = scale * (2 * W - 1 if signed else W)
    d = torch.rand(count, 3, generator=gen, dtype=F64)
    return payoff_matrices(W, d, n)


def _random_profiles(count: int, n: int, gen: torch.Generator) -> torch.Tensor:
    e = -torch.log(torch.rand(count, 2, n, generator=gen, dtype=F64))
    return e / e.sum(-1, keepdim=True)


def _f(B: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """f(x₁, x₂) = x₁ᵀBx₂ + Σx₁ log x₁ − Σx₂ log x₂ (player 1 minimises, player 2 maximises)."""
    bil = (x1.unsqueeze(-2) @ B @ x2.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    return bil + torch.special.xlogy(x1, x1).sum(-1) - torch.special.xlogy(x2, x2).sum(-1)


# ----------------------------------------------------------------------------------------------
# Exact QREs


@pytest.mark.parametrize(
    ("n", "count", "signed"), [(3, 100, False), (10, 30, True), (40, 8, False), (100, 2, True)]
)
def test_solver_certificates(n: int, count: int, signed: bool) -> None:
    B = _games(n, count, seed=n, signed=signed)
    sol = solve_qre(B)
    assert sol.converged.all()
    x = sol.x
    assert (x > 0).all()
    torch.testing.assert_close(x.sum(-1), torch.ones(count, 2, dtype=F64), rtol=0, atol=1e-13)
    assert qre_residual(B, x).max() <= 1e-10
    torch.testing.assert_close(sol.residual, qre_residual(B, x), rtol=0, atol=1e-15)
    assert projected_residual(B, x).max() <= 1e-10
    assert projected_residual(B, x, step=0.01).max() <= 1e-10
    assert duality_gap(B, x).abs().max() <= 1e-10


def test_sign_convention_from_the_game_gradient() -> None:
    """The QRE solves the VI ⟨F(x*), y − x*⟩ ≥ 0 and is a saddle point of f (minimiser first)."""
    B = _games(6, 20, seed=1, signed=True)
    x = solve_qre(B).x
    gen = torch.Generator().manual_seed(2)
    y = _random_profiles(20, 6, gen)
    vi = (game_gradient(B, x) * (y - x)).sum(dim=(-2, -1))
    assert vi.min() >= -1e-10
    # F(x*) is constant on each block (the KKT multipliers): F(x*) = −λ 1
    F = game_gradient(B, x)
    assert (F - F.mean(-1, keepdim=True)).abs().max() <= 1e-9
    value = _f(B, x[:, 0], x[:, 1])
    assert (_f(B, x[:, 0], y[:, 1]) <= value + 1e-12).all()  # player 2 cannot gain
    assert (_f(B, y[:, 0], x[:, 1]) >= value - 1e-12).all()  # player 1 cannot lower her cost
    # flipping the roles (−B) is another game: x* is not its equilibrium
    assert qre_residual(-B, x).min() > 1e-3


def test_uniqueness_from_different_starts() -> None:
    B = _games(8, 25, seed=3, signed=True)
    ref = solve_qre(B).x
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        init = _random_profiles(25, 8, gen) ** 4  # far from uniform
        init = init / init.sum(-1, keepdim=True)
        other = solve_qre(B, init=init).x
        torch.testing.assert_close(other, ref, rtol=0, atol=1e-10)


def test_known_answers() -> None:
    n = 5
    # B = 0: both uniform
    x = solve_qre(torch.zeros(3, n, n, dtype=F64)).x
    torch.testing.assert_close(x, torch.full((3, 2, n), 1 / n, dtype=F64), rtol=0, atol=1e-14)
    # generalised rock-paper-scissors (cyclic antisymmetric): uniform by symmetry and uniqueness
    c = torch.zeros(n, dtype=F64)
    c[1], c[-1] = 4.0, -4.0
    rps = torch.stack([torch.roll(c, i) for i in range(n)])
    assert torch.equal(rps, -rps.T)
    x = solve_qre(rps.unsqueeze(0)).x
    torch.testing.assert_close(x, torch.full((1, 2, n), 1 / n, dtype=F64), rtol=0, atol=1e-12)
    # B = u 1ᵀ (row costs independent of the opponent): x₁ = softmax(−u), x₂ uniform
    u = torch.tensor([0.0, 1.0, -2.0, 3.0, 0.5], dtype=F64)
    x = solve_qre((u.unsqueeze(-1) * torch.ones(n, dtype=F64)).unsqueeze(0)).x
    torch.testing.assert_close(x[0, 0], torch.softmax(-u, 0), rtol=0, atol=1e-13)
    torch.testing.assert_close(x[0, 1], torch.full((n,), 1 / n, dtype=F64), rtol=0, atol=1e-13)


def test_large_payoffs_keep_tiny_probabilities_accurate() -> None:
    B = _games(20, 10, seed=5, scale=100.0)
    x = solve_qre(B).x
    assert x.min() < 1e-30  # probabilities far below the absolute tolerance ...
    br = best_response(B, x)
    rel = (x.log() - br.log()).abs().max()  # ... are accurate in relative terms
    assert rel <= 1e-8


def test_duality_gap_is_kl_sum_and_positive_off_equilibrium() -> None:
    B = _games(7, 15, seed=6, signed=True)
    gen = torch.Generator().manual_seed(7)
    x = _random_profiles(15, 7, gen)
    br = best_response(B, x)
    kl = (x * (x.log() - br.log())).sum(dim=(-2, -1))
    torch.testing.assert_close(duality_gap(B, x), kl, rtol=1e-12, atol=1e-12)
    assert (duality_gap(B, x) > 1e-6).all()
    assert (qre_residual(B, x) > 1e-6).all()
    # on the boundary (zero entries) both stay finite and positive
    vertex = torch.zeros(15, 2, 7, dtype=F64)
    vertex[..., 0] = 1.0
    assert torch.isfinite(duality_gap(B, vertex)).all() and (duality_gap(B, vertex) > 0).all()


def test_qre_layer_gradient_matches_finite_differences() -> None:
    gen = torch.Generator().manual_seed(8)
    B = (3.0 * torch.randn(2, 4, 4, generator=gen, dtype=F64)).requires_grad_()  # any square game
    assert torch.autograd.gradcheck(lambda b: qre(b), (B,), eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)
    v = torch.randn(1, 6, generator=gen, dtype=F64).requires_grad_()  # antisymmetric parametrisation
    assert torch.autograd.gradcheck(lambda w: qre(antisymmetric(w, 4)), (v,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_solver_failures_are_reported() -> None:
    B = _games(6, 4, seed=9, signed=True)
    with pytest.raises(QREConvergenceError, match="raise max_iter"):
        solve_qre(B, max_iter=1, throw=True)
    with pytest.warns(QREConvergenceWarning, match="still above tol"):
        sol = solve_qre(B, max_iter=1)
    assert not sol.converged.all()
    bad = B.clone()
    bad[0, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        solve_qre(bad)
    with pytest.raises(ValueError, match="square"):
        solve_qre(torch.zeros(2, 3, 4, dtype=F64))
    with pytest.raises(ValueError, match=r"\(\.\.\., 2, n\)"):
        qre_residual(B, torch.zeros(4, 3, 6, dtype=F64))
    with pytest.raises(ValueError, match="> 0"):
        game_gradient(B, torch.zeros(4, 2, 6, dtype=F64))


# ----------------------------------------------------------------------------------------------
# Data


def test_generated_data_are_exact_and_seeded() -> None:
    cfg = GameDataConfig(4, n_train=30, n_val=10, n_test=10, seed=11)
    data = generate_games(cfg)
    assert data.train.target.shape == (30, 2, 4) and data.test.context.shape == (10, 3)
    for name in ("train", "val", "test"):
        s = data.split(name)
        assert s.residual.max() <= cfg.tol
        assert qre_residual(data.payoff(s.context), s.target).max() <= 1e-12
        assert ((s.context >= 0) & (s.context <= 1)).all()
    B = data.payoff(data.train.context)
    torch.testing.assert_close(B, -B.transpose(-1, -2), rtol=0, atol=0)
    assert ((data.W >= 0) & (data.W <= 10)).all()
    again = generate_games(cfg)
    assert torch.equal(again.W, data.W) and torch.equal(again.test.target, data.test.target)
    other = generate_games(GameDataConfig(4, n_train=30, n_val=10, n_test=10, seed=12))
    assert not torch.equal(other.W, data.W)


def test_cache_reuses_only_matching_files(tmp_path: Path) -> None:
    cfg = GameDataConfig(3, n_train=12, n_val=4, n_test=4, seed=0)
    first = load_games(cfg, tmp_path)
    path = cache_path(cfg, tmp_path)
    assert path.exists()
    second = load_games(cfg, tmp_path)
    assert torch.equal(first.train.target, second.train.target)
    other = GameDataConfig(3, n_train=12, n_val=4, n_test=4, seed=0, payoff_high=5.0)
    assert cache_path(other, tmp_path) != path  # other parameters: another file, generated afresh
    assert not torch.equal(load_games(other, tmp_path).W, first.W)
    assert len(list(tmp_path.glob("games-n3-*.pt"))) == 2


def _tamper(path: Path, edit: object) -> None:
    payload = torch.load(path, weights_only=True)
    edit(payload)  # type: ignore[operator]
    torch.save(payload, path)


def test_cache_rejects_mismatched_or_corrupt_files(tmp_path: Path) -> None:
    cfg = GameDataConfig(3, n_train=12, n_val=4, n_test=4, seed=0)
    load_games(cfg, tmp_path)
    path = cache_path(cfg, tmp_path)
    good = path.read_bytes()

    def params(p: dict) -> None:
        p["params"] = p["params"].replace('"seed": 0', '"seed": 1')

    def nan(p: dict) -> None:
        p["train"]["target"][0, 0, 0] = float("nan")

    def wrong(p: dict) -> None:
        p["test"]["target"] = p["test"]["target"].flip(-1)

    def shape(p: dict) -> None:
        p["val"]["context"] = p["val"]["context"][:2]

    for edit, message in [
        (params, "other parameters"),
        (nan, "NaN"),
        (wrong, "not the QRE"),
        (shape, "shape"),
    ]:
        path.write_bytes(good)
        _tamper(path, edit)
        with pytest.raises(GameDataError, match=message):
            load_games(cfg, tmp_path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(GameDataError, match="delete"):
        load_games(cfg, tmp_path)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="n_actions"):
        GameDataConfig(1)
    with pytest.raises(ValueError, match="payoff_low <= payoff_high"):
        GameDataConfig(3, payoff_low=2.0, payoff_high=1.0)
    with pytest.raises(ValueError, match="tol"):
        GameDataConfig(3, tol=1e-3)


# ----------------------------------------------------------------------------------------------
# Models


def test_nash_fpn_forward_and_gradients() -> None:
    torch.manual_seed(0)
    model = NashFPN(4, alpha=0.5, solver=fpnets.Picard(tol=1e-6, max_iter=300))
    d = torch.rand(8, 3)
    x = model(d)
    assert x.shape == (8, 2, 4) and (x >= 0).all()
    torch.testing.assert_close(x.sum(-1), torch.ones(8, 2))
    sol = model.solution
    assert sol is not None and sol.iterations.shape == (8,)
    # the returned value is a fixed point of T (to the solver's tolerance)
    with torch.no_grad():
        q = model.injection(d)
        r = torch.linalg.vector_norm(model.operator(x.detach(), *q) - x.detach(), dim=(1, 2))
    assert torch.allclose(r[sol.converged], sol.residual[sol.converged], atol=1e-6)
    mse_loss(x, torch.full_like(x, 0.25)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0


def test_contractive_variant_is_a_contraction_for_any_parameters() -> None:
    torch.manual_seed(1)
    n = 5
    model = ContractiveNashFPN(n, mu=1.0, rho=2.0).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(50.0)  # far outside the initial range
    gamma = model.contraction_bound
    assert gamma == pytest.approx(2.0 / math.sqrt(5.0))
    d = 3 * torch.randn(64, 3, dtype=F64)  # contexts outside [0, 1] too
    G, c = model.injection(d)
    assert torch.linalg.matrix_norm(G, ord=2).max() <= model.rho + 1e-9
    z, y = 2 * torch.randn(64, 2, n, dtype=F64), 2 * torch.randn(64, 2, n, dtype=F64)
    Fz, Fy = model.game_map(z, G, c), model.game_map(y, G, c)
    diff = (z - y).flatten(1)
    # strongly monotone with modulus μ exactly (the coupling is antisymmetric) and L ≤ √(μ² + ρ²)
    torch.testing.assert_close(((Fz - Fy).flatten(1) * diff).sum(-1), model.mu * diff.pow(2).sum(-1))
    lip = torch.linalg.vector_norm((Fz - Fy).flatten(1), dim=-1) / diff.norm(dim=-1)
    assert lip.max() <= math.sqrt(model.mu**2 + model.rho**2) + 1e-9
    ratio = torch.linalg.vector_norm((model.operator(z, G, c) - model.operator(y, G, c)).flatten(1), dim=-1)
    assert (ratio / diff.norm(dim=-1)).max() <= gamma + 1e-9
    # hence Picard reaches tol within log(tol / ‖T(z₀) − z₀‖) / log γ + 1 further steps
    model.solver = fpnets.Picard(tol=1e-8, max_iter=500)
    model(d[:8])
    assert model.solution.converged.all()
    z0 = torch.full((8, 2, n), 1 / n, dtype=F64)
    r0 = torch.linalg.vector_norm(model.operator(z0, G[:8], c[:8]) - z0, dim=(1, 2))
    bound = torch.log(1e-8 / r0) / math.log(gamma) + 2
    assert (model.solution.iterations <= bound.clamp(min=1)).all()


def test_contraction_factor_formula() -> None:
    mu, L = 0.5, 2.0
    for alpha in (0.01, 0.1, mu / L**2, 0.2, 0.24):  # (0, 2μ/L²) = (0, 0.25)
        assert contraction_factor(alpha, mu, L) < 1
    for alpha in (0.25, 0.3, 1.0):
        assert contraction_factor(alpha, mu, L) >= 1
    # the bound is attained by the linear map μI + K (K antisymmetric, ‖K‖ = √(L² − μ²))
    K = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64) * math.sqrt(L**2 - mu**2)
    M = torch.eye(2, dtype=F64) - 0.1 * (mu * torch.eye(2, dtype=F64) + K)
    assert torch.linalg.matrix_norm(M, ord=2).item() == pytest.approx(contraction_factor(0.1, mu, L))
    with pytest.raises(ValueError, match="alpha must lie"):
        ContractiveNashFPN(3, mu=1.0, rho=1.0, alpha=1.0)


def test_models_accept_core_solvers_and_backward_modes() -> None:
    torch.manual_seed(2)
    d = torch.rand(6, 3, dtype=F64)
    target = torch.full((6, 2, 3), 1 / 3, dtype=F64)
    grads = []
    for backward in (fpnets.JFB(), fpnets.IFT(fpnets.Anderson(tol=1e-10, max_iter=200)), fpnets.Unrolled()):
        torch.manual_seed(3)
        model = ContractiveNashFPN(
            3, solver=fpnets.Anderson(tol=1e-10, max_iter=200), backward=backward, warn=False
        ).double()
        mse_loss(model(d), target).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    # IFT (exact) and unrolled through a converged solve agree; JFB differs but is finite
    torch.testing.assert_close(grads[1], grads[2], rtol=1e-5, atol=1e-8)
    assert torch.isfinite(grads[0]).all()


def test_payoff_net_gradient_and_solution() -> None:
    torch.manual_seed(4)
    model = PayoffNet(4, hidden=5, tol=1e-13).double()
    assert sum(p.numel() for p in model.parameters()) == 4 * 5 + 6 * 6
    d = torch.rand(5, 3, dtype=F64)
    x = model(d)
    B = model.payoff(d).detach()
    assert qre_residual(B, x.detach()).max() <= 1e-10
    assert model.solution is not None and model.solution.converged.all()
    target = torch.rand(5, 2, 4, dtype=F64)
    target = target / target.sum(-1, keepdim=True)
    params = list(model.parameters())
    loss = mse_loss(model(d), target)
    grads = torch.autograd.grad(loss, params)
    gen = torch.Generator().manual_seed(5)
    for p, g in zip(params, grads, strict=True):
        v = torch.randn(p.shape, generator=gen, dtype=F64)
        h = 1e-6
        with torch.no_grad():
            p.add_(h * v)
            up = mse_loss(model(d), target)
            p.sub_(2 * h * v)
            down = mse_loss(model(d), target)
            p.add_(h * v)
        assert float((g * v).sum()) == pytest.approx(float((up - down) / (2 * h)), rel=1e-5, abs=1e-10)


def test_build_and_parameter_matching() -> None:
    n = 10
    nfpn = build_game_model("nfpn", n)
    count = sum(p.numel() for p in nfpn.parameters())
    assert count == 4 * 2 * n + (2 * n + 1) * 2 * n
    h = payoff_net_hidden_for(count, n)
    pn = build_game_model("payoffnet", n, hidden=h)
    assert abs(sum(p.numel() for p in pn.parameters()) - count) <= 4 + 45
    with pytest.raises(ValueError, match="unknown model"):
        build_game_model("nash", n)
    with pytest.raises(ValueError, match="unknown option"):
        build_game_model("nfpn", n, gamma=0.5)
    with pytest.raises(ValueError, match=r"context must be \(B, 3\)"):
        nfpn(torch.rand(4, 2))


# ----------------------------------------------------------------------------------------------
# Metrics and a short training run


def test_metrics_are_zero_exactly_at_the_qre() -> None:
    data = generate_games(GameDataConfig(5, n_train=0, n_val=0, n_test=16, seed=3))
    s = data.test
    B = data.payoff(s.context)
    at = game_metrics(s.target, s.target, B, iterations=torch.arange(16))
    assert set(at) == set(DIRECTIONS) and all(v == "lower" for v in DIRECTIONS.values())
    assert (
        at["mse"].max() == 0 and at["qre_residual"].max() <= 1e-12 and at["duality_gap"].abs().max() <= 1e-12
    )
    uniform = torch.full_like(s.target, 0.2)
    off = game_metrics(uniform, s.target, B)
    assert (off["mse"] > 0).all() and (off["qre_residual"] > 1e-3).all() and (off["duality_gap"] > 1e-3).all()
    torch.testing.assert_close(off["mse"].mean(), mse_loss(uniform, s.target))
    projected = project_simplex(s.target + 0.3 * torch.randn_like(s.target))  # with zero entries
    assert torch.isfinite(game_metrics(projected, s.target, B)["duality_gap"]).all()
    with pytest.raises(ValueError, match=r"payoff must be \(B, n, n\)"):
        game_metrics(uniform, s.target, B[:, :4, :4])


def test_short_training_lowers_the_test_error() -> None:
    data = generate_games(GameDataConfig(3, n_train=32, n_val=0, n_test=32, seed=0))
    torch.manual_seed(0)
    model = NashFPN(3, warn=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    d, x = data.train.context.float(), data.train.target.float()

    def test_mse() -> float:
        with torch.no_grad():
            return float(mse_loss(model(data.test.context.float()), data.test.target.float()))

    before = test_mse()
    for _ in range(20):
        opt.zero_grad()
        mse_loss(model(d), x).backward()
        opt.step()
    assert test_mse() < 0.5 * before


def test_doc_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    text = (ROOT / "docs" / "games.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks
    for code in blocks:
        exec(compile(code, "docs/games.md", "exec"), {"__name__": "__doc_example__"})
    assert "qre_residual" in capsys.readouterr().out


TINY_BENCH = ["--sizes", "3", "--train", "16", "--val", "8", "--test", "8", "--epochs", "1", "--batch", "8"]


def run_games_bench(*args: str) -> subprocess.CompletedProcess[str]:
    """benchmarks/games_vs_payoffnet.py on tiny games (n = 3, one epoch) with ``args`` added."""
    return subprocess.run(
        [sys.executable, "games_vs_payoffnet.py", *TINY_BENCH, *args],
        cwd=ROOT / "benchmarks",
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_benchmark_script_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "games.json"
    proc = run_games_bench("--data-dir", str(tmp_path / "data"), "--out", str(out), "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    import json

    rows = json.loads(out.read_text())["rows"]
    assert {r["model"] for r in rows} == {
        "nfpn",
        "contractive",
        "logit",
        "payoff",
        "payoff-cold",
        "payoffnet",
    }
    for r in rows:
        assert r["n"] == 3 and r["epochs"] == 1
        keys = (
            "test_mse",
            "test_qre_residual",
            "test_duality_gap",
            "test_iterations",
            "train_time_s",
            "forward_s",
        )
        for key in keys:
            assert math.isfinite(r[key]) and r[key] >= 0, (r["model"], key)
        assert r["forward_s"] <= r["train_time_s"]


def _games_benchmark_module():  # type: ignore[no-untyped-def]
    """benchmarks/games_vs_payoffnet.py imported as a module (it imports benchmarks/common.py)."""
    import importlib

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("games_vs_payoffnet")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_paper_pgd_targets_are_early_stopped_projected_gradient_not_qres() -> None:
    from fpnets.tasks.games import GameDataConfig, generate_games, projected_residual, qre_residual

    bench = _games_benchmark_module()
    data = generate_games(GameDataConfig(4, n_train=6, n_val=2, n_test=2, seed=3))
    B = data.payoff(data.train.context)
    x, steps = bench.paper_pgd_targets(B)
    # points of the simplices, reached by the 1e-8 stop long before the 20,000-step cap
    assert x.shape == (6, 2, 4) and bool((x >= 0).all())
    torch.testing.assert_close(x.sum(-1), torch.ones(6, 2, dtype=torch.float64))
    assert 100 < steps < 20_000
    # the step sizes sum to about 1e-2, so the iterates stay far from the exact QREs
    assert float(qre_residual(B, x).min()) > 1e-2
    assert float(((x - data.train.target) ** 2).mean()) > 1e-3
    assert float(projected_residual(B, data.train.target).max()) < 1e-10  # the QREs are fixed points
    # the replacement keeps contexts and exact QREs aside, per split
    replaced, exact, facts = bench.with_paper_targets(data)
    torch.testing.assert_close(replaced.train.context, data.train.context)
    torch.testing.assert_close(exact["test"], data.test.target)
    assert facts["steps"] > 100 and facts["mse_to_qre"]["train"] > 1e-3
    assert not torch.allclose(replaced.val.target, data.val.target)


def test_benchmark_script_paper_targets_and_peer_errors(tmp_path: Path) -> None:
    import json

    out = tmp_path / "games.json"
    proc = run_games_bench(
        "--models", "contractive,payoffnet", "--targets", "paper-pgd", "--out", str(out), "--threads", "1"
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(out.read_text())
    assert payload["paper_targets"]["3"]["steps"] > 100
    for r in payload["rows"]:
        assert math.isfinite(r["test_mse_to_qre"]) and r["test_mse_to_qre"] > 0
    broken = tmp_path / "broken"  # a checkout whose Networks.py needs a module that is not installed
    (broken / "matrix-games").mkdir(parents=True)
    (broken / "matrix-games" / "Networks.py").write_text("import a_module_that_is_not_installed\n")
    for extra, message in (
        (["--models", "payoffnet-authors"], "needs --peer-dir"),
        (["--models", "payoffnet-authors", "--peer-dir", str(tmp_path)], "no matrix-games/Networks.py"),
        (["--targets", "bogus"], "--targets must be one of qre, paper-pgd"),
        (["--models", "logit", "--rho", "2.5"], "--models logit: LogitNashFPN: rho must lie in (0, 2)"),
        (
            ["--models", "contractive", "--rho", "0"],
            "--models contractive: ContractiveNashFPN: mu and rho must be > 0",
        ),
        (
            ["--models", "payoffnet-authors", "--peer-dir", str(broken)],
            "importing matrix-games/Networks.py failed",
        ),
    ):
        proc = run_games_bench(*extra)
        assert proc.returncode != 0 and message in proc.stderr, (extra, proc.stderr)


def test_benchmark_script_trains_a_peer_payoff_net_from_peer_dir(tmp_path: Path) -> None:
    """The peer's module layout (matrix-games/Networks.py with Payoff_Net(n, k) → (B, 2n)), imitated
    by a tiny softmax model: the script imports it from --peer-dir, trains and tests it."""
    import json

    folder = tmp_path / "peer" / "matrix-games"
    folder.mkdir(parents=True)
    (folder / "Networks.py").write_text(
        "import torch\n"
        "class Payoff_Net(torch.nn.Module):\n"
        "    def __init__(self, n, k=3):\n"
        "        super().__init__()\n"
        "        self.n, self.fc = n, torch.nn.Linear(k, 2 * n)\n"
        "    def forward(self, d):\n"
        "        z = self.fc(d).view(-1, 2, self.n).softmax(-1)\n"
        "        return z.reshape(-1, 2 * self.n)\n"
    )
    out = tmp_path / "games.json"
    proc = run_games_bench(
        "--models", "payoffnet-authors", "--peer-dir", str(tmp_path / "peer"), "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "payoffnet-authors" and row["parameters"] == 3 * 6 + 6
    assert 0 < row["test_mse"] < 1 and "test_iterations" not in row


@pytest.mark.parametrize("name", ["nfpn", "contractive", "logit", "payoff", "payoffnet"])
def test_every_model_names_non_finite_contexts(name: str) -> None:
    model = build_game_model(name, 4)
    d = torch.rand(13, 3)
    d[2, 0], d[11, 2] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"the contexts hold NaN or Inf \(rows \[2, 11\]\); clean or drop"):
        model(d)
