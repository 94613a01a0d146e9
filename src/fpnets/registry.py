"""Names for solvers, backward modes and residual norms, used only at the config-file and command-line edge.

One parser, :func:`solver_from_spec` / :func:`backward_from_spec`, reads the three forms a user may
give (an object, a name, or a mapping ``{"name": ..., <options>}``) for the configs, the command
line and the models alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from .backward import IFT, JFB, Backward, CGNormal, Neumann, Unrolled
from .norms import l2_norm, max_channel_norm
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

NORMS: dict[str, Callable[[Tensor], Tensor]] = {"l2": l2_norm, "max_channel": max_channel_norm}
"""Per-sample residual norms by name (the ``norm`` option of every solver)."""


def _lookup(kind: str, table: Mapping[str, Any], name: str) -> Any:
    if not isinstance(name, str) or name.lower() not in table:
        valid = ", ".join(sorted(table))
        raise ValueError(f"unknown {kind} {name!r}; valid names: {valid}")
    return table[name.lower()]


def norm_name(norm: Callable[[Tensor], Tensor]) -> str | None:
    """The registry name of a norm function, or None for a norm of the user's own."""
    return next((k for k, v in NORMS.items() if v is norm), None)


def _build(kind: str, cls: type, options: Mapping[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {kind} {cls.__name__}; "
            f"valid options: {', '.join(sorted(fields)) or '(none)'}"
        )
    options = dict(options)
    if isinstance(options.get("norm"), str):
        options["norm"] = _lookup("norm", NORMS, options["norm"])
    return cls(**options)


def make_solver(name: str, **options: Any) -> Solver:
    """``make_solver("anderson", tol=1e-4, m=5, norm="max_channel")``; unknown names or options raise
    ValueError listing the valid ones. ``norm`` is a name in :data:`NORMS` or a function; unset, the
    solver's own default (l2), exactly as for ``Anderson(...)``."""
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


def solver_from_spec(spec: Any, defaults: Mapping[str, Any] | None = None) -> Solver:
    """A forward solver from an object (used as it is), a name, or a mapping ``{"name": ..., ...}``.

    ``defaults`` (e.g. a model's ``name``, ``tol``, ``max_iter``, ``norm``) fill the options a name
    or a mapping leaves out; an object is complete by itself. An empty mapping is an error (it
    names no solver), as is a mapping without ``name`` when ``defaults`` has none.
    """
    if isinstance(spec, Solver):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"solver must be a fpnets Solver, a name or a mapping with a 'name' key, got {type(spec).__name__}"
        )
    options = dict(spec)
    if not options:
        raise ValueError("an empty solver mapping names no solver; give None for the default solver")
    for key, value in (defaults or {}).items():
        options.setdefault(key, value)
    if "name" not in options:
        raise ValueError(
            f"solver: a mapping needs a 'name' key ({', '.join(sorted(SOLVERS))}), got {dict(spec)!r}"
        )
    return make_solver(options.pop("name"), **options)


def backward_from_spec(spec: Any) -> Backward:
    """A backward mode from an object (used as it is), a name, or a mapping ``{"name": ..., ...}``."""
    if isinstance(spec, Backward):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"backward must be a fpnets Backward, a name or a mapping with a 'name' key, got {type(spec).__name__}"
        )
    options = dict(spec)
    if "name" not in options:
        raise ValueError(
            f"backward: a mapping needs a 'name' key ({', '.join(sorted(BACKWARDS))}), got {dict(spec)!r}"
        )
    return make_backward(options.pop("name"), **options)
