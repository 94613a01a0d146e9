"""Names for solvers and backward modes, used only at the config-file and command-line edge."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .backward import IFT, JFB, Backward, CGNormal, Neumann, Unrolled
from .solvers import Anderson, Picard, Solver

SOLVERS: dict[str, type[Solver]] = {"picard": Picard, "anderson": Anderson}
"""Forward solvers by name."""

ADJOINT_SOLVERS: dict[str, type] = {"picard": Picard, "anderson": Anderson, "cg": CGNormal}
"""Solvers for the IFT adjoint system by name."""

BACKWARDS: dict[str, type[Backward]] = {
    "jfb": JFB,
    "ift": IFT,
    "neumann": Neumann,
    "unrolled": Unrolled,
}
"""Backward modes by name."""


def _lookup(kind: str, table: Mapping[str, type], name: str) -> type:
    if not isinstance(name, str) or name.lower() not in table:
        valid = ", ".join(sorted(table))
        raise ValueError(f"unknown {kind} {name!r}; valid names: {valid}")
    return table[name.lower()]


def _build(kind: str, cls: type, options: Mapping[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name != "norm"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {kind} {cls.__name__}; "
            f"valid options: {', '.join(sorted(fields)) or '(none)'}"
        )
    return cls(**options)


def make_solver(name: str, **options: Any) -> Solver:
    """``make_solver("anderson", tol=1e-4, m=5)``; unknown names or options raise ValueError."""
    return _build("solver", _lookup("solver", SOLVERS, name), options)


def make_backward(name: str, **options: Any) -> Backward:
    """``make_backward("ift", solver={"name": "cg", "max_iter": 50})`` or ``make_backward("jfb")``.

    For ``ift`` the ``solver`` option may be a solver object, a name, or a mapping with a ``name``
    key and that solver's options.
    """
    cls = _lookup("backward mode", BACKWARDS, name)
    if cls is IFT and "solver" in options:
        spec = options["solver"]
        if isinstance(spec, str):
            spec = {"name": spec}
        if isinstance(spec, Mapping):
            spec = dict(spec)
            if "name" not in spec:
                raise ValueError(
                    "the IFT solver needs a 'name'; valid names: " + ", ".join(sorted(ADJOINT_SOLVERS))
                )
            sub = _lookup("adjoint solver", ADJOINT_SOLVERS, spec.pop("name"))
            options = {**options, "solver": _build("adjoint solver", sub, spec)}
    return _build("backward mode", cls, options)
