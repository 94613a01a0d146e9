"""Jacobian regularisation (Bai, Koltun, Kolter 2021): a Hutchinson estimate of ‖∂T/∂u‖²_F."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def jacobian_penalty(
    f: Callable[[Tensor], Tensor],
    z: Tensor,
    *,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Unbiased estimate of mean_b ‖J_b‖²_F / n at z, with J = ∂T/∂u and n the latent size per sample.

    Hutchinson: for ε ~ N(0, I), E‖εᵀJ‖² = ‖J‖²_F; each of the ``samples`` probes costs one
    vector–Jacobian product built with ``create_graph=True``. Differentiable with respect to the
    parameters of f (and z is detached), so it can be added to the loss, e.g.
    ``loss = ce + λ · jacobian_penalty(lambda u: T(u, x), u_star)``.

    Cost: one more evaluation of T with a graph, one vector–Jacobian product per probe, and in the
    loss's backward pass a double backward through T per probe: about 3 + 2·samples applications
    of T, independent of the forward depth. Returns a 0-d tensor.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"jacobian_penalty: samples must be a positive integer, got {samples!r}")
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        y = f(z)
        if y.shape != z.shape:
            raise ValueError(f"jacobian_penalty: f(z) has shape {tuple(y.shape)} but z has {tuple(z.shape)}")
        n = z[0].numel()
        total = y.new_zeros(())
        for _ in range(samples):
            eps = torch.randn(y.shape, dtype=y.dtype, device=y.device, generator=generator)
            (vjp,) = torch.autograd.grad(y, z, eps, create_graph=True)
            total = total + vjp.pow(2).sum() / (n * z.shape[0])
    return total / samples
