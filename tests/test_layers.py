"""Contractive building blocks, Lipschitz estimates, Jacobian regularisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import fpnets
from fpnets import FixedPointLayer, Picard, jacobian_penalty
from fpnets.layers import (
    Contraction,
    ContractiveConvOperator,
    SpectralConv2d,
    SpectralLinear,
    conv_operator_norm,
    lipschitz_estimate,
    reference_rescale_,
)

from conftest import contraction_matrix

D = torch.float64


def _dense_operator_norm(f, shape: tuple[int, ...]) -> float:
    """Exact ‖f‖₂ of a linear map on inputs of ``shape`` via its dense matrix."""
    x = torch.zeros(1, *shape, dtype=D)
    jac = torch.autograd.functional.jacobian(f, x).reshape(-1, x.numel())
    return float(torch.linalg.matrix_norm(jac, ord=2))


@pytest.mark.parametrize("scale", [0.1, 1.0, 25.0])
def test_spectral_linear_bound_holds(scale: float) -> None:
    layer = SpectralLinear(7, 5, bound=0.8).double()
    with torch.no_grad():
        layer.weight.mul_(scale)
    norm = float(torch.linalg.matrix_norm(layer.effective_weight().detach(), ord=2))
    assert norm <= 0.8 * (1 + 1e-12)
    raw = float(torch.linalg.matrix_norm(layer.weight.detach(), ord=2))
    assert norm == pytest.approx(min(raw, 0.8), rel=1e-12)


@pytest.mark.parametrize(("size", "padding"), [((5, 5), 1), ((6, 4), 1), ((5, 5), 0), ((4, 4), 2)])
def test_spectral_conv_bound_holds_for_the_zero_padded_operator(size, padding) -> None:
    conv = SpectralConv2d(3, 4, 3, padding=padding, bound=1.0).double()
    with torch.no_grad():
        conv.weight.mul_(10.0)
    weight = conv.effective_weight(size).detach()
    exact = _dense_operator_norm(lambda x: F.conv2d(x, weight, padding=padding), (3, *size))
    assert exact <= 1.0 + 1e-10
    assert exact > 0.5  # the bound is not vacuous: the normalised operator keeps most of its norm
    # the Fourier bound itself is an upper bound of the exact norm of the raw weight
    raw = _dense_operator_norm(lambda x: F.conv2d(x, conv.weight.detach(), padding=padding), (3, *size))
    assert float(conv_operator_norm(conv.weight.detach(), size)) >= raw * (1 - 1e-10)


def test_spectral_layers_gradients_are_exact() -> None:
    lin = SpectralLinear(4, 3).double()
    with torch.no_grad():
        lin.weight.mul_(5.0)
    x = torch.randn(2, 4, dtype=D)

    def f_lin(w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w / torch.clamp(torch.linalg.matrix_norm(w, ord=2), min=1.0), lin.bias)

    w = lin.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(f_lin, (w,))
    (g_layer,) = torch.autograd.grad(lin(x).sum(), lin.weight)
    (g_ref,) = torch.autograd.grad(f_lin(w).sum(), w)
    torch.testing.assert_close(g_layer, g_ref)

    conv = SpectralConv2d(2, 2, 3).double()
    with torch.no_grad():
        conv.weight.mul_(5.0)
    xc = torch.randn(1, 2, 4, 4, dtype=D)
    wc = conv.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda w: F.conv2d(xc, w / torch.clamp(conv_operator_norm(w, (4, 4)), min=1.0), padding=1), (wc,)
    )


def test_spectral_norm_computed_once_per_solve(monkeypatch) -> None:
    import fpnets.layers._spectral as spectral

    calls = {"n": 0}
    real = spectral.conv_operator_norm

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(spectral, "conv_operator_norm", counting)
    op = ContractiveConvOperator(4, gamma=0.5)  # two spectral convs
    layer = FixedPointLayer(op, Picard(tol=1e-6, max_iter=100))
    x = torch.randn(3, 4, 5, 5)
    out = layer(x)
    depth = int(layer.solution.iterations.max())
    assert depth > 3
    # per conv: one no-grad norm for the whole solve, one with a graph for the JFB application
    assert calls["n"] == 4
    out.sum().backward()
    assert op.convs[0][0].weight.grad is not None
    with torch.no_grad():
        op.convs[0][0].weight.add_(0.01)  # a new weight version invalidates the cache
    calls["n"] = 0
    with torch.no_grad():
        layer(x)
    assert calls["n"] == 1  # only the modified conv recomputes its norm


@pytest.mark.parametrize("gamma", [0.3, 0.9])
def test_contractive_conv_operator_is_a_gamma_contraction(gamma: float) -> None:
    op = ContractiveConvOperator(3, gamma=gamma, blocks=2).double()
    with torch.no_grad():
        for p in op.parameters():
            p.mul_(20.0)  # large raw weights: the bound must still hold
    x = torch.randn(4, 3, 6, 6, dtype=D)
    u = torch.randn(4, 3, 6, 6, dtype=D)
    lip = lipschitz_estimate(lambda z: op(z, x), u, iters=60, generator=torch.Generator().manual_seed(0))
    assert lip.shape == (4,)
    assert torch.all(lip <= gamma * (1 + 1e-6))
    for _ in range(10):
        v = u + torch.randn_like(u)
        ratio = torch.linalg.vector_norm((op(v, x) - op(u, x)).flatten(1), dim=1) / torch.linalg.vector_norm(
            (v - u).flatten(1), dim=1
        )
        assert torch.all(ratio <= gamma * (1 + 1e-9))


def test_lipschitz_estimate_of_linear_map_is_its_norm() -> None:
    a = contraction_matrix(6, 0.73)
    z = torch.randn(3, 6, dtype=D)
    est = lipschitz_estimate(lambda z: z @ a.T, z, iters=200)
    torch.testing.assert_close(est, torch.full((3,), 0.73, dtype=D), rtol=1e-6, atol=0)
    whole = lipschitz_estimate(lambda z: z @ a.T, z, iters=200, per_sample=False)
    assert float(whole) == pytest.approx(0.73, rel=1e-6)
    with pytest.raises(ValueError, match="iters must be a positive integer"):
        lipschitz_estimate(lambda z: z, z, iters=0)
    with pytest.raises(ValueError, match=r"f\(z\) has shape"):
        lipschitz_estimate(lambda z: z[:, :2], z)


def test_contraction_wrapper_and_gamma_validation() -> None:
    body = nn.Module()
    body.forward = lambda u, x: torch.tanh(u) + x  # type: ignore[method-assign]
    t = Contraction(body, 0.4)
    u, x = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(t(u, x), 0.4 * (torch.tanh(u) + x))
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"gamma \(the contraction factor γ\) must lie in \(0, 1\)"):
            Contraction(body, bad)
    with pytest.raises(ValueError, match="bound must be a finite number > 0"):
        SpectralLinear(2, 2, bound=0.0)
    with pytest.raises(ValueError, match=r"expects \(B, C, H, W\) input"):
        SpectralConv2d(2, 2)(torch.randn(2, 5, 5))


def test_reference_rescale_shrinks_an_expansive_operator() -> None:
    conv1, conv2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
    with torch.no_grad():
        for p in (*conv1.parameters(), *conv2.parameters()):
            p.mul_(8.0)

    def op(u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return conv2(F.leaky_relu(conv1(u + x), 0.1))

    params = [conv1.weight, conv1.bias, conv2.weight, conv2.bias]
    before = [p.detach().clone() for p in params]
    u, x = torch.randn(4, 2, 5, 5), torch.randn(4, 2, 5, 5)
    rho = reference_rescale_(op, u, x, 0.5, params, blocks=1, generator=torch.Generator().manual_seed(1))
    assert rho > 0.5
    for p, b in zip(params, before, strict=True):
        torch.testing.assert_close(p.detach(), b * (0.5 / rho))
    # a contractive operator is left alone
    rho2 = reference_rescale_(lambda u, x: 0.1 * u, u, x, 0.5, params, blocks=1)
    assert rho2 == pytest.approx(0.1, rel=1e-5)
    for p, b in zip(params, before, strict=True):
        torch.testing.assert_close(p.detach(), b * (0.5 / rho))


def test_jacobian_penalty_estimates_frobenius_norm() -> None:
    a = contraction_matrix(5, 0.6).requires_grad_()
    z = torch.randn(4, 5, dtype=D)
    est = jacobian_penalty(lambda u: u @ a.T, z, samples=4000, generator=torch.Generator().manual_seed(0))
    exact = float((a.detach() ** 2).sum()) / 5
    assert float(est.detach()) == pytest.approx(exact, rel=0.05)
    (grad,) = torch.autograd.grad(est, a)
    # d/dA of ‖A‖²_F / n is 2A / n; the Hutchinson estimate's gradient is unbiased for it
    torch.testing.assert_close(grad, 2 * a.detach() / 5, rtol=0.1, atol=0.02)
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        jacobian_penalty(lambda u: u, z, samples=0)


def test_parametrized_operator_weights_computed_once_per_forward() -> None:
    calls = {"n": 0}

    class Scaled(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            return 0.5 * w / torch.linalg.matrix_norm(w, ord=2)

    class Op(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4, bias=False, dtype=D)
            parametrize.register_parametrization(self.lin, "weight", Scaled())

        def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.lin(u)) + x

    op = Op()
    calls["n"] = 0  # registering evaluated the parametrization once
    layer = FixedPointLayer(op, Picard(tol=1e-10, max_iter=200))
    x = torch.randn(3, 4, dtype=D)
    out = layer(x)
    assert int(layer.solution.iterations.max()) > 5
    assert calls["n"] == 1
    out.sum().backward()
    # the cached weight carried the graph: the gradient equals the uncached JFB gradient
    g_cached = op.lin.parametrizations.weight.original.grad.clone()
    op.zero_grad()
    z_star = layer.solution.value
    op(z_star, x).sum().backward()
    torch.testing.assert_close(op.lin.parametrizations.weight.original.grad, g_cached)


def test_fixed_point_of_contractive_operator_with_ift_matches_unrolled_long() -> None:
    op = ContractiveConvOperator(2, gamma=0.5).double()
    x = torch.randn(2, 2, 4, 4, dtype=D)
    grads = {}
    for name, backward in {
        "ift": fpnets.IFT(fpnets.Anderson(tol=1e-12, max_iter=200, relative=True)),
        "unrolled": fpnets.Unrolled(),
    }.items():
        op.zero_grad()
        layer = FixedPointLayer(op, Picard(tol=1e-13, max_iter=400), backward)
        (layer(x) ** 2).sum().backward()
        grads[name] = [p.grad.clone() for p in op.parameters()]
    for a, b in zip(grads["ift"], grads["unrolled"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("shape", [(1, 3, 3, 3), (4, 1, 3, 3), (1, 1, 3, 3)])
def test_conv_operator_norm_of_a_single_channel_side_equals_the_symbols_spectral_norm(shape) -> None:
    # one input or output channel: the vector shortcut must equal the SVD of the Fourier symbol
    w = torch.randn(*shape, dtype=torch.float64)
    n_h, n_w = 6 + 2, 5 + 2
    symbol = torch.fft.fft2(w, s=(n_h, n_w)).permute(2, 3, 0, 1).reshape(n_h * n_w, shape[0], shape[1])
    exact = torch.linalg.matrix_norm(symbol, ord=2).amax()
    torch.testing.assert_close(conv_operator_norm(w, (6, 5)), exact, rtol=1e-12, atol=0)
