"""The potential F-FPN (R_Θ = γ · convex-potential layers: Lip(T) ≤ γ by construction) and the
power-iteration Lipschitz rule of the paper-form F-FPN, on tiny geometries (16 × 16, 8 angles)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import fpnets
from fpnets.layers import lipschitz_estimate
from fpnets.operators.radon import ParallelBeamGeometry
from fpnets.tasks.ct import (
    FFPN,
    EllipseDataConfig,
    PotentialRegulariser,
    build_ct_model,
    load_ellipse_splits,
    reconstruction_loss,
)
from fpnets.train import ConfigError, load_config

GEOM = ParallelBeamGeometry(n=16, n_angles=8, n_detectors=23)
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sinograms(batch: int = 3, dtype: torch.dtype = F64) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = EllipseDataConfig(geometry=GEOM, n_train=batch, n_val=0, n_test=0, seed=3)
    data = load_ellipse_splits(None, cfg)
    return data.train.sinograms.to(dtype), data.train.images.to(dtype)


def test_potential_regulariser_is_a_gamma_contraction_for_any_weights() -> None:
    torch.manual_seed(0)
    reg = PotentialRegulariser(channels=3, blocks=3, gamma=0.8, activation="relu", scale=5.0).double()
    with torch.no_grad():  # large raw weights and biases: the bound must hold anyway
        for p in reg.parameters():
            p.normal_(0.0, 10.0)
    assert reg.lipschitz_bound == 0.8
    u = torch.rand(4, 1, 12, 12, dtype=F64)
    v = u + 0.1 * torch.randn_like(u)
    ratio = torch.linalg.vector_norm((reg(u) - reg(v)).flatten(1), dim=1) / torch.linalg.vector_norm(
        (u - v).flatten(1), dim=1
    )
    assert (ratio <= 0.8 * (1 + 1e-9)).all()
    assert (lipschitz_estimate(reg, u, iters=40) <= 0.8 * (1 + 1e-9)).all()


def test_potential_ffpn_converges_to_the_unique_fixed_point_and_trains() -> None:
    d, u_true = sinograms()
    torch.manual_seed(1)
    model = build_ct_model(
        "ffpn-potential",
        GEOM,
        channels=3,
        blocks=2,
        gamma=0.6,
        scale=50.0,
        solver=fpnets.Picard(tol=1e-9, max_iter=300),
    ).double()
    assert isinstance(model, FFPN) and isinstance(model.regulariser, PotentialRegulariser)
    assert model.lipschitz_bound == pytest.approx(0.6)  # γ · Lip(P_d) = γ · 1
    assert model.lipschitz == "none"
    u = model(d)
    assert model.solution is not None and model.solution.converged.all()
    # the fixed point is unique: Anderson from zeros lands on the same image
    other = build_ct_model(
        "ffpn-potential",
        GEOM,
        channels=3,
        blocks=2,
        gamma=0.6,
        scale=50.0,
        init="zeros",
        solver=fpnets.Anderson(tol=1e-9, max_iter=300),
    ).double()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(d), u.detach(), rtol=0, atol=1e-7)
    reconstruction_loss(u, u_true).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(float(g.abs().sum()) > 0 for g in grads)  # V, b of every layer and the centre c


def test_potential_options_are_refused_elsewhere() -> None:
    with pytest.raises(TypeError, match="activation apply to the potential regulariser only"):
        FFPN(GEOM, activation="tanh")
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        build_ct_model("ffpn-potential", GEOM, activation="gelu")
    with pytest.raises(ValueError, match=r"gamma \(γ\) must lie in \(0, 1\)"):
        PotentialRegulariser(gamma=1.0)


def test_power_rule_rescales_an_expansive_operator_to_one() -> None:
    d, u_true = sinograms(2, torch.float32)
    torch.manual_seed(2)
    model = FFPN(GEOM, channels=3, blocks=2, lipschitz="power", solver=fpnets.Picard(tol=1e-3, max_iter=3))
    with torch.no_grad():  # make R_Θ strongly expansive
        for p in model.regulariser.rescalable_parameters():
            p.mul_(4.0)
    model.train()
    reconstruction_loss(model(d), u_true).backward()
    before = [p.detach().clone() for p in model.regulariser.rescalable_parameters()]
    rho = model.after_optimizer_step()
    assert rho is not None and rho > 1.0
    factor = (1.0 / rho) ** (1 / 2)  # (1/ρ)^(1/blocks)
    for after, old in zip(model.regulariser.rescalable_parameters(), before, strict=True):
        torch.testing.assert_close(after.detach(), old * factor)
    assert model.rescales == 1
    assert model.after_optimizer_step() is None  # the stored point is used once


def test_power_rule_leaves_a_nonexpansive_operator_alone() -> None:
    # with R_Θ's weights and biases at zero, R is the identity and T = P_d is nonexpansive: the
    # estimate (a lower bound of ‖∂T/∂u‖₂) stays ≤ 1 and nothing is rescaled
    d, _ = sinograms(2, F64)
    model = FFPN(
        GEOM, channels=3, blocks=2, lipschitz="power", solver=fpnets.Picard(tol=1e-6, max_iter=50)
    ).double()
    with torch.no_grad():
        for p in model.regulariser.rescalable_parameters():
            p.zero_()
    model.train()
    model(d)
    rho = model.after_optimizer_step()
    assert rho is not None and 0.5 < rho <= 1.0 + 1e-9
    assert model.rescales == 0


def test_configs_build_the_potential_variant_and_the_power_rule() -> None:
    cfg = load_config("ct-ellipses", ["model.variant=potential", "data.image_size=16", "data.angles=8"])
    model = cfg.make_task().build_model()
    assert isinstance(model.regulariser, PotentialRegulariser)
    assert isinstance(model.solver, fpnets.Anderson) and model.solver.max_iter == 100
    assert model.lipschitz_bound == pytest.approx(cfg.model.gamma) and cfg.model.gamma < 1
    ffpn = load_config("ct-ellipses", ["model.variant=ffpn", "model.lipschitz=power", "data.image_size=16"])
    assert ffpn.make_task().build_model().lipschitz == "power"
    with pytest.raises(ConfigError, match=r"model.activation applies to the potential variant"):
        load_config("ct-ellipses", ["model.variant=ffpn", "model.activation=tanh"])
    with pytest.raises(ConfigError, match=r"model.scale must be > 0"):
        load_config("ct-ellipses", ["model.variant=potential", "model.scale=0"])
    with pytest.raises(ConfigError, match=r"model.lipschitz must be one of reference, power, none"):
        load_config("ct-ellipses", ["model.variant=ffpn", "model.lipschitz=random"])
