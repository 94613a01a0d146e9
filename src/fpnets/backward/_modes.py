"""Backward modes: how the gradient of a loss reaches the parameters through u* = T(u*).

Let J = ∂T/∂u at u* and g = ∂ℓ/∂u*. The exact (implicit) gradient backpropagates
w = (I − J)⁻ᵀ g through one application of T; the modes differ in how they replace w:

- :class:`JFB`: w = g (Jacobian-free backprop, the k = 0 term of the Neumann series).
- :class:`Neumann`: w = Σ_{i=0}^{k} (Jᵀ)^i g.
- :class:`IFT`: w solves (I − J)ᵀ w = g (fixed-point iteration, Anderson, or CG on the normal
  equations).
- :class:`Unrolled`: ordinary backprop through every iteration of the forward solve, ending at
  each sample's last evaluation of T.

Every mode returns the same forward value u*; only the gradient differs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._solution import ConvergenceError, ConvergenceWarning
from .._solve import solve
from ..norms import l2_norm
from ..solvers import Anderson, Solver
from ..solvers._base import _check_nonneg, _check_positive_int


class _Substitute(torch.autograd.Function):
    """Forward: returns ``value``; backward: routes the incoming gradient to ``carrier``."""

    @staticmethod
    def forward(ctx, value: Tensor, carrier: Tensor) -> Tensor:  # type: ignore[override]
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        return None, grad


def carry_gradient(value: Tensor, carrier: Tensor) -> Tensor:
    """A tensor equal to ``value`` whose gradient flows into ``carrier`` (same shape)."""
    return _Substitute.apply(value, carrier)


AdjointMap = Callable[[Tensor, Tensor, Tensor], Tensor]
Carrier = tuple[Tensor, Tensor]


class _Adjoint(torch.autograd.Function):
    """Forward: returns ``value``; backward: sends adjoint(y, z, g) into ``y`` = T(z).

    ``y`` and ``z`` are kept on the context (not saved tensors) because the backward needs the graph
    of y to take vector–Jacobian products; y is an input of this node, so no reference cycle forms.
    """

    @staticmethod
    def forward(ctx, value: Tensor, y: Tensor, z: Tensor, adjoint: AdjointMap) -> Tensor:  # type: ignore[override]
        ctx.y, ctx.z, ctx.adjoint = y, z, adjoint
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None, None]:  # type: ignore[override]
        with torch.enable_grad():
            w = ctx.adjoint(ctx.y, ctx.z, grad)
        return None, w, None, None


def carry_adjoint(value: Tensor, y: Tensor, z: Tensor, adjoint: AdjointMap) -> Tensor:
    """A tensor equal to ``value`` whose gradient g reaches y = T(z) as adjoint(y, z, g)."""
    return _Adjoint.apply(value, y, z, adjoint)


class Backward:
    """Base of the backward modes."""

    records_forward: bool = False
    """True when the forward solve itself must record the autograd graph (Unrolled)."""

    needs_input_grad: bool = True
    """Whether the mode needs ∂T/∂u (vector–Jacobian products with respect to u)."""

    def attach(self, f: Callable[[Tensor], Tensor], z_star: Tensor, carrier: Carrier | None = None) -> Tensor:
        """Return u* carrying this mode's gradient; ``f`` is T on the whole batch.

        ``carrier``, when the solve kept it, is (u, T(u)) with T's graph and u equal to u*; its u
        requires grad when :attr:`needs_input_grad`. Without it the mode applies T once itself.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class JFB(Backward):
    """Jacobian-free backprop: backpropagate through T(u*) with u* treated as a constant."""

    needs_input_grad = False

    def attach(self, f: Callable[[Tensor], Tensor], z_star: Tensor, carrier: Carrier | None = None) -> Tensor:
        y = f(z_star.detach()) if carrier is None else carrier[1]
        return carry_gradient(z_star, y)


