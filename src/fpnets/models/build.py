"""``build_model(arch, variant, **options)``: every architecture by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import cifar10, digits, mnist, svhn
from .base import (
    LIPSCHITZ_MODES,
    RUNTIME_OPTIONS,
    VARIANTS,
    ArchConfig,
    FixedPointNetwork,
    Parts,
    make_model_backward,
    make_model_solver,
)


@dataclass(frozen=True)
class Arch:
    """An architecture: its config class and its builder."""

    config: type[ArchConfig]
    build_parts: Callable[[Any, str], Parts]


ARCH_TABLE: dict[str, Arch] = {
    "digits": Arch(digits.DigitsConfig, digits.build_parts),
    "mnist": Arch(mnist.MNISTConfig, mnist.build_parts),
    "svhn": Arch(svhn.SVHNConfig, svhn.build_parts),
    "cifar10": Arch(cifar10.CIFAR10Config, cifar10.build_parts),
    "cifar10-unaugmented": Arch(svhn.CIFAR10UnaugmentedConfig, svhn.build_parts),
}

ARCHS = tuple(ARCH_TABLE)
"""Architecture names: "digits", "mnist", "svhn", "cifar10" (the augmented-training network) and
"cifar10-unaugmented" (the SVHN network with CIFAR-10 settings, as in the reference checkpoint)."""


def valid_options(arch: str) -> tuple[str, ...]:
    """The option names :func:`build_model` accepts for ``arch``."""
    return tuple(sorted((*_arch(arch).config.option_names(), *RUNTIME_OPTIONS)))


def _arch(arch: str) -> Arch:
    if not isinstance(arch, str) or arch not in ARCH_TABLE:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
    return ARCH_TABLE[arch]


def build_model(arch: str, variant: str = "fpn", **options: Any) -> FixedPointNetwork:
    """Build a network of architecture ``arch`` (see :data:`ARCHS`) in ``variant`` (see :data:`VARIANTS`).

    Options (unknown ones raise ValueError listing the valid ones):
        solver: forward solver: a :class:`fpnets.Solver` (used as it is), a name, or a mapping
            ``{"name": ..., ...}`` (tol, max_iter and norm default to the architecture's: its
            tolerances and :func:`fpnets.norms.max_channel_norm`). Default: Picard with the architecture's
            tolerance and cap (the Jacobian-based column of the paper for "jacobian").
        backward: a :class:`fpnets.Backward`, a name, or a mapping for :func:`fpnets.make_backward`.
            Default: JFB; for "jacobian", IFT(CGNormal(jacobian_tol, jacobian_max_iter), warn=False).
        lipschitz: "reference" (the reference implementation's rescaling rule, applied by
            ``model.after_optimizer_step()``) or "none". Default: "reference" for "fpn" and
            "jacobian"; "none" for "explicit" (the reference applies the rule in its implicit forward
            only) and "contractive" (contractive by construction).
        lipschitz_every: run the reference rule after every k-th optimizer step only (default 1).
        compile: run the graph-free forward iterations of R through ``torch.compile`` (default
            False; see :class:`fpnets.FixedPointLayer`).
        warn: emit a ConvergenceWarning when a forward solve hits its cap (default False: expected
            in training at tol 0.1 / 50 iterations; read ``model.solution`` instead).
        gamma, latent_blocks, in_channels, num_classes, dropout, negative_slope, tol, max_iter,
        jacobian_tol, jacobian_max_iter (and encoder_dropout for svhn/cifar10): fields of the
        architecture's config dataclass. ``tol``/``max_iter`` cannot be combined with a solver
        object.

    The explicit variant holds the same modules (and the solver, unused): N(d) = S(R(0, Q(d))).
    """
    spec = _arch(arch)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    unknown = sorted(set(options) - set(valid_options(arch)))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for arch {arch!r}; "
            f"valid options: {', '.join(valid_options(arch))}"
        )
    solver_spec = options.pop("solver", None)
    backward_spec = options.pop("backward", None)
    lipschitz = options.pop("lipschitz", "reference" if variant in ("fpn", "jacobian") else "none")
    warn = options.pop("warn", False)
    lipschitz_every = options.pop("lipschitz_every", 1)
    compile_solve = options.pop("compile", False)
    if not isinstance(compile_solve, bool):
        raise ValueError(f"compile must be True or False, got {compile_solve!r}")
    if lipschitz not in LIPSCHITZ_MODES:
        raise ValueError(f"unknown lipschitz mode {lipschitz!r}; valid modes: {', '.join(LIPSCHITZ_MODES)}")
    if not isinstance(warn, bool):
        raise ValueError(f"warn must be True or False, got {warn!r}")
    tol_keys = {"tol", "max_iter", "jacobian_tol", "jacobian_max_iter"} & set(options)
    if tol_keys and solver_spec is not None and not isinstance(solver_spec, (str, Mapping)):
        raise ValueError(
            f"give either a solver object or {', '.join(sorted(tol_keys))}, not both "
            "(a solver mapping such as {'name': 'anderson', 'tol': 1e-3} also works)"
        )
    cfg = spec.config(**options)
    parts = spec.build_parts(cfg, variant)
    return FixedPointNetwork(
        parts.encoder,
        parts.operator,
        parts.readout,
        arch=arch,
        variant=variant,
        config=cfg,
        input_shape=parts.input_shape,
        solver=make_model_solver(solver_spec, cfg, variant),
        backward=make_model_backward(backward_spec, cfg, variant),
        lipschitz=lipschitz,
        warn=warn,
        lipschitz_every=lipschitz_every,
        compile=compile_solve,
    )
