"""The bpr traffic N-FPN: learned capacities in the BPR cost form, forward by the assignment solver,
the exact Davis–Yin fixed point from an equilibrium, and JFB through one step at it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import fpnets
from fpnets.tasks.traffic import ContextModel, Network, TrafficNFPN, solve_equilibrium, traffic_loss
from fpnets.tasks.traffic.assignment import all_or_nothing, commodity_flows, splitting_latent
from test_traffic_models import small_network


class TrueCosts(nn.Module):
    """F(X, d) = t(sX; d)/τ with the true contextual costs (context features: the capacities)."""

    def __init__(self, network: Network, model: ContextModel, scale: float, tau: float) -> None:
        super().__init__()
        self.network, self.model, self.scale, self.tau = network, model, scale, tau

    def context_features(self, d: torch.Tensor) -> torch.Tensor:  # (B, m) normalised -> (B, E)
        return torch.as_tensor(self.model.capacity(self.network, d.double().numpy() * 10.0))

    def forward(self, x: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        t0 = torch.as_tensor(self.network.free_flow_time)
        return t0 * (1 + self.model.b * (self.scale * x.clamp_min(0) / cap) ** 4) / self.tau


@pytest.mark.parametrize("commodity", ["origin", "od"])
def test_splitting_latent_is_the_davis_yin_fixed_point(commodity: str) -> None:
    # at an equilibrium, ζ* = x*/s − (α/τ) r is a fixed point of T and P_C1(ζ*) returns the flows;
    # the small network has zones that may not be passed through (forbidden links in C1)
    net = small_network()
    cm = ContextModel.random(net, seed=0)
    d = cm.sample(3, seed=1)
    costs = cm.costs(net, d)
    res = solve_equilibrium(net, costs, gap=1e-13, max_iter=400)
    scale, tau, alpha = 50.0, 1.3, 0.2
    flows = commodity_flows(net, res.paths, res.path_flow, commodity)
    zeta = splitting_latent(
        net, costs.time(res.link_flow), flows, alpha, flow_scale=scale, time_scale=tau, commodity=commodity
    )
    model = TrafficNFPN(net, scale, alpha=alpha, commodity=commodity).double()
    model.game = TrueCosts(net, cm, scale, tau)
    cd = model.game.context_features(torch.as_tensor(d) / 10.0)
    z = torch.as_tensor(zeta)
    step = model.operator(z, cd)
    # (the model keeps its projection basis in float32, so 1e-6 is its resolution)
    assert float((step - z).norm()) <= 1e-6 * float(z.norm())
    np.testing.assert_allclose(model.readout(z).numpy(), res.link_flow, rtol=1e-10, atol=1e-7)
    # the reduced costs are >= 0, so ζ* <= x*/s, with equality on the used links
    assert np.all(zeta <= flows / scale + 1e-12)
    # flows that are not an equilibrium (all-or-nothing on free-flow paths) are no fixed point
    aon = np.broadcast_to(all_or_nothing(net, commodity=commodity), flows.shape)
    bad = splitting_latent(
        net, costs.time(aon.sum(1)), aon, alpha, flow_scale=scale, time_scale=tau, commodity=commodity
    )
    zb = torch.as_tensor(bad)
    assert float((model.operator(zb, cd) - zb).norm()) > 1e-3 * float(zb.norm())


def bpr_model(net: Network, **kw) -> TrafficNFPN:
    kw.setdefault("solver", fpnets.Picard(tol=1e-5, max_iter=5))  # the projection basis is float32
    return TrafficNFPN(net, 50.0, variant="bpr", gap=1e-12, rounds=400, **kw).double()


def test_bpr_forward_is_the_equilibrium_of_its_costs_and_certified() -> None:
    # untrained, ĉ = c₀ and B̂ = the file's B: the output is the file's equilibrium, found at ζ*
    torch.manual_seed(0)
    net = small_network()
    model = bpr_model(net, hidden=8)
    d = 10 * torch.rand(4, 10, dtype=torch.float64)
    with torch.no_grad():
        x = model(d)
    ref = solve_equilibrium(net, gap=1e-13).link_flow
    np.testing.assert_allclose(x.numpy(), np.repeat(ref, 4, axis=0), rtol=1e-7, atol=1e-5)  # float32 basis
    sol = model.solution
    assert sol is not None and bool(sol.converged.all()) and sol.iterations.max() == 1
    assert model.equilibrium_gap is not None and model.equilibrium_gap.max() <= 1e-12
    # the parameter count and the error for a parameter count the capacity net cannot take
    assert sum(p.numel() for p in model.parameters()) == 10 * 8 + 8 + 8 * 8 + 8 + 8 * 14 + 14 + 1
    with pytest.raises(ValueError, match=r"cap_range must lie in \(0, 1\)"):
        TrafficNFPN(net, 50.0, variant="bpr", cap_range=1.0)
    with pytest.raises(ValueError, match=r"gap must lie in \(0, 1\)"):
        TrafficNFPN(net, 50.0, variant="bpr", gap=0.0)


def test_bpr_warm_start_needs_one_round_for_a_context_seen_before() -> None:
    torch.manual_seed(0)
    net = small_network()
    model = bpr_model(net, hidden=8)
    with torch.no_grad():
        for p in model.game.capacity_net.parameters():
            p.normal_(0, 0.3)  # capacities that depend on the context
    d = 10 * torch.rand(5, 10, dtype=torch.float64)
    with torch.no_grad():
        first = model(d)
        rounds_first = model.equilibrium_rounds.copy()
        again = model(d)
    assert rounds_first.max() > 1 and model.equilibrium_rounds.max() == 1
    torch.testing.assert_close(again, first, rtol=1e-9, atol=1e-9)
    # the store is bounded: with room for 2 contexts it keeps the last 2 (same answer for all)
    small = bpr_model(net, hidden=8, warm_starts=2)
    small.load_state_dict(model.state_dict())
    keys = [row.tobytes() for row in d.numpy()]
    with torch.no_grad():
        small(d)
        assert len(small.warm) == 2
        assert [small.warm.get(k) is not None for k in keys] == [False, False, False, True, True]
        again = small(d)
    torch.testing.assert_close(again, first, rtol=1e-9, atol=1e-9)


def test_bpr_newton_steps_reach_the_same_equilibrium() -> None:
    # sweeps/newton change how the forward solve gets there, not where: the same learned costs give
    # the same certified equilibrium (and the same fixed point ζ*) either way
    torch.manual_seed(0)
    net = small_network()
    plain = bpr_model(net, hidden=8)
    with torch.no_grad():
        for p in plain.game.capacity_net.parameters():
            p.normal_(0, 0.3)
    fast = bpr_model(net, hidden=8, sweeps=2, newton=4)
    fast.load_state_dict(plain.state_dict())
    assert (fast.sweeps, fast.newton) == (2, 4) and (plain.sweeps, plain.newton) == (4, 0)
    d = 10 * torch.rand(6, 10, dtype=torch.float64)
    with torch.no_grad():
        x_plain, x_fast = plain(d), fast(d)
    assert fast.equilibrium_gap.max() <= 1e-12 and bool(fast.solution.converged.all())
    torch.testing.assert_close(x_fast, x_plain, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"sweeps must be >= 1 and newton >= 0, got sweeps=0"):
        TrafficNFPN(net, 50.0, variant="bpr", sweeps=0)
    with pytest.raises(ValueError, match=r"newton=-1"):
        TrafficNFPN(net, 50.0, variant="bpr", newton=-1)


def _loss(model: TrafficNFPN, d: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return traffic_loss(model(d), target, 50.0)


def test_bpr_jfb_gradient_is_a_descent_direction_and_training_fits_true_flows() -> None:
    # float64: the directional derivative of the exact loss (central differences, equilibria to gap
    # 1e-12) along the JFB gradient g is positive, so −g is a descent direction; Adam on JFB then
    # lowers the error on flows of the true contextual costs (by 40 % in 40 steps here)
    torch.manual_seed(0)
    base = small_network()
    net = dataclasses.replace(base, demand=6.0 * base.demand)  # congested: several paths in use
    cm = ContextModel.random(net, seed=0, cap_range=0.3)
    d = cm.sample(16, seed=2)
    target = torch.as_tensor(solve_equilibrium(net, cm.costs(net, d), gap=1e-13).link_flow)
    ctx = torch.as_tensor(d)
    model = bpr_model(net, hidden=0, cap_range=0.5)
    params = list(model.parameters())
    for _ in range(3):  # away from the symmetric start
        model.zero_grad()
        _loss(model, ctx, target).backward()
        with torch.no_grad():
            for p in params:
                p -= 0.05 * p.grad / (p.grad.norm() + 1e-30)
    model.zero_grad()
    _loss(model, ctx, target).backward()
    g = [p.grad.clone() for p in params]
    eps = 1e-5 / float(torch.sqrt(sum((gi**2).sum() for gi in g)))
    with torch.no_grad():
        for p, gi in zip(params, g, strict=True):
            p += eps * gi
        up = float(_loss(model, ctx, target))
        for p, gi in zip(params, g, strict=True):
            p -= 2 * eps * gi
        down = float(_loss(model, ctx, target))
        for p, gi in zip(params, g, strict=True):
            p += eps * gi
    assert (up - down) / (2 * eps) > 0
    # training on JFB gradients
    with torch.no_grad():
        start = float((model(ctx) - target).norm() / target.norm())
    opt = torch.optim.Adam(params, lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        _loss(model, ctx, target).backward()
        opt.step()
    with torch.no_grad():
        end = float((model(ctx) - target).norm() / target.norm())
    assert end < 0.7 * start  # measured: 0.109 -> 0.064
