"""What every model family shares: N(d) = S(u*), u* = T(u*; d) = R(u*, Q(d)).

- :class:`ArchConfig`: the options of a family (each family file subclasses it with its defaults).
- :class:`LatentOperator`: R(u, x), the latent map whose fixed point is solved for, in the two
  forms of the paper (MNIST/SVHN, :class:`InnerBlock`: z₀ = u + x, z ← BN(z + σ(σ(conv σ(conv z)))),
  R = γ z_L; CIFAR-10, :class:`OuterBlock`: z₀ = x + γu, z ← BN(σ(z + conv σ(conv z))), R = z_L),
  with or without latent BatchNorm, or contractive by construction.
- :class:`ConvReadout`: S = Linear(dropout(σ(conv u))).
- :class:`FixedPointNetwork`: Q, a :class:`fpnets.FixedPointLayer` around R, and S, plus the
  reference implementation's Lipschitz rule in :meth:`FixedPointNetwork.after_optimizer_step`.

Variants (see :data:`VARIANTS`): "fpn" (the paper's network: latent BatchNorm, JFB), "explicit"
(S(R(0, Q(d))), the same parameters applied once), "jacobian" (no latent BatchNorm, implicit
gradient by IFT with CG on the normal equations: the paper's Jacobian-based baseline) and
"contractive" (spectral-normalised convolutions and averaged residual blocks, no BatchNorm in R:
Lip_u(R) ≤ γ for every parameter value).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._fixed_point import FixedPointLayer
from .._regularize import jacobian_penalty
from .._solution import Solution
from ..backward import IFT, JFB, Backward, CGNormal
from ..layers import SpectralConv2d, reference_rescale_, rescale_to_gamma_
from ..norms import max_channel_norm
from ..registry import backward_from_spec, solver_from_spec
from ..solvers import Picard, Solver

VARIANTS = ("fpn", "explicit", "jacobian", "contractive")
"""Model variants accepted by :func:`fpnets.models.build_model`."""

LIPSCHITZ_MODES = ("reference", "none")
"""Values of the ``lipschitz`` option."""

RUNTIME_OPTIONS = ("solver", "backward", "lipschitz", "lipschitz_every", "warn", "compile")
"""Options of :func:`build_model` that are not :class:`ArchConfig` fields."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ArchConfig:
    """Options shared by every family; a family file subclasses this with its own defaults.

    Attributes:
        in_channels: channels of the input images.
        num_classes: outputs of the readout.
        gamma: γ, the contraction factor of R (in (0, 1)).
        latent_blocks: residual blocks inside R.
        dropout: dropout probability in the readout S.
        negative_slope: slope of σ = LeakyReLU for negative inputs.
        tol, max_iter: forward solver tolerance (on :func:`fpnets.norms.max_channel_norm` of the
            residual, per sample) and iteration cap for the "fpn", "explicit", "contractive" variants.
        jacobian_tol, jacobian_max_iter: the same for the "jacobian" variant, also used for the
            tolerance (relative) and cap of its conjugate-gradient backward solve.
    """

    in_channels: int = 3
    num_classes: int = 10
    gamma: float = 0.5
    latent_blocks: int = 1
    dropout: float = 0.2
    negative_slope: float = 0.1
    tol: float = 0.1
    max_iter: int = 50
    jacobian_tol: float = 0.1
    jacobian_max_iter: int = 50

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("in_channels", "num_classes", "latent_blocks", "max_iter", "jacobian_max_iter"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}: {key} must be a positive integer, got {value!r}")
        if not (_is_number(self.gamma) and 0.0 < self.gamma < 1.0):
            raise ValueError(f"{name}: gamma must lie in (0, 1), got {self.gamma!r}")
        for key in (f.name for f in dataclasses.fields(self) if f.name.endswith("dropout")):
            value = getattr(self, key)
            if not (_is_number(value) and 0.0 <= value < 1.0):
                raise ValueError(f"{name}: {key} must lie in [0, 1), got {value!r}")
        if not (_is_number(self.negative_slope) and 0.0 <= self.negative_slope <= 1.0):
            raise ValueError(f"{name}: negative_slope must lie in [0, 1], got {self.negative_slope!r}")
        for key in ("tol", "jacobian_tol"):
            value = getattr(self, key)
            if not (_is_number(value) and value >= 0):
                raise ValueError(f"{name}: {key} must be a number >= 0, got {value!r}")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