@dataclass(frozen=True)
class Unrolled(Backward):
    """Backprop through every forward iteration (memory grows with depth; a reference).

    A sample b that stops after k_b evaluations of T returns u* = u_{k_b − 1}, the iterate whose
    residual ‖T(u_{k_b − 1}) − u_{k_b − 1}‖ was measured. Its gradient is that of its last
    evaluation T(u_{k_b − 1}), backpropagated through all k_b evaluations and the solver's updates
    (the graph recorded by the forward solve): what autograd gives through the loop
    ``for k: y = T(u); if r(u, y) <= tol: break; u = update(u, y)`` returning ``y``. So a sample that
    converges at its first evaluation gets JFB's gradient (that of T(z₀)), never zero; with deeper
    solves the gradient approaches the implicit one. The forward value stays u_{k_b − 1}, exactly
    the value of every other mode.
    """

    records_forward = True

    def attach(self, f: Callable[[Tensor], Tensor], z_star: Tensor, carrier: Carrier | None = None) -> Tensor:
        if carrier is None:
            raise ValueError(
                "Unrolled needs the recorded forward solve: carrier=(u*, T at each sample's last "
                "evaluation); fpnets.fixed_point records it when grad mode is on"
            )
        return carry_gradient(z_star, carrier[1])


def _vjp_graph(f: Callable[[Tensor], Tensor], z_star: Tensor, carrier: Carrier | None) -> Carrier:
    if carrier is not None:
        return carrier
    z = z_star.detach().requires_grad_()
    return z, f(z)


def _vjp(y: Tensor, z: Tensor, v: Tensor) -> Tensor:
    """Jᵀ v with J = ∂y/∂z, keeping the graph for more products."""
    (out,) = torch.autograd.grad(y, z, v, retain_graph=True, allow_unused=True)
    return torch.zeros_like(z) if out is None else out


@dataclass(frozen=True)
class Neumann(Backward):
    """w = Σ_{i=0}^{k} (Jᵀ)^i g: the Neumann series of (I − J)⁻ᵀ g cut after k extra terms.

    ``Neumann(0)`` is JFB; k → ∞ approaches IFT when ‖J‖ < 1. Costs k vector–Jacobian products.
    """

    k: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ValueError(f"Neumann: k must be an integer >= 0, got {self.k!r}")

    def attach(self, f: Callable[[Tensor], Tensor], z_star: Tensor, carrier: Carrier | None = None) -> Tensor:
        z, y = _vjp_graph(f, z_star, carrier)
        return carry_adjoint(z_star, y, z, self.series)

    def series(self, y: Tensor, z: Tensor, g: Tensor) -> Tensor:
        """Σ_{i=0}^{k} (Jᵀ)^i g by Horner's rule, w ← g + Jᵀ w."""
        w = g
        for _ in range(self.k):
            w = g + _vjp(y, z, w)
        return w


@dataclass(frozen=True)
class CGNormal:
    """Conjugate gradients on the normal equations of (I − J)ᵀ w = g (the paper's baseline).

    With A = (I − J)ᵀ, solves AᵀA w = Aᵀ g. Products with Aᵀ = I − J need Jacobian–vector products,
    taken as a double vector–Jacobian product, so T must be twice differentiable (conv, BatchNorm,
    LeakyReLU, tanh are). Inner products run over the whole batch, which is exact also for an
    operator that couples samples. Stops when ‖A w − g‖ ≤ tol (relative to ‖g‖ when ``relative``)
    for every sample, or after ``max_iter`` CG steps.
    """

    tol: float = 1e-6
    max_iter: int = 50
    relative: bool = True

    def __post_init__(self) -> None:
        _check_nonneg("tol", self.tol, "CGNormal")
        _check_positive_int("max_iter", self.max_iter, "CGNormal")


def _default_adjoint_solver() -> Solver:
    return Anderson(tol=1e-6, max_iter=100, m=5, relative=True)


