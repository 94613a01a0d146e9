"""Convex-potential layers h(u) = u − (2/L²) Wᵀσ(Wu + b): 1-Lipschitz, exact norms, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fpnets.layers import POTENTIAL_ACTIVATIONS, ConvexPotentialConv2d, lipschitz_estimate

D = torch.float64


def _dense_conv_norm(weight: torch.Tensor, spatial: tuple[int, int], padding: int) -> float:
    """Exact ‖conv(·, weight)‖₂ (zero padding, stride 1) from its dense matrix."""
    x = torch.zeros(1, weight.shape[1], *spatial, dtype=D)
    jac = torch.autograd.functional.jacobian(lambda t: F.conv2d(t, weight, padding=padding), x)
    return float(torch.linalg.matrix_norm(jac.reshape(-1, x.numel()), ord=2))


def _layer(channels: int, hidden: int, activation: str, init: str, seed: int) -> ConvexPotentialConv2d:
    torch.manual_seed(seed)
    layer = ConvexPotentialConv2d(channels, hidden, 3, activation=activation, init=init, scale=7.0).double()
    with torch.no_grad():
        layer.bias.normal_(0.0, 2.0)
    return layer


@pytest.mark.parametrize("activation", POTENTIAL_ACTIVATIONS)
@pytest.mark.parametrize(("channels", "hidden", "init"), [(1, 6, "difference"), (2, 3, "random")])
def test_layer_is_1_lipschitz_on_random_pairs(activation: str, channels: int, hidden: int, init: str) -> None:
    layer = _layer(channels, hidden, activation, init, seed=1)
    g = torch.Generator().manual_seed(2)
    u = torch.rand(64, channels, 9, 7, dtype=D, generator=g)
    for spread in (1.0, 1e-2, 1e-5):  # far pairs and near pairs (the local Jacobian)
        v = u + spread * torch.randn(u.shape, dtype=D, generator=g)
        with torch.no_grad():
            num = torch.linalg.vector_norm((layer(u) - layer(v)).flatten(1), dim=1)
        den = torch.linalg.vector_norm((u - v).flatten(1), dim=1)
        assert (num <= den * (1 + 1e-6)).all(), float((num / den).max())
    # the worst direction, by power iteration on the Jacobian: still ≤ 1, and the layer is not trivial
    local = lipschitz_estimate(layer, u[:4], iters=60, generator=torch.Generator().manual_seed(3))
    assert (local <= 1 + 1e-6).all(), local
    assert (local > 0.5).all()


@pytest.mark.parametrize(("channels", "hidden", "spatial"), [(1, 4, (6, 5)), (2, 3, (5, 5)), (3, 1, (4, 6))])
def test_norms_against_the_dense_matrix(channels: int, hidden: int, spatial: tuple[int, int]) -> None:
    layer = _layer(channels, hidden, "tanh", "random", seed=4)
    w = layer.weight.detach()
    exact = _dense_conv_norm(w, spatial, padding=1)
    bound = float(layer.norm_bound(spatial).detach())  # the Fourier upper bound the layer divides by
    assert exact <= bound * (1 + 1e-10)
    assert bound <= 1.5 * exact  # and it is not vacuous on a small grid


def test_gradients_match_finite_differences() -> None:
    layer = _layer(1, 3, "tanh", "random", seed=5)
    u = torch.rand(2, 1, 5, 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _apply(layer, x, w, b), (u, layer.weight, layer.bias))


def _apply(layer: ConvexPotentialConv2d, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # the layer's forward as a function of (u, W, b): W and b stand in for its parameters, so the
    # gradient through L = ‖W‖ (the Fourier bound) is checked too
    return torch.func.functional_call(layer, {"weight": w, "bias": b}, (u,))


def test_difference_init_is_a_tv_descent_step() -> None:
    # W = α·(forward differences), σ = hardtanh: one step lowers the anisotropic TV of a noisy
    # piecewise-constant image and moves every pixel by at most the step times a stencil bound
    torch.manual_seed(6)
    layer = ConvexPotentialConv2d(1, 4, 3, activation="hardtanh", init="difference", scale=30.0).double()
    u = torch.zeros(1, 1, 16, 16, dtype=D)
    u[..., 4:12, 5:11] = 0.6
    u = u + 0.02 * torch.randn(u.shape, dtype=D, generator=torch.Generator().manual_seed(7))

    def tv(x: torch.Tensor) -> float:
        return float(x.diff(dim=-1).abs().sum() + x.diff(dim=-2).abs().sum())

    with torch.no_grad():
        out = layer(u)
    assert tv(out) < 0.97 * tv(u)
    assert float((out - u).abs().max()) < 0.1
    assert layer.step_size((16, 16)) == pytest.approx(
        2.0 / (30.0 * float(layer.norm_bound((16, 16)).detach())) ** 2
    )


def test_norm_bound_is_cached_per_weight_version() -> None:
    layer = _layer(1, 4, "relu", "random", seed=8)
    with torch.no_grad():
        first = layer.norm_bound((8, 8))
        assert layer.norm_bound((8, 8)) is first  # cached
        layer.weight.mul_(3.0)  # an optimizer step changes the version
        again = layer.norm_bound((8, 8))
    assert float(again) == pytest.approx(3.0 * float(first), rel=1e-12)
    # in grad mode the norm is recomputed with a graph, so the gradient is exact
    assert layer.norm_bound((8, 8)).requires_grad


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown activation 'gelu'.*hardtanh"):
        ConvexPotentialConv2d(activation="gelu")
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ConvexPotentialConv2d(kernel_size=4)
    with pytest.raises(ValueError, match="hidden must be a positive integer"):
        ConvexPotentialConv2d(hidden=0)
    with pytest.raises(ValueError, match="scale"):
        ConvexPotentialConv2d(scale=-1.0)
    with pytest.raises(ValueError, match=r"expects \(B, 1, H, W\) input"):
        ConvexPotentialConv2d()(torch.zeros(2, 3, 8, 8))
