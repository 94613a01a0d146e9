"""F-FPN models for CT: learned regularisers R_Θ, the feasibility operator T(u; d) = P_d(R_Θ(u)), the
implicit network (fixed point of T) and its unrolled twin.

Heaton, Wu Fung, Gibali, Yin, "Feasibility-based fixed point networks" (2021): the reconstruction
is u* = T(u*; d), T(u; d) = P_d(R_Θ(u)), with P_d the relaxed projection step of
:class:`fpnets.operators.radon.RelaxedProjection` (towards {u : A u ≈ d} and into [0, 1]) and R_Θ a
learned regulariser. Training is JFB (the default backward mode).

Regularisers (both (B, 1, N, N) -> (B, 1, N, N)):

- :class:`DifferenceRegulariser`, the paper's ellipse network: 4 residual blocks acting on finite
  differences, z ← z_ref + σ(conv₂ σ(conv₁ D z)) with D z = roll(z, 1) − z along x in even blocks
  and along y in odd ones, σ = LeakyReLU(0.05), channels 1 → 42 → … → 42 → 1 (z_ref = z, except
  in the last block, whose reference is the first channel), then clamped to [−10, 10]; 96,307
  parameters at 42 channels, 4 blocks (the authors' count). Its Lipschitz constant is controlled
  only by the reference rule (:meth:`FFPN.after_optimizer_step`), a heuristic.
- :class:`ContractiveRegulariser`: R(u) = γ (½ u + ½ g(u)), g = head ∘ blocks ∘ lift built from
  :class:`fpnets.layers.SpectralConv2d` (‖W‖₂ ≤ 1) and 1-Lipschitz LeakyReLUs with averaged
  residual blocks, so Lip(R) ≤ γ < 1 for every parameter value (:attr:`lipschitz_bound`). With 42
  channels and 3 blocks its convolutions have exactly the shapes of the paper's network (96,307
  parameters). With P_d nonexpansive, T is then a γ-contraction and the fixed point is unique.
- :class:`PotentialRegulariser`: R(u) = γ h_K ∘ … ∘ h_1(u) + (1 − γ) c, each h_k a
  :class:`fpnets.layers.ConvexPotentialConv2d` (a gradient step u − (2/L²) Wᵀσ(Wu + b) on a learned
  convex potential, 1-Lipschitz by construction; initialised as a step on a Huber-smoothed TV) and c
  a learned scalar (the point the γ-shrinkage pulls towards). Lip(R) ≤ γ for every parameter value,
  so T is a γ-contraction, but unlike the averaged form R can sharpen: each layer is a learned
  TV-like descent step, not an average with u.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._fixed_point import fixed_point
from ..._solution import Solution
from ...backward import JFB, Backward
from ...layers import ConvexPotentialConv2d, SpectralConv2d, lipschitz_estimate, rescale_to_gamma_
from ...norms import max_channel_norm
from ...operators.radon import ParallelBeamGeometry, RadonTransform, RelaxedProjection
from ...solvers import Picard, Solver

__all__ = [
    "FFPN",
    "INITS",
    "LIPSCHITZ_RULES",
    "ContractiveRegulariser",
    "DifferenceRegulariser",
    "FeasibilityOperator",
    "PotentialRegulariser",
    "UnrolledFFPN",
    "check_sinograms",
    "default_solver",
]

INITS = ("fbp", "zeros")
"""Starting points u₀ of the fixed-point solve."""

LIPSCHITZ_RULES = ("reference", "power", "none")
"""Lipschitz rules of the paper-form F-FPN (:meth:`FFPN.after_optimizer_step`)."""


def check_sinograms(d: Tensor, geometry: ParallelBeamGeometry, who: str) -> None:
    """Raise a clear error unless d is a finite (B, 1, n_angles, n_detectors) float tensor."""
    if not isinstance(d, Tensor):
        raise TypeError(f"{who} expects a torch.Tensor of sinograms, got {type(d).__name__}")
    shape = (1, *geometry.sinogram_shape)
    if d.dim() != 4 or tuple(d.shape[1:]) != shape:
        raise ValueError(
            f"{who} expects sinograms of shape (B, 1, {geometry.n_angles}, {geometry.n_detectors}) "
            f"for this geometry, got {tuple(d.shape)}"
        )
    if not d.is_floating_point():
        raise TypeError(f"{who} expects float32 or float64 sinograms, got {d.dtype}")
    if not torch.isfinite(d).all():
        raise ValueError(f"{who}: the sinograms hold NaN or Inf values")


class DifferenceRegulariser(nn.Module):
    """The paper's R_Θ on ellipses (module docstring): residual blocks on finite differences.

    Args:
        channels: width of the hidden blocks (42 in the paper).
        blocks: residual blocks (4 in the paper).
        negative_slope: of σ = LeakyReLU (0.05).
        clamp: the output is clamped to [−clamp, clamp] (10 in the paper).
    """

    def __init__(
        self, channels: int = 42, blocks: int = 4, negative_slope: float = 0.05, clamp: float = 10.0
    ):
        super().__init__()
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"DifferenceRegulariser: blocks must be a positive integer, got {blocks!r}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"DifferenceRegulariser: channels must be a positive integer, got {channels!r}")
        self.negative_slope = float(negative_slope)
        self.clamp = float(clamp)
        self.convs = nn.ModuleList(
            nn.ModuleList(
                [
                    nn.Conv2d(1 if i == 0 else channels, channels, 3, padding=1),
                    nn.Conv2d(channels, 1 if i == blocks - 1 else channels, 3, padding=1),
                ]
            )
            for i in range(blocks)
        )

    @property
    def num_blocks(self) -> int:
        return len(self.convs)

    def forward(self, u: Tensor) -> Tensor:  # (B, 1, N, N) -> (B, 1, N, N)
        z = u
        last = len(self.convs) - 1
        for i, (first, second) in enumerate(self.convs):  # type: ignore[misc]
            ref = z if i < last else z[:, :1]  # (B, C, N, N); the last block keeps channel 0
            dz = torch.roll(z, 1, dims=-1) - z if i % 2 == 0 else torch.roll(z, 1, dims=-2) - z
            h = F.leaky_relu(first(dz), self.negative_slope)
            z = ref + F.leaky_relu(second(h), self.negative_slope)  # (B, C', N, N)
        return z.clamp(-self.clamp, self.clamp)

    def rescalable_parameters(self) -> list[Tensor]:
        """Both convolutions' weights and biases of every block (what the reference rule scales)."""
        return [p for pair in self.convs for conv in pair for p in (conv.weight, conv.bias)]  # type: ignore[union-attr]