@dataclass(frozen=True)
class IFT(Backward):
    """The exact implicit gradient: w solves w = Jᵀ w + g, then w is backpropagated through T(u*).

    Attributes:
        solver: how to solve for w. A forward solver (:class:`~fpnets.Picard`,
            :class:`~fpnets.Anderson`) runs the fixed-point iteration w ← Jᵀ w + g with its own
            tolerance and cap, starting from w = g; :class:`CGNormal` runs conjugate gradients on
            the normal equations. Default: Anderson(tol=1e-6, max_iter=100, relative=True).
        throw: raise :class:`~fpnets.ConvergenceError` when the adjoint solve misses its tolerance
            (otherwise one :class:`~fpnets.ConvergenceWarning`, unless ``warn`` is False).
        warn: warn on a missed tolerance.

    Costs one evaluation of T with a graph in the forward pass and one vector–Jacobian product
    per adjoint iteration (two per CG step) in the backward pass.
    """

    solver: Solver | CGNormal = field(default_factory=_default_adjoint_solver)
    throw: bool = False
    warn: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.solver, (Solver, CGNormal)):
            raise TypeError(
                "IFT: solver must be a Picard, Anderson or CGNormal instance, "
                f"got {type(self.solver).__name__}"
            )

    def attach(self, f: Callable[[Tensor], Tensor], z_star: Tensor, carrier: Carrier | None = None) -> Tensor:
        z, y = _vjp_graph(f, z_star, carrier)
        return carry_adjoint(z_star, y, z, self.adjoint)

    def adjoint(self, y: Tensor, z: Tensor, g: Tensor) -> Tensor:
        """Solve (I − J)ᵀ w = g where J = ∂y/∂z (y = T(z) with its graph)."""
        if isinstance(self.solver, CGNormal):
            w, residual, ok = _cg_normal(y, z, g, self.solver)
            tol, cap = self.solver.tol, self.solver.max_iter
        else:
            sol = solve(
                lambda w: g + _vjp(y, z, w),
                g,
                self.solver,
                full_batch=True,
                what="the adjoint map w ↦ Jᵀw + g",
            )
            w, residual, ok = sol.value, sol.residual, bool(sol.converged.all())
            tol, cap = self.solver.tol, self.solver.max_iter
        if not ok:
            message = (
                f"IFT adjoint solve did not converge: largest residual {float(residual.max()):.3e} "
                f"> tol={tol:g} after max_iter={cap}; raise the backward solver's max_iter, "
                "loosen its tol, or make T more contractive"
            )
            if self.throw:
                raise ConvergenceError(message)
            if self.warn:
                warnings.warn(message, ConvergenceWarning, stacklevel=2)
        return w


def _cg_normal(y: Tensor, z: Tensor, g: Tensor, cfg: CGNormal) -> tuple[Tensor, Tensor, bool]:
    """CG on AᵀA w = Aᵀ g with A = I − Jᵀ, i.e. Aw = w − Jᵀw and Aᵀv = v − Jv."""
    dummy = torch.zeros_like(z, requires_grad=True)
    (jt_dummy,) = torch.autograd.grad(y, z, dummy, create_graph=True)  # Jᵀ·dummy, linear in dummy

    def a_op(w: Tensor) -> Tensor:
        return w - _vjp(y, z, w)

    def at_op(v: Tensor) -> Tensor:
        (jv,) = torch.autograd.grad(jt_dummy, dummy, v, retain_graph=True)
        return v - jv

    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).sum()

    scale = l2_norm(g) if cfg.relative else torch.ones(g.shape[0], dtype=g.dtype, device=g.device)
    scale = scale.clamp_min(torch.finfo(g.dtype).tiny)
    w = g.clone()  # start from the JFB direction
    resid = g - a_op(w)  # residual of A w = g
    if bool((l2_norm(resid) / scale <= cfg.tol).all()):
        return w, l2_norm(resid) / scale, True
    r = at_op(resid)  # residual of the normal equations
    p = r.clone()
    rr = dot(r, r)
    for _ in range(cfg.max_iter):
        ap = a_op(p)
        alpha = rr / dot(ap, ap).clamp_min(torch.finfo(g.dtype).tiny)
        w = w + alpha * p
        resid = resid - alpha * ap
        rel = l2_norm(resid) / scale
        if bool((rel <= cfg.tol).all()):
            return w, rel, True
        r = at_op(resid)
        rr_new = dot(r, r)
        p = r + (rr_new / rr.clamp_min(torch.finfo(g.dtype).tiny)) * p
        rr = rr_new
    rel = l2_norm(resid) / scale
    return w, rel, bool((rel <= cfg.tol).all())


__all__ = ["IFT", "JFB", "Backward", "CGNormal", "Neumann", "Unrolled", "carry_adjoint", "carry_gradient"]
