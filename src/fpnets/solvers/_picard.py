"""Picard / Krasnosel'skii–Mann iteration."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ._base import Solver, State


@dataclass(frozen=True)
class Picard(Solver):
    """u_{k+1} = u_k + α (T(u_k) − u_k).

    α = ``damping``: 1 gives plain fixed-point iteration u_{k+1} = T(u_k); α < 1 is
    Krasnosel'skii–Mann averaging, which also converges for merely nonexpansive T.
    """

    damping: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.damping <= 1.0:
            raise ValueError(f"Picard: damping must lie in (0, 1], got {self.damping!r}")

    def update(self, z: Tensor, fz: Tensor, state: State, k: int) -> tuple[Tensor, State]:
        if self.damping == 1.0:
            return fz, state
        return z + self.damping * (fz - z), state
