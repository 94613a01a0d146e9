"""Traffic routing: the affine projection, the N-FPN (Davis–Yin) models and the baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fpnets
from fpnets.operators.affine import AffineProjection, project_affine
from fpnets.tasks.traffic import (
    ContextModel,
    ExplicitTrafficNet,
    MeanCapacityBaseline,
    Network,
    TrafficNFPN,
    solve_equilibrium,
    traffic_loss,
)
from fpnets.tasks.traffic.metrics import METRICS, evaluate
from fpnets.tasks.traffic.models import CocoerciveGameGradient

NETWORKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "transportation-networks"


# ---------------------------------------------------------------------------------------------- affine
def rank_deficient(m: int, n: int, r: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=g, dtype=torch.float64) @ torch.randn(
        r, n, generator=g, dtype=torch.float64
    )


def test_affine_projection_feasible_idempotent_orthogonal() -> None:
    m = rank_deficient(6, 10, 4)
    proj = AffineProjection(m)
    assert proj.rank == 4
    b = torch.randn(3, 5, 10, dtype=torch.float64) @ m.T  # (3, 5, 6), consistent right-hand sides
    x = torch.randn(3, 5, 10, dtype=torch.float64)
    px = proj(x, b)
    torch.testing.assert_close(px @ m.T, b, rtol=0, atol=1e-10)  # feasible
    torch.testing.assert_close(proj(px, b), px, rtol=0, atol=1e-12)  # idempotent
    # the residual x − P(x) is orthogonal to the set: ⟨x − Px, y − Px⟩ = 0 for feasible y
    y = proj(torch.randn(3, 5, 10, dtype=torch.float64), b)
    inner = ((x - px) * (y - px)).sum(-1)
    torch.testing.assert_close(inner, torch.zeros_like(inner), rtol=0, atol=1e-10)
    # it is the nearest point: no feasible y is closer
    assert torch.all((x - y).norm(dim=-1) >= (x - px).norm(dim=-1) - 1e-12)
    assert torch.all(proj.inconsistency(b) < 1e-10)
    assert torch.all(proj.inconsistency(torch.randn(4, 6, dtype=torch.float64)) > 1e-3)
    torch.testing.assert_close(project_affine(x, m, b), px)


def test_affine_projection_along_dim_and_errors() -> None:
    m = rank_deficient(4, 7, 3, seed=1)
    proj = AffineProjection(m)
    b = torch.randn(2, 7, dtype=torch.float64) @ m.T  # (2, 4)
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    px = proj(x, b.unsqueeze(-1), dim=1)  # n along dim 1
    torch.testing.assert_close(
        torch.einsum("mn,bnk->bmk", m, px), b.unsqueeze(-1).expand(2, 4, 5), atol=1e-10, rtol=0
    )
    with pytest.raises(ValueError, match="x must have size 7 along dim -1"):
        proj(torch.randn(2, 6, dtype=torch.float64), b)
    with pytest.raises(ValueError, match="M must be a 2-D"):
        AffineProjection(torch.ones(3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        AffineProjection(torch.tensor([[1.0, float("nan")]]))


# ---------------------------------------------------------------------------------------------- models
def small_network() -> Network:
    """A 5-node network, zones 1 and 2 (nodes 0, 1), both directions of a small grid."""
    pairs = [
        (0, 2),
        (2, 0),
        (0, 3),
        (3, 0),
        (2, 3),
        (3, 2),
        (2, 4),
        (4, 2),
        (3, 4),
        (4, 3),
        (4, 1),
        (1, 4),
        (3, 1),
        (1, 3),
    ]
    tail = np.array([a for a, _ in pairs])
    head = np.array([b for _, b in pairs])
    e = len(pairs)
    rng = np.random.default_rng(0)
    return Network(
        name="small",
        num_nodes=5,
        num_zones=2,
        first_thru_node=2,
        tail=tail,
        head=head,
        free_flow_time=1 + rng.random(e),
        capacity=50 + 50 * rng.random(e),
        b=np.full(e, 0.15),
        power=np.full(e, 4.0),
        demand=np.array([[0.0, 120.0], [80.0, 0.0]]),
    )


class OracleGame(nn.Module):
    """The true BPR costs as F_Θ: F(X, d) = t(s X; d) (context features are the capacities)."""

    def __init__(self, network: Network, model: ContextModel, scale: float) -> None:
        super().__init__()
        self.network, self.model, self.scale = network, model, scale

    def context_features(self, d: torch.Tensor) -> torch.Tensor:  # (B, m) normalised -> (B, E)
        cap = self.model.capacity(self.network, d.double().numpy() * 10.0)
        return torch.as_tensor(cap, dtype=d.dtype)

    def forward(self, x: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        t0 = torch.as_tensor(self.network.free_flow_time, dtype=x.dtype)
        return t0 * (1 + self.model.b * (self.scale * x.clamp_min(0) / cap) ** 4)


def test_dys_fixed_point_with_true_costs_is_the_equilibrium() -> None:
    # with F_Θ = the true link costs, the fixed point of the Davis–Yin operator is the Wardrop equilibrium
    net = small_network()
    cm = ContextModel.random(net, seed=0)
    d = cm.sample(3, seed=1)
    ref = solve_equilibrium(net, cm.costs(net, d), gap=1e-12).link_flow
    scale = 50.0
    model = TrafficNFPN(
        net, scale, alpha=0.3, solver=fpnets.Picard(tol=1e-8, max_iter=3000), warn=True
    ).double()
    model.game = OracleGame(net, cm, scale)
    with torch.no_grad():
        pred = model(torch.as_tensor(d))
    assert model.solution is not None and bool(model.solution.converged.all())
    np.testing.assert_allclose(pred.numpy(), ref, rtol=0, atol=1e-5 * ref.max())


def test_nfpn_parameter_count_matches_paper_on_sioux_falls_size() -> None:
    # the paper's 45,956 parameters depend only on E = 76 links and m = 10
    torch.manual_seed(0)
    from fpnets.tasks.traffic.models import PaperGameGradient

    game = PaperGameGradient(76, 10, 100)
    assert sum(p.numel() for p in game.parameters()) == 45956
    explicit = ExplicitTrafficNet(76, 1.0, num_params=45956)
    assert abs(sum(p.numel() for p in explicit.parameters()) - 45956) / 45956 < 0.01


def test_nfpn_forward_gradient_and_solution() -> None:
    net = small_network()
    model = TrafficNFPN(net, 50.0, hidden=16, max_iter=20, tol=1e-4)
    d = 10 * torch.rand(4, 10)
    x = model(d)
    assert x.shape == (4, net.num_links) and torch.all(x >= 0)
    sol = model.solution
    assert sol is not None and sol.iterations.shape == (4,) and sol.residual.shape == (4,)
    loss = traffic_loss(x, torch.ones_like(x) * 30, 50.0)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    # other solver/backward objects are accepted and do not change the forward value
    other = TrafficNFPN(
        net, 50.0, hidden=16, max_iter=20, tol=1e-4, backward=fpnets.IFT(fpnets.Picard(max_iter=5))
    )
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other(d), x)


@pytest.mark.parametrize("variant", ["averaged", "averaged-wide", "averaged-diag"])
def test_averaged_variant_condition_and_averagedness(variant: str) -> None:
    net = small_network()
    with pytest.raises(ValueError, match=r"alpha=.* must be below 2/\(K L\)"):
        TrafficNFPN(net, 50.0, variant=variant, alpha=1.0, hidden=8)
    model = TrafficNFPN(net, 50.0, variant=variant, alpha=0.5, hidden=8, mu=0.2).double()
    limit = model.averaged_step_limit()
    assert model.alpha < limit
    # make the unconstrained weight large so the spectral bound is active
    with torch.no_grad():
        model.game.a.weight.mul_(50.0)
    game = model.game
    assert isinstance(game, CocoerciveGameGradient)
    d = 10 * torch.rand(16, 10, dtype=torch.float64)
    cd = game.context_features(d / 10)
    # F_Θ is 1/L-cocoercive: ⟨F(X) − F(Y), X − Y⟩ ≥ ‖F(X) − F(Y)‖² / L
    x, y = (
        3 * torch.randn(16, net.num_links, dtype=torch.float64),
        3 * torch.randn(16, net.num_links, dtype=torch.float64),
    )
    with torch.no_grad():
        fx, fy = game(x, cd), game(y, cd)
    lhs = ((fx - fy) * (x - y)).sum(1)
    rhs = ((fx - fy) ** 2).sum(1) / game.lipschitz
    assert torch.all(lhs >= rhs - 1e-10)
    # T is θ-averaged with θ = 2β / (4β − α), β = 1/(K L):
    # ‖Tz − Tw‖² ≤ ‖z − w‖² − (1 − θ)/θ ‖(I − T)z − (I − T)w‖²
    beta = 1.0 / (model.num_commodities * game.lipschitz)
    theta = 2 * beta / (4 * beta - model.alpha)
    shape = (16, model.num_commodities, net.num_links)
    z, w = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        tz, tw = model.operator(z, cd), model.operator(w, cd)
    left = ((tz - tw) ** 2).sum((1, 2))
    right = ((z - w) ** 2).sum((1, 2)) - (1 - theta) / theta * (((z - tz) - (w - tw)) ** 2).sum((1, 2))
    assert torch.all(left <= right + 1e-9)


@pytest.mark.parametrize("variant", ["nfpn", "averaged", "averaged-wide", "averaged-diag"])
def test_operator_equals_the_composition_with_its_gradients(variant: str) -> None:
    # the fused evaluation of T equals z − x + P_C2(2x − z − α F(x)), value and every gradient
    net = small_network()
    model = TrafficNFPN(net, 50.0, variant=variant, alpha=0.05, hidden=8).double()
    assert float(model.allowed.min()) == 0.0  # some links are closed to some commodities
    g = torch.Generator().manual_seed(3)
    d = 10 * torch.rand(5, 10, dtype=torch.float64, generator=g)
    shape = (5, model.num_commodities, net.num_links)
    z0 = torch.randn(shape, dtype=torch.float64, generator=g)  # negative entries: C1 is active
    cotangent = torch.randn(shape, dtype=torch.float64, generator=g)
    results = []
    for op in (model.operator, model.operator_reference):
        model.zero_grad()
        z = z0.clone().requires_grad_(True)
        tz = op(z, model.game.context_features(model.normalize(d)))
        (tz * cotangent).sum().backward()
        params = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
        results.append((tz.detach(), z.grad, params))
    (t1, gz1, gp1), (t2, gz2, gp2) = results
    torch.testing.assert_close(t1, t2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gz1, gz2, rtol=1e-12, atol=1e-12)
    assert any(float(p.abs().max()) > 0 for p in gp1)
    for p1, p2 in zip(gp1, gp2, strict=True):
        torch.testing.assert_close(p1, p2, rtol=1e-10, atol=1e-12)
    # a non-contiguous latent gives the same image
    zt = z0.transpose(1, 2).contiguous().transpose(1, 2)
    assert not zt.is_contiguous()
    with torch.no_grad():
        cd = model.game.context_features(model.normalize(d))
        torch.testing.assert_close(model.operator(zt, cd), t1, rtol=1e-12, atol=1e-12)
        # and the input is left as it was (the in-place steps act on new tensors only)
        torch.testing.assert_close(zt, z0, rtol=0, atol=0)


def test_averaged_wide_parameter_count_and_trunk() -> None:
    # Sioux Falls size (E = 76 links, m = 10): trunk 10 → 170 → 170, heads [g, c] of 8 + 76, A 8 × 76
    game = CocoerciveGameGradient(76, 10, 8, context_hidden=170, context_depth=2)
    n = sum(p.numel() for p in game.parameters())
    assert n == (10 * 170 + 170) + (170 * 170 + 170) + (170 * 84 + 84) + 8 * 76 == 45912
    explicit = ExplicitTrafficNet(76, 1.0, num_params=45956)
    assert abs(n - sum(p.numel() for p in explicit.parameters())) / n < 0.01
    # the variant's defaults on another network: the same trunk, hidden = 8
    net = small_network()
    model = TrafficNFPN(net, 50.0, variant="averaged-wide", alpha=0.01)
    e = net.num_links
    expected = (10 * 170 + 170) + (170 * 170 + 170) + (170 * (8 + e) + 8 + e) + 8 * e
    assert sum(p.numel() for p in model.parameters()) == expected
    linears = [m for m in model.game.context_net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 170), (170, 170), (170, 8 + e)]
    with pytest.raises(ValueError, match=r"context_depth \(0\) and context_hidden \(170\) must be >= 1"):
        CocoerciveGameGradient(76, 10, 8, context_hidden=170, context_depth=0)


def test_averaged_diag_slopes_parameter_count_and_cocoercivity() -> None:
    # Sioux Falls size: trunk 10 → 143 → 143, heads [g, c, v] of 8 + 2 · 76, A 8 × 76
    game = CocoerciveGameGradient(76, 10, 8, context_hidden=143, context_depth=2, diagonal=True, mu=2.0)
    n = sum(p.numel() for p in game.parameters())
    assert n == (10 * 143 + 143) + (143 * 143 + 143) + (143 * 160 + 160) + 8 * 76 == 45813
    game = game.double()
    with torch.no_grad():  # spread the slopes over their range
        game.context_net[-1].weight.mul_(30.0)
    d = torch.rand(64, 10, dtype=torch.float64)
    cd = game.context_features(d)
    assert cd.shape == (64, 8 + 2 * 76)
    w = cd[:, 8 + 76 :]  # (64, E) the slopes w(d)
    assert torch.all(w >= 0.1 * 2.0) and torch.all(w <= 2.0) and w.min() < 0.3 and w.max() > 1.9
    # F_Θ(·, d) is 1/L-cocoercive for every context, also where slopes differ across links
    x, y = torch.randn(64, 76, dtype=torch.float64) * 3, torch.randn(64, 76, dtype=torch.float64) * 3
    with torch.no_grad():
        fx, fy = game(x, cd), game(y, cd)
    lhs = ((fx - fy) * (x - y)).sum(1)
    assert torch.all(lhs >= ((fx - fy) ** 2).sum(1) / game.lipschitz - 1e-10)
    # with A = 0 the map is exactly w(d) ⊙ X + c(d)
    with torch.no_grad():
        game.a.weight.zero_()
        torch.testing.assert_close(game(x, cd), w * x + cd[:, 8 : 8 + 76])
    with pytest.raises(ValueError, match=r"slope_floor must lie in \(0, 1\]"):
        CocoerciveGameGradient(76, 10, 8, diagonal=True, slope_floor=0.0)


def test_averaged_wide_forward_shapes_gradient_and_projection() -> None:
    net = small_network()
    torch.manual_seed(0)
    model = TrafficNFPN(
        net, 50.0, variant="averaged-wide", alpha=0.5, mu=1.0, bound=0.3, max_iter=3000, tol=1e-8
    ).double()
    d = 10 * torch.rand(3, 10, dtype=torch.float64)
    x = model(d)
    assert x.shape == (3, net.num_links) and torch.all(x >= 0)
    sol = model.solution
    assert sol is not None and bool(sol.converged.all())
    loss = traffic_loss(x, torch.full_like(x, 30.0), 50.0)
    loss.backward()
    trunk = model.game.context_net[2].weight.grad  # the second trunk layer (170, 170)
    assert trunk is not None and trunk.shape == (170, 170) and trunk.abs().sum() > 0
    # the output is feasible: flow conservation N X̂ = Σ_k b_k
    b = net.commodity_demand("origin").sum(0)  # (n,)
    np.testing.assert_allclose(x.detach().numpy() @ net.incidence.T, np.tile(b, (3, 1)), atol=1e-4)


def test_warm_starts_reuse_training_fixed_points_and_leave_evaluation_alone() -> None:
    net = small_network()
    torch.manual_seed(0)
    model = TrafficNFPN(
        net, 50.0, variant="averaged", hidden=16, alpha=0.5, mu=1.0, bound=0.3, max_iter=3000, tol=1e-8,
        warm_starts=3,
    ).double()  # fmt: skip
    d = 10 * torch.rand(4, 10, dtype=torch.float64)
    model.eval()
    cold = model(d).detach()
    cold_iters = model.solution.iterations.clone()
    assert len(model.warm) == 0  # evaluation neither reads nor writes the store
    assert int(cold_iters.min()) > 5
    model.train()
    first = model(d).detach()
    torch.testing.assert_close(first, cold)  # nothing stored yet: the same cold solve
    assert torch.equal(model.solution.iterations, cold_iters)
    assert len(model.warm) == 3  # capacity 3: the least recently used context was dropped
    again = model(d)
    iters = model.solution.iterations
    # the three stored contexts start at their fixed point (one evaluation meets the tolerance); the
    # dropped one starts cold again
    assert iters[1:].tolist() == [1, 1, 1] and int(iters[0]) == int(cold_iters[0])
    torch.testing.assert_close(again.detach(), cold, atol=1e-6, rtol=0)
    # after a parameter change the warm solve meets the tolerance in fewer iterations, at the same
    # fixed point as a cold solve
    with torch.no_grad():
        for p in model.game.parameters():
            p.mul_(1.01)
    warm = model(d[1:]).detach()
    warm_iters = model.solution.iterations
    model.eval()
    fresh = model(d[1:]).detach()
    assert bool((warm_iters < model.solution.iterations).all())
    torch.testing.assert_close(warm, fresh, atol=1e-5, rtol=0)
    # the gradient flows as without warm starts (JFB at the fixed point)
    model.train()
    loss = traffic_loss(model(d[1:]), torch.full_like(cold[1:], 30.0), 50.0)
    loss.backward()
    assert all(p.grad is not None for p in model.game.parameters() if p.requires_grad)
    # off by default for the Davis–Yin variants; bpr keeps its own store of path flows
    assert TrafficNFPN(net, 50.0, hidden=8).warm.capacity == 0
    with pytest.raises(ValueError, match=r"capacity must be an integer >= 0"):
        TrafficNFPN(net, 50.0, hidden=8, warm_starts=-1)


def test_nfpn_input_errors() -> None:
    net = small_network()
    model = TrafficNFPN(net, 50.0, hidden=8)
    with pytest.raises(ValueError, match="expects contexts of shape"):
        model(torch.rand(10))
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(torch.full((2, 10), float("nan")))
    with pytest.raises(ValueError, match="unknown variant"):
        TrafficNFPN(net, 50.0, variant="dense")


def test_baselines_and_evaluate(tmp_path: Path) -> None:
    from fpnets.tasks.traffic import build_dataset

    net = small_network()
    d = tmp_path / "Small"
    d.mkdir()
    lines = ["<NUMBER OF ZONES> 2", "<NUMBER OF NODES> 5", "<FIRST THRU NODE> 3", "<END OF METADATA>", ""]
    for a, b, t, c in zip(net.tail, net.head, net.free_flow_time, net.capacity, strict=True):
        lines.append(f"{a + 1}\t{b + 1}\t{c}\t1\t{t}\t0.15\t4\t0\t0\t1\t;")
    (d / "Small_net.tntp").write_text("\n".join(lines) + "\n")
    (d / "Small_trips.tntp").write_text(
        "<NUMBER OF ZONES> 2\n<TOTAL OD FLOW> 200\n<END OF METADATA>\nOrigin 1\n2 : 120;\nOrigin 2\n1 : 80;\n"
    )
    data = build_dataset(d, 8, 2, 4, seed=0, gap=1e-10)
    base = MeanCapacityBaseline.from_data(data)
    out = evaluate(base, data.test.context, data.test.flow, network=data.network, context_model=data.model)
    assert set(METRICS) - {"iterations"} <= set(out)
    assert torch.all(out["wardrop_gap"] >= -1e-12)  # feasible flows
    assert torch.all(out["conservation_error"] < 1e-6)
    model = TrafficNFPN(data.network, data.flow_scale(), hidden=8, max_iter=5)
    out = evaluate(model, data.test.context, data.test.flow, network=data.network, context_model=data.model)
    assert out["iterations"].shape == (4,) and out["prediction"].shape == data.test.flow.shape
    assert 0 <= out["trafix_total"] <= 1 and out["relative_error"].shape == (4,)


def test_plots_write_figures(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from fpnets.tasks.traffic.plots import flow_scatter, network_map

    net = small_network()
    with pytest.raises(ValueError, match="has no node coordinates"):
        network_map(net, np.ones(net.num_links))
    xy = np.array([[0.0, 0.0], [2.0, 0.0], [0.5, 1.0], [1.0, -1.0], [1.5, 1.0]])
    net = Network(
        **{**{k: getattr(net, k) for k in net.__dataclass_fields__ if k != "_cache"}, "coordinates": xy}
    )
    flows = np.linspace(0, 100, net.num_links)
    network_map(net, flows, tmp_path / "flow.png")
    with pytest.raises(ValueError, match="values must have shape"):
        network_map(net, flows[:-1])
    flow_scatter(torch.tensor(flows[None]), torch.tensor(flows[None] + 1), tmp_path / "scatter.png")
    assert (tmp_path / "flow.png").stat().st_size > 1000 and (tmp_path / "scatter.png").stat().st_size > 1000


def test_free_flow_initial_latent_is_feasible_and_commodity_flows_add_up() -> None:
    from fpnets.tasks.traffic.assignment import commodity_flows

    net = small_network()
    model = TrafficNFPN(net, 50.0, hidden=8).double()
    z0 = model.initial_latent(2, torch.float64, torch.device("cpu"))  # (2, K, E)
    torch.testing.assert_close(model.project_c1(z0), z0)  # in C1
    torch.testing.assert_close(model.project_c2(z0), z0, atol=1e-6, rtol=0)  # in C2 (float32 buffer)
    res = solve_equilibrium(net, gap=1e-10)
    for commodity in ("origin", "od"):
        xk = commodity_flows(net, res.paths, res.path_flow, commodity)  # (1, K, E)
        np.testing.assert_allclose(xk.sum(1), res.link_flow, rtol=1e-12)
        np.testing.assert_allclose(xk[0] @ net.incidence.T, net.commodity_demand(commodity), atol=1e-9)
    with pytest.raises(ValueError, match=r"initial must have shape \(2, 14\)"):
        TrafficNFPN(net, 50.0, hidden=8, initial=np.zeros((3, 14)))


# ------------------------------------------------------------------------------ standardised variants
def test_explicit_standardized_readout_and_errors() -> None:
    rng = np.random.default_rng(0)
    e = 14
    d_mean, d_std = 5 + rng.random(10), 1 + rng.random(10)
    x_mean, x_std = 20 + 10 * rng.random(e), 1 + rng.random(e)
    net = ExplicitTrafficNet(
        e, 30.0, hidden=16, context_stats=(d_mean, d_std), flow_stats=(x_mean, x_std)
    ).double()
    d = torch.as_tensor(10 * rng.random((4, 10)))
    # X̂ = m_X + σ_X ⊙ MLP((d − m_d) / σ_d), checked against the formula
    z = net.net((d - torch.as_tensor(d_mean)) / torch.as_tensor(d_std))
    np.testing.assert_allclose(net(d).detach().numpy(), (x_mean + x_std * z.detach().numpy()), rtol=1e-6)
    with torch.no_grad():  # a zero last layer predicts the per-link training mean
        net.net[-1].weight.zero_()
        net.net[-1].bias.zero_()
    np.testing.assert_allclose(net(d).detach().numpy(), np.tile(x_mean, (4, 1)), rtol=1e-6)
    with pytest.raises(ValueError, match="both context_stats and flow_stats"):
        ExplicitTrafficNet(e, 30.0, hidden=4, context_stats=(d_mean, d_std))
    with pytest.raises(ValueError, match=r"flow_stats: mean and std must have shape \(14,\)"):
        ExplicitTrafficNet(e, 30.0, hidden=4, context_stats=(d_mean, d_std), flow_stats=(x_mean[:3], x_std))
    with pytest.raises(ValueError, match="std positive"):
        ExplicitTrafficNet(e, 30.0, hidden=4, context_stats=(d_mean, 0 * d_std), flow_stats=(x_mean, x_std))


def test_anchored_averaged_fixed_point_projects_the_regression() -> None:
    # With A = 0 the anchored F_Θ(X, d) = μ (X − (m + σ ⊙ ĉ(d))) makes the Davis–Yin fixed point the
    # projection of the regression r(d) = m + σ ⊙ ĉ(d) onto the feasible link flows: it conserves flow
    # and is no farther than r(d) from any feasible flow (here the true equilibria).
    net = small_network()
    cm = ContextModel.random(net, seed=0)
    d = torch.as_tensor(cm.sample(3, seed=1))
    ref = solve_equilibrium(net, cm.costs(net, d.numpy()), gap=1e-12).link_flow  # (3, E) feasible
    rng = np.random.default_rng(1)
    stats = (d.mean(0).numpy(), 1 + rng.random(10))
    flows = (60 + 40 * rng.random(net.num_links), 5 + 10 * rng.random(net.num_links))
    torch.manual_seed(0)
    model = TrafficNFPN(
        net, 50.0, variant="averaged", hidden=8, alpha=0.5, mu=1.0, bound=0.3, max_iter=5000, tol=1e-7,
        context_stats=stats, flow_stats=flows,
    ).double()  # fmt: skip
    with torch.no_grad():
        model.game.a.weight.zero_()
    with torch.no_grad():
        x = model(d)
        cd = model.game.context_features(model.normalize(d))
        regression = -50.0 * cd[:, 8 : 8 + net.num_links] / model.game.mu  # r(d) in vehicles
    assert model.solution is not None and bool(model.solution.converged.all())
    np.testing.assert_allclose(
        regression.numpy(),
        flows[0] + flows[1] * model.game.context_net(model.normalize(d))[:, 8:].detach().numpy(),
        rtol=1e-6,
    )
    b = net.commodity_demand("origin").sum(0)
    np.testing.assert_allclose(x.numpy() @ net.incidence.T, np.tile(b, (3, 1)), atol=1e-4)  # float32 basis
    before = np.linalg.norm(regression.numpy() - ref, axis=1)
    after = np.linalg.norm(x.numpy() - ref, axis=1)
    assert np.all(after <= before + 1e-6) and np.all(before - after > 1e-3)  # strictly closer here


def test_standardize_errors_and_config_key() -> None:
    net = small_network()
    with pytest.raises(ValueError, match="flow_stats apply to the averaged variants"):
        TrafficNFPN(net, 50.0, hidden=8, flow_stats=(np.ones(net.num_links), np.ones(net.num_links)))
    with pytest.raises(ValueError, match="needs mu > 0"):
        TrafficNFPN(
            net, 50.0, variant="averaged", hidden=8, mu=0.0, alpha=0.01,
            flow_stats=(np.ones(net.num_links), np.ones(net.num_links)),
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"context_stats: mean and std must have shape \(10,\)"):
        TrafficNFPN(net, 50.0, hidden=8, context_stats=(np.ones(3), np.ones(3)))
