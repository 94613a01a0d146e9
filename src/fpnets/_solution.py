"""The result of a fixed-point solve, and the ways a solve can fail."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from torch import Tensor


class ConvergenceWarning(UserWarning):
    """Warned when a solve stops at its iteration cap with samples above the tolerance."""


class ConvergenceError(RuntimeError):
    """Raised instead of :class:`ConvergenceWarning` when a solve is asked to ``throw``."""


class NonFiniteError(FloatingPointError):
    """Raised when an iterate of a solve holds a NaN or an Inf."""


class Status(enum.Enum):
    """How a solve ended."""

    CONVERGED = "converged"
    """Every sample reached the tolerance."""
    MAX_ITER = "max_iter"
    """The iteration cap was reached with at least one sample above the tolerance."""


@dataclass(frozen=True)
class Solution:
    """What :func:`fpnets.fixed_point` returns.

    Attributes:
        value: the fixed point u* (batch first); carries the gradient chosen by the backward mode.
        iterations: (B,) int64, evaluations of T spent on each sample (its depth); a sample stops
            being iterated once its residual reaches the tolerance.
        residual: (B,) ‖T(u) − u‖ of the returned value, per sample (relative when the solver says so).
        converged: (B,) bool, residual ≤ tol.
        trace: (K, B) residual history (row k: residuals after k + 1 evaluations; a frozen sample
            keeps its last residual), or None unless asked for with ``trace=True``.
        status: :class:`Status` of the whole batch.
        tol: the tolerance the solve was run with.
        max_iter: the iteration cap the solve was run with.
        evaluations: number of calls of T (batched calls, each on the active samples or, for an
            operator that couples samples, on the whole batch).
    """

    value: Tensor
    iterations: Tensor
    residual: Tensor
    converged: Tensor
    trace: Tensor | None
    status: Status
    tol: float
    max_iter: int
    evaluations: int

    @property
    def message(self) -> str:
        """A readable account of how the solve ended."""
        batch = self.converged.numel()
        worst = float(self.residual.max()) if batch else 0.0
        mean_it = float(self.iterations.float().mean()) if batch else 0.0
        if self.status is Status.CONVERGED:
            return (
                f"converged: all {batch} samples reached tol={self.tol:g} "
                f"(mean depth {mean_it:.1f}, largest residual {worst:.3e})"
            )
        failed = int((~self.converged).sum())
        return (
            f"did not converge: {failed} of {batch} samples still above tol={self.tol:g} "
            f"after max_iter={self.max_iter} evaluations (largest residual {worst:.3e}); "
            "raise max_iter, loosen tol, use Anderson, or make the operator more contractive"
        )

    def detached(self) -> Solution:
        """The same solution with ``value`` detached from the autograd graph."""
        return dataclasses.replace(self, value=self.value.detach())
