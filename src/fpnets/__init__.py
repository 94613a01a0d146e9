"""fpnets: Fixed Point Networks with Jacobian-Free Backpropagation.

The public API: :func:`fixed_point` and :class:`FixedPointLayer`, the solvers :class:`Picard` and
:class:`Anderson`, the backward modes :class:`JFB`, :class:`IFT`, :class:`Neumann`,
:class:`Unrolled`, the result :class:`Solution`, and :func:`jacobian_penalty`.
Building blocks live in :mod:`fpnets.layers`; names for config files in :mod:`fpnets.registry`.
"""

from ._fixed_point import FixedPointLayer, couples_samples, fixed_point
from ._regularize import jacobian_penalty
from ._solution import ConvergenceError, ConvergenceWarning, NonFiniteError, Solution, Status
from .backward import IFT, JFB, Backward, CGNormal, Neumann, Unrolled
from .registry import make_backward, make_solver
from .solvers import Anderson, Picard, Solver

__version__ = "0.1.0"

__all__ = [
    "IFT",
    "JFB",
    "Anderson",
    "Backward",
    "CGNormal",
    "ConvergenceError",
    "ConvergenceWarning",
    "FixedPointLayer",
    "Neumann",
    "NonFiniteError",
    "Picard",
    "Solution",
    "Solver",
    "Status",
    "Unrolled",
    "couples_samples",
    "fixed_point",
    "jacobian_penalty",
    "make_backward",
    "make_solver",
]