# ----------------------------------------------------------------------------------------------
# The latent operator R(u, x)


class LatentBlock(nn.Module):
    """One residual block of R on (B, C, H, W) latents: h = conv₂ σ(conv₁ z), then :meth:`combine`.

    N is BatchNorm2d(affine=False) when ``batch_norm``, else the identity. Contractive blocks use
    :class:`fpnets.layers.SpectralConv2d` (‖conv‖₂ ≤ 1) and average instead of adding, so they
    are 1-Lipschitz. The two forms of the paper are the subclasses :class:`InnerBlock` and
    :class:`OuterBlock`; each says where its operator puts γ (:attr:`gamma_on_input`).
    """

    gamma_on_input: bool = False
    """Where :class:`LatentOperator` applies γ: z₀ = γu + x (True) or R = γ z_L (False)."""

    def __init__(self, channels: int, *, batch_norm: bool, contractive: bool, negative_slope: float) -> None:
        super().__init__()
        if contractive and batch_norm:
            raise ValueError("LatentBlock: a contractive block cannot hold BatchNorm")
        self.contractive = contractive
        self.negative_slope = negative_slope
        if contractive:
            self.conv1: nn.Module = SpectralConv2d(channels, channels, 3, padding=1)
            self.conv2: nn.Module = SpectralConv2d(channels, channels, 3, padding=1)
        else:
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels, affine=False) if batch_norm else nn.Identity()

    def combine(self, z: Tensor, h: Tensor) -> Tensor:
        raise NotImplementedError

    def join(self, z: Tensor, h: Tensor) -> Tensor:
        """z + h, or ½ (z + h) in a contractive block."""
        return 0.5 * (z + h) if self.contractive else z + h

    def forward(self, z: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        h = self.conv2(F.leaky_relu(self.conv1(z), self.negative_slope))  # (B, C, H, W)
        return self.norm(self.combine(z, h))


class InnerBlock(LatentBlock):
    """The MNIST/SVHN form: z ← N(z + σ(σ(h))) (contractive: N = id, ½ (z + σ(σ(h)))).

    σ twice: the reference's MNIST and SVHN blocks end their conv stack with σ and apply σ to its
    output once more, so the branch ends in σ∘σ (a LeakyReLU of slope 0.01). The published
    checkpoints depend on it: the explicit MNIST checkpoint scores 99.29% on the MNIST test set with
    σ∘σ (the reference's figure) and 99.27% with a single σ.

    σ∘σ is computed as one LeakyReLU of slope s² (for s ≥ 0, σ(σ(h)) = h for h ≥ 0 and s·s·h
    otherwise): one pass over the activations instead of two, forward and backward.
    """

    def combine(self, z: Tensor, h: Tensor) -> Tensor:
        s = self.negative_slope
        h = F.leaky_relu(h, s * s)  # σ∘σ, as in the reference, in one pass
        return self.join(z, h)


class OuterBlock(LatentBlock):
    """The CIFAR-10 form: z ← N(σ(z + h)) (contractive: N = id, σ(½ (z + h))); γ on the input."""

    gamma_on_input = True

    def combine(self, z: Tensor, h: Tensor) -> Tensor:
        return F.leaky_relu(self.join(z, h), self.negative_slope)


class LatentOperator(nn.Module):
    """R(u, x) with x = Q(d): the operator T(u; d) whose fixed point the network computes.

    z₀ = a·u + x, then the blocks, then R = b·z_L, with (a, b) = (1, γ) for :class:`InnerBlock`
    (MNIST, SVHN, CIFAR-10 unaugmented, digits) and (γ, 1) for :class:`OuterBlock` (CIFAR-10
    augmented), as the block's ``gamma_on_input`` says. With contractive blocks (1-Lipschitz),
    Lip_u(R) ≤ γ for every parameter value.

    Latent BatchNorm (``batch_norm``) in training mode normalises with batch statistics, so R
    couples the samples of a batch (the fixed-point layer then iterates the whole batch), and its
    running statistics are updated at every evaluation of R, i.e. at every iteration of the
    forward solve, exactly as in the reference implementation.
    """

    def __init__(
        self,
        channels: int,
        blocks: int,
        gamma: float,
        *,
        block: type[LatentBlock] = InnerBlock,
        batch_norm: bool = True,
        contractive: bool = False,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.channels = channels
        self.input_scale = self.gamma if block.gamma_on_input else 1.0  # a in z₀ = a·u + x
        self.output_scale = 1.0 if block.gamma_on_input else self.gamma  # b in R = b·z_L
        self.blocks = nn.ModuleList(
            block(channels, batch_norm=batch_norm, contractive=contractive, negative_slope=negative_slope)
            for _ in range(blocks)
        )

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def forward(self, u: Tensor, x: Tensor) -> Tensor:  # (B, C, H, W), (B, C, H, W) -> (B, C, H, W)
        z = torch.add(x, u, alpha=self.input_scale)  # z₀ = a·u + x
        for block in self.blocks:
            z = block(z)
        return z if self.output_scale == 1.0 else self.output_scale * z

    def rescalable_parameters(self) -> list[Tensor]:
        """The convolution weights and biases of every block (what the reference rule rescales)."""
        params: list[Tensor] = []
        for block in self.blocks:
            for conv in (block.conv1, block.conv2):
                params.append(conv.weight)
                if conv.bias is not None:
                    params.append(conv.bias)
        return params


def latent_operator(
    cfg: ArchConfig,
    channels: int,
    variant: str,
    block: type[LatentBlock] = InnerBlock,
) -> LatentOperator:
    """R for ``variant``: latent BatchNorm for "fpn"/"explicit", none for "jacobian", spectral for
    "contractive"."""
    return LatentOperator(
        channels,
        cfg.latent_blocks,
        cfg.gamma,
        block=block,
        batch_norm=variant in ("fpn", "explicit"),
        contractive=variant == "contractive",
        negative_slope=cfg.negative_slope,
    )


# ----------------------------------------------------------------------------------------------
# The readout S


class ConvReadout(nn.Module):
    """S(u) = Linear(dropout(σ(conv u))) with a bias-free Linear layer.

    ``channel_dropout`` picks Dropout2d (whole channels) over elementwise Dropout.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        in_size: int,
        num_classes: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dropout: float = 0.2,
        channel_dropout: bool = True,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=padding)
        out_size = (in_size + 2 * padding - 3) // stride + 1
        self.dropout = nn.Dropout2d(dropout) if channel_dropout else nn.Dropout(dropout)
        self.fc = nn.Linear(out_channels * out_size * out_size, num_classes, bias=False)

    def forward(self, u: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_classes)
        y = F.leaky_relu(self.conv(u), self.negative_slope)  # (B, C', H', W')
        y = self.dropout(y)
        return self.fc(y.flatten(1))  # (B, C'·H'·W') -> (B, num_classes)


class Parts(NamedTuple):
    """What a family file builds for one configuration and variant."""

    encoder: nn.Module  # Q: (B, C_in, H, W) -> (B, C, h, w)
    operator: LatentOperator  # R: (B, C, h, w), (B, C, h, w) -> (B, C, h, w)
    readout: nn.Module  # S: (B, C, h, w) -> (B, num_classes)
    input_shape: tuple[int, int, int]  # (C_in, H, W)


# ----------------------------------------------------------------------------------------------
# Solver and backward from options


def default_solver_settings(cfg: ArchConfig, variant: str) -> tuple[float, int]:
    """(tol, max_iter) of the forward solve for ``variant``."""
    if variant == "jacobian":
        return cfg.jacobian_tol, cfg.jacobian_max_iter
    return cfg.tol, cfg.max_iter


def make_model_solver(spec: Any, cfg: ArchConfig, variant: str) -> Solver:
    """The forward solver from the ``solver`` option, by :func:`fpnets.registry.solver_from_spec`.

    None: Picard with the family's tolerance and cap, measuring residuals with
    :func:`fpnets.norms.max_channel_norm` (per sample), so tolerances mean what they meant in the
    reference implementation. A name or a mapping gets the same defaults (``name="picard"``,
    ``tol``, ``max_iter``, ``norm="max_channel"``) for the options it leaves out; a solver object is used as
    it is (its ``norm`` is its own: l2 unless given).
    """
    tol, max_iter = default_solver_settings(cfg, variant)
    if spec is None:
        return Picard(tol=tol, max_iter=max_iter, norm=max_channel_norm)
    return solver_from_spec(spec, {"name": "picard", "tol": tol, "max_iter": max_iter, "norm": "max_channel"})


def make_model_backward(spec: Any, cfg: ArchConfig, variant: str) -> Backward:
    """The backward mode from the ``backward`` option.

    None: :class:`fpnets.JFB`, except for the "jacobian" variant: ``IFT(CGNormal(tol=jacobian_tol,
    max_iter=jacobian_max_iter), warn=False)``, the paper's baseline (CG on the normal equations,
    at most max_depth steps). Otherwise :func:`fpnets.registry.backward_from_spec`.
    """
    if spec is None:
        if variant == "jacobian":
            return IFT(CGNormal(tol=cfg.jacobian_tol, max_iter=cfg.jacobian_max_iter), warn=False)
        return JFB()
    return backward_from_spec(spec)


# ----------------------------------------------------------------------------------------------
# The network


class FixedPointNetwork(nn.Module):
    """N(d) = S(u*) with u* = R(u*, Q(d)) (variant "explicit": N(d) = S(R(0, Q(d)))).

    Submodules: ``encoder`` (Q), ``latent`` (a :class:`fpnets.FixedPointLayer` holding R as
    ``latent.operator``, also in the explicit variant, so every variant has the same parameter
    names) and ``readout`` (S).

    Attributes:
        arch, variant, config: how the model was built.
        lipschitz: "reference" to apply the reference implementation's rescaling rule in
            :meth:`after_optimizer_step`, or "none".
        input_shape: (C, H, W) the model expects.
    """

    def __init__(
        self,
        encoder: nn.Module,
        operator: LatentOperator,
        readout: nn.Module,
        *,
        arch: str,
        variant: str,
        config: ArchConfig,
        input_shape: tuple[int, int, int],
        solver: Solver,
        backward: Backward,
        lipschitz: str,
        warn: bool = False,
        lipschitz_every: int = 1,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
        if lipschitz not in LIPSCHITZ_MODES:
            raise ValueError(
                f"unknown lipschitz mode {lipschitz!r}; valid modes: {', '.join(LIPSCHITZ_MODES)}"
            )
        self.arch = arch
        self.variant = variant
        self.config = config
        self.input_shape = tuple(input_shape)
        self.lipschitz = lipschitz
        if not (
            isinstance(lipschitz_every, int)
            and not isinstance(lipschitz_every, bool)
            and lipschitz_every >= 1
        ):
            raise ValueError(f"lipschitz_every must be a positive integer, got {lipschitz_every!r}")
        self.lipschitz_every = lipschitz_every
        self.rescales = 0  # how many times the reference rule has rescaled R (this process)
        self._steps = 0
        self.encoder = encoder
        self.latent = FixedPointLayer(operator, solver, backward, warn=warn, compile=compile)
        self.readout = readout
        self._rescale_point: tuple[Tensor, Tensor] | None = None
        self._last_point: tuple[Tensor, Tensor] | None = None
        self.memory_format = torch.contiguous_format

    def channels_last_(self, enabled: bool = True) -> FixedPointNetwork:
        """Keep weights and activations in channels-last (NHWC) memory order, in place.

        Same values, another layout: on CPU (oneDNN) the 3×3 latent convolutions run about 2× faster
        in NHWC. Inputs are converted in :meth:`forward`.
        """
        self.memory_format = torch.channels_last if enabled else torch.contiguous_format
        self.to(memory_format=self.memory_format)
        return self

    @property
    def operator(self) -> LatentOperator:
        """R, the latent operator (a module called as ``operator(u, x)`` with x = Q(d))."""
        return self.latent.operator  # type: ignore[return-value]

    @property
    def gamma(self) -> float:
        return self.config.gamma

    @property
    def implicit(self) -> bool:
        """False for the explicit variant (no fixed point is solved)."""
        return self.variant != "explicit"

    @property
    def solution(self) -> Solution | None:
        """The :class:`fpnets.Solution` of the last forward (detached), or None (explicit variant or
        no forward yet). ``solution.converged`` holds the per-sample convergence flags."""
        return self.latent.solution if self.implicit else None

    @property
    def converged_fraction(self) -> float | None:
        """Fraction of the last forward's samples that reached the tolerance (None if no solve)."""
        sol = self.solution
        return None if sol is None else float(sol.converged.float().mean())

    def forward(self, d: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_classes)
        if d.dim() != 4 or tuple(d.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{self.arch} model expects input of shape (B, {', '.join(map(str, self.input_shape))}), "
                f"got {tuple(d.shape)}"
            )
        d = d.contiguous(memory_format=self.memory_format)
        x = self.encoder(d)  # (B, C, H, W) Q(d), injected at every evaluation of R
        if self.implicit:
            u = self.latent(x)  # (B, C, H, W) u* = R(u*, x)
            at = u
        else:
            at = torch.zeros_like(x)
            u = self.operator(at, x)  # (B, C, H, W) R(0, x)
        if self.training:
            self._last_point = (at.detach(), x.detach())
            if self.lipschitz == "reference":
                self._rescale_point = self._last_point
        return self.readout(u)

    def jacobian_penalty(self, probes: int = 1) -> Tensor:
        """Hutchinson estimate of ‖∂R/∂u‖²_F / n at the (u*, Q(d)) of the last training forward
        (Bai, Koltun, Kolter 2021), differentiable in R's parameters: add λ times it to the loss."""
        if self._last_point is None:
            raise RuntimeError("jacobian_penalty needs a training-mode forward first")
        u, x = self._last_point
        op = self.operator
        return jacobian_penalty(lambda z: op(z, x), u, samples=probes)

    @torch.no_grad()
    def after_optimizer_step(self) -> float | None:
        """Call after every ``optimizer.step()``. With ``lipschitz="reference"``, applies the
        reference implementation's rule at the (u, Q(d)) stored by the last training forward: ρ is
        measured by :func:`fpnets.layers.reference_rescale_` and, if ρ > γ, every latent conv weight
        and bias is multiplied by (γ/ρ)^(1/blocks). Returns ρ, or None when nothing was measured
        (rule off, or no training forward since the last call).

        With ``lipschitz_every = k`` the rule runs after every k-th step only. R is evaluated in
        the model's current mode; BatchNorm running statistics are restored afterwards and the
        probe's noise comes from a forked random state, so a probe that does not rescale leaves
        training exactly as it would have been without it. ``self.rescales`` counts rescalings. Under torch.distributed
        (several processes), ρ is averaged over the processes before the decision, so every replica
        applies the same factor and the replicas stay identical; every process must then call this
        after every step, as it does in a data-parallel loop.
        """
        if self.lipschitz != "reference" or self._rescale_point is None:
            return None
        u, x = self._rescale_point
        self._rescale_point = None
        self._steps += 1
        if (self._steps - 1) % self.lipschitz_every:
            return None
        op = self.operator
        saved = [b.clone() for b in op.buffers()]
        devices = [u.device] if u.device.type == "cuda" else []
        # the probe draws its noise from a forked random state: training (dropout) sees the same
        # random numbers with or without the probe, so the rule changes the trajectory only when
        # it actually rescales
        with torch.random.fork_rng(devices=devices):
            try:  # measure only (no parameters passed), so that ρ can be averaged over processes
                ratio = reference_rescale_(op, u, x, op.gamma, [], op.num_blocks)
            finally:
                for b, s in zip(op.buffers(), saved, strict=True):
                    b.copy_(s)
        ratio = _mean_over_processes(ratio, u)
        if rescale_to_gamma_(op.rescalable_parameters(), ratio, op.gamma, op.num_blocks):
            self.rescales += 1
        return ratio

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, variant={self.variant!r}, lipschitz={self.lipschitz!r}"


def _mean_over_processes(value: float, like: Tensor) -> float:
    """The mean of ``value`` over the processes of the default torch.distributed group (if any)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=like.device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()
