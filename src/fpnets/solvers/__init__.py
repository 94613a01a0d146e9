"""Forward solvers: small configuration objects run by the one loop, ``fpnets._solve.solve`` (private)."""

from ._anderson import Anderson
from ._base import Solver, State
from ._picard import Picard

__all__ = ["Anderson", "Picard", "Solver", "State"]
