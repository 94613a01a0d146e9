"""What every forward solver shares: a tolerance, an iteration cap and a residual norm."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..norms import l2_norm

State = tuple[Any, ...]
"""Solver state: batch-first tensors, so the loop can drop the rows of converged samples, and plain
Python values (kept as they are)."""


def _check_positive_int(name: str, value: object, cls: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{cls}: {name} must be a positive integer, got {value!r}")


def _check_nonneg(name: str, value: object, cls: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{cls}: {name} must be a number >= 0, got {value!r}")


@dataclass(frozen=True)
class Solver:
    """Base of the fixed-point solvers (configuration only; the one loop is ``fpnets._solve.solve`` (private)).

    Attributes:
        tol: ε, the tolerance on the per-sample residual ‖T(u) − u‖ (see ``relative``).
        max_iter: the most evaluations of T per sample.
        relative: use ‖T(u) − u‖ / ‖T(u)‖ instead of ‖T(u) − u‖.
        norm: per-sample norm (B, ...) -> (B,); :func:`fpnets.norms.l2_norm` over all non-batch
            dimensions by default.
    """

    tol: float = 1e-4
    max_iter: int = 50
    relative: bool = False
    norm: Callable[[Tensor], Tensor] = field(default=l2_norm, repr=False)

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_nonneg("tol", self.tol, name)
        _check_positive_int("max_iter", self.max_iter, name)

    def residual(self, z: Tensor, fz: Tensor) -> Tensor:
        """r(u) = ‖T(u) − u‖ (or relative), per sample: (B, ...) -> (B,)."""
        r = self.norm(fz - z)
        if self.relative:
            r = r / (self.norm(fz) + torch.finfo(r.dtype).tiny)
        return r

    def init(self, z: Tensor, fz: Tensor) -> State:
        """The solver state after the first evaluation T(z₀)."""
        return ()

    def update(self, z: Tensor, fz: Tensor, state: State, k: int) -> tuple[Tensor, State]:
        """The next iterate from u_k = z and T(u_k) = fz (k: evaluations so far, shared by the batch)."""
        raise NotImplementedError