class ContractiveRegulariser(nn.Module):
    """R(u) = γ (½ u + ½ g(u)) with g 1-Lipschitz by construction, so Lip(R) ≤ γ (module docstring).

    g: z₀ = σ(lift u), per block z ← ½ (z + σ(W₂ σ(W₁ z))), g = head z_L, with every W a
    :class:`fpnets.layers.SpectralConv2d` of norm ≤ 1 and σ = LeakyReLU (slope ≤ 1).
    """

    def __init__(
        self, channels: int = 42, blocks: int = 3, gamma: float = 0.99, negative_slope: float = 0.05
    ):
        super().__init__()
        if not (isinstance(gamma, (int, float)) and 0.0 < gamma < 1.0):
            raise ValueError(f"ContractiveRegulariser: gamma (γ) must lie in (0, 1), got {gamma!r}")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
            raise ValueError(f"ContractiveRegulariser: blocks must be an integer >= 0, got {blocks!r}")
        if not 0.0 <= negative_slope <= 1.0:
            raise ValueError(
                f"ContractiveRegulariser: negative_slope must lie in [0, 1], got {negative_slope!r}"
            )
        self.gamma = float(gamma)
        self.negative_slope = float(negative_slope)
        self.lift = SpectralConv2d(1, channels, 3)
        self.blocks = nn.ModuleList(
            nn.ModuleList([SpectralConv2d(channels, channels, 3), SpectralConv2d(channels, channels, 3)])
            for _ in range(blocks)
        )
        self.head = SpectralConv2d(channels, 1, 3)

    @property
    def lipschitz_bound(self) -> float:
        """γ: Lip(R) ≤ γ for every parameter value."""
        return self.gamma

    def forward(self, u: Tensor) -> Tensor:  # (B, 1, N, N) -> (B, 1, N, N)
        s = self.negative_slope
        z = F.leaky_relu(self.lift(u), s)  # (B, C, N, N)
        for first, second in self.blocks:  # type: ignore[misc]
            z = 0.5 * (z + F.leaky_relu(second(F.leaky_relu(first(z), s)), s))
        return self.gamma * (0.5 * u + 0.5 * self.head(z))


