"""``fixed_point``, the functional entry point, and ``FixedPointLayer``, its module form."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from ._solution import ConvergenceError, ConvergenceWarning, Solution, Status
from ._solve import solve
from .backward import JFB, Backward
from .solvers import Picard, Solver


def fixed_point(
    f: Callable[..., Tensor],
    z0: Tensor,
    *args: Any,
    solver: Solver | None = None,
    backward: Backward | None = None,
    coupled: bool | None = None,
    throw: bool = False,
    warn: bool = True,
    trace: bool = False,
    f_solve: Callable[..., Tensor] | None = None,
) -> Solution:
    """Solve u* = T(u*) from u = z0 and attach the gradient chosen by ``backward``.

    Args:
        f: the map T, called as ``f(z, *args)``; returns the next iterate, shaped like ``z``. It may
            be a closure over the input and the parameters.
        z0: (B, ...) starting point, batch first.
        *args: batch-first tensors that ``f`` takes after ``z`` (for example the injected input
            Q(d)). When given, and the operator does not couple samples, T is evaluated on the
            not-yet-converged samples only.
        solver: forward solver, :class:`~fpnets.Picard` (default) or :class:`~fpnets.Anderson`.
        backward: :class:`~fpnets.JFB` (default), :class:`~fpnets.IFT`, :class:`~fpnets.Neumann`
            or :class:`~fpnets.Unrolled`. The forward value does not depend on it.
        coupled: whether T couples the samples of a batch (BatchNorm with batch statistics). Then,
            and whenever no ``args`` are given, T is evaluated on the whole batch and only the
            active samples are updated. Default: False when ``args`` are given.
        throw: raise :class:`~fpnets.ConvergenceError` when a sample misses the tolerance.
        warn: otherwise emit one :class:`~fpnets.ConvergenceWarning` per non-converged solve.
        trace: keep the residual history in ``Solution.trace``.
        f_solve: the same map in a form only used for the graph-free solve, typically
            ``torch.compile(f)`` (compiled code runs fastest without autograd on CPU); the gradient
            is then attached with ``f``, at the cost of one more application of T.

    Returns:
        a :class:`~fpnets.Solution`; ``value`` carries the gradient.

    Raises:
        TypeError: ``z0`` is not a floating-point tensor, ``f`` returns something other than a
            tensor, or ``solver``/``backward`` are not fpnets objects.
        ValueError: ``z0`` has no batch dimension, a tensor in ``args`` has another batch size than
            ``z0`` (inputs are never broadcast over the batch), or ``f`` returns a tensor of another
            shape, dtype or device than its input, at any evaluation.
        NonFiniteError: an evaluation of T holds a NaN or an Inf (the message names the evaluation).
        ConvergenceError: with ``throw=True``, a sample missed the tolerance.
    """
    solver = Picard() if solver is None else solver
    backward = JFB() if backward is None else backward
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a fpnets solver (Picard, Anderson), got {solver!r}")
    if not isinstance(backward, Backward):
        raise TypeError(
            f"backward must be a fpnets backward mode (JFB, IFT, Neumann, Unrolled), got {backward!r}"
        )
    full_batch = bool(coupled) or not args
    solve_map = f if f_solve is None else _detaching(f_solve)
    if backward.records_forward and torch.is_grad_enabled():
        raw = solve(f, z0, solver, args=args, full_batch=full_batch, trace=trace, record=True)
        assert raw.last_eval is not None  # record=True keeps it
        value = backward.attach(lambda z: f(z, *args), raw.value, (raw.value, raw.last_eval))
    else:
        grad = torch.is_grad_enabled()
        with torch.no_grad():
            # with a whole-batch solve the last evaluation is T(u*) itself: keep its graph
            raw = solve(
                solve_map,
                z0,
                solver,
                args=args,
                full_batch=full_batch,
                trace=trace,
                carry=grad and full_batch and f_solve is None,
                carry_input_grad=backward.needs_input_grad,
            )
        value = raw.value
        if grad:
            value = backward.attach(lambda z: f(z, *args), value, raw.carrier)
    sol = Solution(
        value=value,
        iterations=raw.iterations,
        residual=raw.residual,
        converged=raw.converged,
        trace=raw.trace,
        status=raw.status,
        tol=solver.tol,
        max_iter=solver.max_iter,
        evaluations=raw.evaluations,
    )
    if sol.status is not Status.CONVERGED:
        if throw:
            raise ConvergenceError(sol.message)
        if warn:
            warnings.warn(sol.message, ConvergenceWarning, stacklevel=2)
    return sol


def _detaching(f: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """f with its tensor arguments detached (a graph-free solve has no use for their graphs)."""

    def call(z: Tensor, *args: Any) -> Tensor:
        return f(z, *(a.detach() if isinstance(a, Tensor) else a for a in args))

    return call


def couples_samples(module: nn.Module) -> bool:
    """True when ``module`` mixes the samples of a batch: a BatchNorm layer using batch statistics."""
    return any(
        isinstance(m, _BatchNorm) and (m.training or not m.track_running_stats) for m in module.modules()
    )


class FixedPointLayer(nn.Module):
    """u* = T(u*; x) for an operator module ``T(u, x)``, as a layer: ``forward(x) -> u*``.

    The last :class:`~fpnets.Solution` (detached) is kept as ``self.solution``. Parametrized weights
    (``torch.nn.utils.parametrize``) are computed once per forward, not once per iteration.

    Args:
        operator: module called as ``operator(u, *inputs)``; if it has a method
            ``initial_latent(*inputs)``, that gives u₀, otherwise u₀ = 0 shaped like the first input.
        solver, backward, throw, warn, trace: as in :func:`fixed_point`.
        coupled: whether the operator couples samples; ``None`` (default) decides per call: True
            while any BatchNorm inside uses batch statistics (training mode), else False.
        compile: run the graph-free forward iterations through ``torch.compile(operator)``
            (compiled lazily on first use; the gradient application stays eager). On CPU this
            roughly halves the cost of an iteration of a small conv operator, after a compile of
            tens of seconds per mode (train/eval) and batch-size regime.
    """

    def __init__(
        self,
        operator: nn.Module,
        solver: Solver | None = None,
        backward: Backward | None = None,
        *,
        coupled: bool | None = None,
        throw: bool = False,
        warn: bool = True,
        trace: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.operator = operator
        self.compile_solve = compile
        self._compiled: Callable[..., Tensor] | None = None
        self.solver = Picard() if solver is None else solver
        self.backward_mode = JFB() if backward is None else backward
        self.coupled = coupled
        self.throw = throw
        self.warn = warn
        self.trace = trace
        self.solution: Solution | None = None

    def forward(self, *inputs: Tensor, z0: Tensor | None = None) -> Tensor:
        """u* = T(u*; inputs) for the injected inputs (e.g. x = Q(d), or a measurement d and its
        noise level σ), each batch-first, passed to ``operator(u, *inputs)`` at every evaluation."""
        if not inputs:
            raise TypeError("FixedPointLayer needs at least one injected input: layer(x) or layer(x, y, ...)")
        if z0 is None:
            init = getattr(self.operator, "initial_latent", None)
            z0 = init(*inputs) if callable(init) else torch.zeros_like(inputs[0])
        coupled = couples_samples(self.operator) if self.coupled is None else self.coupled
        with parametrize.cached():
            if torch.is_grad_enabled():  # fill the cache with graph-carrying weights first
                _touch_parametrizations(self.operator)
            sol = fixed_point(
                self.operator,
                z0,
                *inputs,
                solver=self.solver,
                backward=self.backward_mode,
                coupled=coupled,
                throw=self.throw,
                warn=self.warn,
                trace=self.trace,
                f_solve=self._solve_map(),
            )
        self.solution = sol.detached()
        return sol.value

    def _solve_map(self) -> Callable[..., Tensor] | None:
        if not self.compile_solve:
            return None
        if self._compiled is None:  # kept off the module tree: no duplicate parameters
            self._compiled = torch.compile(self.operator)
        return self._compiled

    def extra_repr(self) -> str:
        return f"solver={self.solver!r}, backward={self.backward_mode!r}"


def _touch_parametrizations(module: nn.Module) -> None:
    for m in module.modules():
        if parametrize.is_parametrized(m):
            for name in m.parametrizations:
                getattr(m, name)
