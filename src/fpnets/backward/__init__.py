"""Backward modes: objects passed as ``backward=`` to :func:`fpnets.fixed_point`."""

from ._modes import IFT, JFB, Backward, CGNormal, Neumann, Unrolled

__all__ = ["IFT", "JFB", "Backward", "CGNormal", "Neumann", "Unrolled"]