class PotentialRegulariser(nn.Module):
    """R(u) = γ h_K ∘ … ∘ h_1(u) + (1 − γ) c: convex-potential layers, Lip(R) ≤ γ (module docstring).

    Args:
        channels: hidden channels of each layer's W (potential terms per pixel).
        blocks: K, the number of layers h_k.
        gamma: γ ∈ (0, 1).
        activation: σ of the layers (:data:`fpnets.layers.POTENTIAL_ACTIVATIONS`; "hardtanh": Huber
            potentials, TV-like).
        scale: the fixed factor α of every W = α V (:class:`fpnets.layers.ConvexPotentialConv2d`;
            with the finite-difference initialisation, the Huber threshold is 1/α and the TV step
            about 1/(4α) per layer).
        kernel_size: odd size of W's kernel.
    """

    def __init__(
        self,
        channels: int = 8,
        blocks: int = 4,
        gamma: float = 0.99,
        activation: str = "hardtanh",
        scale: float = 2000.0,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if not (isinstance(gamma, (int, float)) and 0.0 < gamma < 1.0):
            raise ValueError(f"PotentialRegulariser: gamma (γ) must lie in (0, 1), got {gamma!r}")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"PotentialRegulariser: blocks must be a positive integer, got {blocks!r}")
        self.gamma = float(gamma)
        self.layers = nn.ModuleList(
            ConvexPotentialConv2d(1, channels, kernel_size, activation=activation, scale=scale)
            for _ in range(blocks)
        )
        self.centre = nn.Parameter(torch.zeros(()))  # c

    @property
    def lipschitz_bound(self) -> float:
        """γ: Lip(R) ≤ γ · Π Lip(h_k) ≤ γ for every parameter value."""
        return self.gamma

    def forward(self, u: Tensor) -> Tensor:  # (B, 1, N, N) -> (B, 1, N, N)
        z = u
        for layer in self.layers:
            z = layer(z)
        return self.gamma * z + (1.0 - self.gamma) * self.centre


class FeasibilityOperator(nn.Module):
    """T(u; d) = P_d(R_Θ(u)): (B, 1, N, N), (B, 1, K, D) -> (B, 1, N, N)."""

    def __init__(self, regulariser: nn.Module, projection: RelaxedProjection) -> None:
        super().__init__()
        self.regulariser = regulariser
        self.projection = projection

    def forward(self, u: Tensor, d: Tensor) -> Tensor:
        return self.projection(self.regulariser(u), d)


def default_solver(tol: float = 5e-3, max_iter: int = 100) -> Picard:
    """The reference F-FPN stopping rule, per sample: Picard iteration until max_p |u_{k+1} − u_k|_p
    ≤ tol (5e-3) or max_iter (100) evaluations."""
    return Picard(tol=tol, max_iter=max_iter, norm=max_channel_norm)


REGULARISERS = ("difference", "contractive", "potential")
"""Names of the built-in regularisers R_Θ."""


def _make_regulariser(
    kind: str, channels: int, blocks: int | None, gamma: float, negative_slope: float, **extra: object
) -> nn.Module:
    if kind != "potential" and extra:
        raise TypeError(f"the {kind} regulariser takes no option {', '.join(sorted(extra))}")
    if kind == "difference":
        return DifferenceRegulariser(channels, 4 if blocks is None else blocks, negative_slope)
    if kind == "contractive":
        return ContractiveRegulariser(channels, 3 if blocks is None else blocks, gamma, negative_slope)
    if kind == "potential":
        return PotentialRegulariser(channels, 4 if blocks is None else blocks, gamma, **extra)  # type: ignore[arg-type]
    raise ValueError(f"unknown regulariser {kind!r}; valid regularisers: {', '.join(REGULARISERS)}")


class _CTReconstructor(nn.Module):
    """Shared parts: geometry, A, P_d, R_Θ, the starting point."""

    def __init__(
        self,
        geometry: ParallelBeamGeometry,
        regulariser: str | nn.Module,
        channels: int,
        blocks: int | None,
        gamma: float,
        negative_slope: float,
        init: str,
        fbp_filter: str,
        relaxation: float,
        weighting: Literal["landweber", "sart"],
        regulariser_options: dict[str, object] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(geometry, ParallelBeamGeometry):
            raise TypeError(f"geometry must be a ParallelBeamGeometry, got {type(geometry).__name__}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; valid starting points: {', '.join(INITS)}")
        self.geometry = geometry
        self.radon = RadonTransform(geometry)
        self.projection = RelaxedProjection(self.radon, relaxation=relaxation, weighting=weighting)
        reg = (
            regulariser
            if isinstance(regulariser, nn.Module)
            else _make_regulariser(
                regulariser, channels, blocks, gamma, negative_slope, **(regulariser_options or {})
            )
        )
        self.operator = FeasibilityOperator(reg, self.projection)
        self.init = init
        self.fbp_filter = fbp_filter
        self.gamma = float(gamma)

    @property
    def regulariser(self) -> nn.Module:
        return self.operator.regulariser

    @property
    def lipschitz_bound(self) -> float | None:
        """A proven bound on Lip_u(T) (γ with a contractive regulariser and "landweber" P_d), else None."""
        bound = getattr(self.regulariser, "lipschitz_bound", None)
        if bound is None or self.projection.weighting != "landweber":
            return None
        return float(bound) * self.projection.lipschitz_bound

    def after_optimizer_step(self) -> float | None:
        """Per-step hook; nothing to do here (:class:`FFPN` applies the reference rule). Returns None."""
        return None

    def initial(self, d: Tensor) -> Tensor:
        """u₀: FBP clipped to [0, 1], or zeros. (B, 1, K, D) -> (B, 1, N, N)."""
        if self.init == "zeros":
            return torch.zeros(d.shape[0], 1, *self.geometry.image_shape, dtype=d.dtype, device=d.device)
        with torch.no_grad():
            return self.radon.fbp(d.detach(), self.fbp_filter).clamp(0.0, 1.0)  # type: ignore[arg-type]


class FFPN(_CTReconstructor):
    """The feasibility-based fixed point network: ``model(d) = u*`` with u* = P_d(R_Θ(u*)).

    Args:
        geometry: the scan; sinograms must be (B, 1, n_angles, n_detectors).
        regulariser: "difference" (the paper's, default), "contractive", "potential", or an
            ``nn.Module`` mapping (B, 1, N, N) to itself.
        channels, blocks, gamma, negative_slope: options of the built regulariser (blocks default:
            4 for "difference" and "potential", 3 for "contractive"; γ is the contraction factor of
            the contractive and potential ones and the target of the reference rule, 0.99 as in the
            authors' code).
        solver: a :class:`fpnets.Solver` (default :func:`default_solver`: Picard, tol 5e-3 on
            max_p |Δu|, 100 iterations).
        backward: a :class:`fpnets.Backward` (default :class:`fpnets.JFB`).
        init: u₀, "fbp" (Hann-filtered FBP clipped to [0, 1], default) or "zeros".
        relaxation, weighting: of P_d (:class:`fpnets.operators.radon.RelaxedProjection`).
        lipschitz: "reference" (the authors' rescaling rule in :meth:`after_optimizer_step`;
            default for the "difference" regulariser), "power" (the same rescaling, driven by a
            power-iteration estimate of ‖∂T/∂u‖₂ at the fixed point, target 1) or "none" (default
            otherwise).
        warn: warn when a solve stops at its cap.
        activation, scale: of the "potential" regulariser (:class:`PotentialRegulariser`).

    After a forward, ``self.solution`` holds the (detached) :class:`fpnets.Solution`.
    """

    POWER_SAMPLES = 4
    """Samples of the last training batch at which :meth:`power_rule` estimates ‖∂T/∂u‖₂."""
    POWER_ITERATIONS = 6
    """Power-iteration steps of :meth:`power_rule`."""

    def __init__(
        self,
        geometry: ParallelBeamGeometry,
        *,
        regulariser: str | nn.Module = "difference",
        channels: int = 42,
        blocks: int | None = None,
        gamma: float = 0.99,
        negative_slope: float = 0.05,
        solver: Solver | None = None,
        backward: Backward | None = None,
        init: str = "fbp",
        fbp_filter: str = "hann",
        relaxation: float = 1.99,
        weighting: Literal["landweber", "sart"] = "landweber",
        lipschitz: str | None = None,
        warn: bool = False,
        activation: str | None = None,
        scale: float | None = None,
    ) -> None:
        options = {k: v for k, v in (("activation", activation), ("scale", scale)) if v is not None}
        if options and regulariser != "potential":
            raise TypeError(
                f"FFPN: {', '.join(options)} apply to the potential regulariser only (regulariser="
                f"{regulariser!r}); leave them unset"
            )
        super().__init__(
            geometry,
            regulariser,
            channels,
            blocks,
            gamma,
            negative_slope,
            init,
            fbp_filter,
            relaxation,
            weighting,
            options,
        )
        if solver is not None and not isinstance(solver, Solver):
            raise TypeError(f"solver must be a fpnets Solver (Picard, Anderson), got {solver!r}")
        if backward is not None and not isinstance(backward, Backward):
            raise TypeError(
                f"backward must be a fpnets Backward (JFB, IFT, Neumann, Unrolled), got {backward!r}"
            )
        self.solver = default_solver() if solver is None else solver
        self.backward_mode = JFB() if backward is None else backward
        if lipschitz is None:
            lipschitz = "reference" if isinstance(self.regulariser, DifferenceRegulariser) else "none"
        if lipschitz not in LIPSCHITZ_RULES:
            raise ValueError(
                f"unknown lipschitz mode {lipschitz!r}; valid modes: {', '.join(LIPSCHITZ_RULES)}"
            )
        if lipschitz != "none" and not (
            hasattr(self.regulariser, "rescalable_parameters") and hasattr(self.regulariser, "num_blocks")
        ):
            raise ValueError(
                f"lipschitz={lipschitz!r} needs a regulariser with rescalable_parameters() and num_blocks "
                "(DifferenceRegulariser has both); pass lipschitz='none' otherwise"
            )
        self.lipschitz = lipschitz
        self.warn = warn
        self.solution: Solution | None = None
        self.rescales = 0
        self._rescale_point: tuple[Tensor, Tensor] | None = None

    def forward(self, d: Tensor, u0: Tensor | None = None) -> Tensor:  # (B, 1, K, D) -> (B, 1, N, N)
        check_sinograms(d, self.geometry, "FFPN")
        z0 = self.initial(d) if u0 is None else u0
        sol = fixed_point(
            self.operator, z0, d, solver=self.solver, backward=self.backward_mode, warn=self.warn
        )
        self.solution = sol.detached()
        if self.training and self.lipschitz != "none":
            self._rescale_point = (sol.value.detach(), d.detach())
        return sol.value

    def after_optimizer_step(self, noise: float = 0.05) -> float | None:
        """The Lipschitz rule, to call after every ``optimizer.step()``: :meth:`reference_rule`
        (lipschitz="reference") or :meth:`power_rule` (lipschitz="power"); returns the measured ratio,
        or None when nothing was measured."""
        if self.lipschitz == "power":
            return self.power_rule()
        return self.reference_rule(noise)

    def power_rule(self) -> float | None:
        """A Lipschitz rule on the worst direction instead of a random one (lipschitz="power").

        At the fixed points u and sinograms d of the last training forward (its first
        :attr:`POWER_SAMPLES` samples), estimates ρ = max_b ‖∂T/∂u (u_b; d_b)‖₂ by
        :attr:`POWER_ITERATIONS` steps of power iteration on JᵀJ (:func:`fpnets.layers.lipschitz_estimate`,
        a lower bound that approaches the norm), and if ρ > 1 multiplies every block's weights and
        biases by (1/ρ)^(1/blocks), as the reference rule does. The target is 1, not γ: at the
        solutions P_d alone has ‖∂P_d‖₂ ≈ 0.997 (directions close to the null space of A, where P_d
        is the identity), so no rescaling of R_Θ brings the estimate below γ = 0.99 and such a
        target would shrink R_Θ at every step. Keeps T locally nonexpansive at the training
        solutions; a heuristic, not a bound. The random start comes from a forked random state.
        """
        if self.lipschitz != "power" or self._rescale_point is None:
            return None
        u, d = self._rescale_point
        self._rescale_point = None
        u, d = u[: self.POWER_SAMPLES], d[: self.POWER_SAMPLES]
        devices = [u.device] if u.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            rho = float(
                lipschitz_estimate(lambda z: self.operator(z, d), u, iters=self.POWER_ITERATIONS).max()
            )
        reg = self.regulariser
        with torch.no_grad():
            if rescale_to_gamma_(reg.rescalable_parameters(), rho, 1.0, reg.num_blocks):  # type: ignore[union-attr]
                self.rescales += 1
        return rho

    @torch.no_grad()
    def reference_rule(self, noise: float = 0.05) -> float | None:
        """The authors' Lipschitz rule (lipschitz="reference").

        At the fixed point u and sinogram d of the last training forward, draws w = u + δ with
        δ = noise · N(0, I) and measures ρ = mean_p |T(w; d) − T(u; d)| / mean_p |δ| (mean over batch
        and pixels); if ρ > γ, multiplies every block's convolution weights and biases by
        (γ/ρ)^(1/blocks). A heuristic on one random direction, not a bound. Returns ρ, or None
        when nothing was measured. The noise comes from a forked random state.
        """
        if self.lipschitz != "reference" or self._rescale_point is None:
            return None
        u, d = self._rescale_point
        self._rescale_point = None
        devices = [u.device] if u.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            delta = noise * torch.randn_like(u)
        diff = self.operator(u + delta, d) - self.operator(u, d)
        ratio = float(diff.abs().mean() / delta.abs().mean().clamp_min(1e-12))
        reg = self.regulariser
        if rescale_to_gamma_(reg.rescalable_parameters(), ratio, self.gamma, reg.num_blocks):  # type: ignore[union-attr]
            self.rescales += 1
        return ratio


class UnrolledFFPN(_CTReconstructor):
    """The unrolled baseline: u_{k+1} = T(u_k; d) = P_d(R_Θ(u_k)) for k < steps, from the same u₀, with
    the same R_Θ (same parameter count) and back-propagation through all steps. ``self.solution`` is
    None (no fixed point is solved); ``self.last_step_change`` holds max_p |u_K − u_{K−1}| per sample.
    Arguments as :class:`FFPN`, plus ``steps`` (K)."""

    def __init__(
        self,
        geometry: ParallelBeamGeometry,
        *,
        steps: int = 20,
        regulariser: str | nn.Module = "difference",
        channels: int = 42,
        blocks: int | None = None,
        gamma: float = 0.99,
        negative_slope: float = 0.05,
        init: str = "fbp",
        fbp_filter: str = "hann",
        relaxation: float = 1.99,
        weighting: Literal["landweber", "sart"] = "landweber",
    ) -> None:
        super().__init__(
            geometry,
            regulariser,
            channels,
            blocks,
            gamma,
            negative_slope,
            init,
            fbp_filter,
            relaxation,
            weighting,
        )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"UnrolledFFPN: steps must be a positive integer, got {steps!r}")
        self.steps = steps
        self.solution: Solution | None = None
        self.last_step_change: Tensor | None = None

    def forward(self, d: Tensor, u0: Tensor | None = None) -> Tensor:  # (B, 1, K, D) -> (B, 1, N, N)
        check_sinograms(d, self.geometry, "UnrolledFFPN")
        u = self.initial(d) if u0 is None else u0
        prev = u
        for _ in range(self.steps):
            prev, u = u, self.operator(u, d)
        self.last_step_change = max_channel_norm((u - prev).detach())
        return u
