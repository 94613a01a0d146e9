"""Models that map a context d to a predicted equilibrium x̂(d) ∈ Δⁿ × Δⁿ, shaped (B, 2, n).

- :class:`NashFPN`: the N-FPN of McKenzie et al. (2021), x̂ = z* with
  z* = T(z*; d) = P_{Δ×Δ}(z* − α F_Θ(z*; d)), F_Θ(z; d) = z + W(z + Q(d)) + b and
  Q(d) = σ(A d + a) (σ = LeakyReLU(0.1)): the authors' matrix-games network, written with a step
  α (theirs: α = 1, which makes T(z) = P(−W(z + Q(d)) − b)). T is not a contraction by
  construction; the forward solve may fail to converge (reported in ``solution``).
- :class:`ContractiveNashFPN`: the same projected-gradient form with a strongly monotone, Lipschitz
  F_Θ by parametrisation,

      F_Θ(z; d) = μ z + K(d) z + c(d),   K(d) = [[0, G(d)], [−G(d)ᵀ, 0]],   G(d) = Σ_k w_k(d) G_k,

  w(d) = tanh(V d + v) ∈ [−1, 1]^m and the G_k rescaled jointly so that Σ_k ‖G_k‖₂ ≤ ρ. K(d) is
  antisymmetric like the bilinear part of the true game gradient, so ⟨F(z) − F(y), z − y⟩ = μ‖z − y‖²
  (μ-strongly monotone) and ‖F(z) − F(y)‖ ≤ L‖z − y‖ with L² = μ² + ‖G(d)‖₂² ≤ μ² + ρ². Since
  P is nonexpansive, ‖T(z) − T(y)‖² ≤ (1 − 2αμ + α²L²)‖z − y‖², a contraction for
  0 < α < 2μ/L²; the default α = μ/(μ² + ρ²) gives γ = ρ/√(μ² + ρ²). c(d) is a small MLP.
- :class:`LogitNashFPN`: the logit best response of a learned entropy-regularised game with the same
  G(d), c(d), T(z; d) = [softmax(−(G(d) z₂ + c₁(d))); softmax(G(d)ᵀ z₁ − c₂(d))] (the entropic
  mirror step in place of the Euclidean projection). A (ρ/2)-contraction for ‖G(d)‖₂ ≤ ρ < 2, and
  its outputs have no zero entries (no dead gradients); the fixed point is a QRE of the learned game.
- :class:`PayoffNashFPN`: the model-based N-FPN. F_Θ is the game gradient of a learned zero-sum
  game, F_Θ(z; d) = [B̂(d) z₂ + log z₁ + 1; −B̂(d)ᵀ z₁ + log z₂ + 1] with B̂(d) from the same payoff
  MLP as Payoff-Net, and T(z; d) = P_{Δ×Δ}(z − α F_Θ(z; d)). Its fixed point is the QRE of B̂(d),
  unique for every parameter value; the forward finds it with the certified Newton solver
  (warm-started from the last solution of the same context) and the core solver checks it; the
  gradient is JFB through one step of T (no linear solve).
- :class:`PayoffNet`: the baseline of Ling, Fang, Kolter (2018): d → MLP → the n(n−1)/2 free entries
  of an antisymmetric payoff matrix B̂(d) → the QRE layer (:func:`fpnets.tasks.games.qre.qre_implicit`:
  Newton forward in float64, implicit-function backward).

Every model exposes its last solve as ``model.solution`` (a :class:`fpnets.Solution`: for the
N-FPNs the fixed-point iterations; for Payoff-Net the Newton steps of the QRE solver; for the
model-based N-FPN the Newton steps plus the evaluations of T that check the fixed point).
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._fixed_point import fixed_point
from ..._solution import Solution, Status
from ..._warm import WarmStarts, row_keys
from ...backward import Backward
from ...operators.simplex import project_simplex
from ...solvers import Picard, Solver
from .qre import _matvec, _rmatvec, antisymmetric, qre_implicit, solve_qre

__all__ = [
    "MODELS",
    "ContractiveNashFPN",
    "LogitNashFPN",
    "NashFPN",
    "PayoffNashFPN",
    "PayoffNet",
    "build_game_model",
    "contraction_factor",
    "payoff_net_hidden_for",
]

MODELS = ("nfpn", "contractive", "logit", "payoff", "payoffnet")
"""Names accepted by :func:`build_game_model`."""


def _check_context(d: Tensor, k: int, what: str) -> None:
    if not isinstance(d, Tensor) or d.dim() != 2 or d.shape[-1] != k:
        raise ValueError(f"{what}: the context must be (B, {k}), got {tuple(getattr(d, 'shape', ()))}")
    bad = ~torch.isfinite(d).all(dim=-1)
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"{what}: the contexts hold NaN or Inf (rows {rows[:10]}{' …' if len(rows) > 10 else ''}); "
            "clean or drop those samples"
        )


def _uniform(d: Tensor, n: int) -> Tensor:
    """z₀: both players uniform, (B, 2, n)."""
    return d.new_full((d.shape[0], 2, n), 1.0 / n)


def contraction_factor(alpha: float, mu: float, lipschitz: float) -> float:
    """γ = √(1 − 2αμ + α²L²): the Lipschitz bound of z ↦ P(z − αF(z)) for μ-strongly monotone, L-Lipschitz F.

    γ < 1 exactly when 0 < α < 2μ/L².
    """
    return math.sqrt(max(0.0, 1.0 - 2.0 * alpha * mu + alpha**2 * lipschitz**2))


class _GameFPN(nn.Module):
    """Shared solve: z* = T(z*; inj(d)) from uniform strategies, with ``fpnets.fixed_point``."""

    def __init__(
        self,
        n_actions: int,
        context_dim: int,
        solver: Solver | None,
        backward: Backward | None,
        warn: bool,
    ) -> None:
        super().__init__()
        if isinstance(n_actions, bool) or not isinstance(n_actions, int) or n_actions < 2:
            raise ValueError(f"{type(self).__name__}: n_actions must be an integer >= 2, got {n_actions!r}")
        if isinstance(context_dim, bool) or not isinstance(context_dim, int) or context_dim < 1:
            raise ValueError(
                f"{type(self).__name__}: context_dim must be a positive integer, got {context_dim!r}"
            )
        self.n_actions = n_actions
        self.context_dim = context_dim
        self.solver = Picard(tol=1e-5, max_iter=100) if solver is None else solver
        self.backward_mode = backward
        self.warn = warn
        self.solution: Solution | None = None

    def injection(self, d: Tensor) -> tuple[Tensor, ...]:
        """The per-sample data the operator re-reads every iteration (computed once, with a graph)."""
        raise NotImplementedError

    def operator(self, z: Tensor, *inj: Tensor) -> Tensor:
        """T(z; d): (B, 2, n) → (B, 2, n)."""
        raise NotImplementedError

    def forward(self, d: Tensor) -> Tensor:
        """x̂(d) = z*: (B, k) → (B, 2, n)."""
        _check_context(d, self.context_dim, type(self).__name__)
        inj = self.injection(d)
        sol = fixed_point(
            self.operator,
            _uniform(d, self.n_actions),
            *inj,
            solver=self.solver,
            backward=self.backward_mode,
            warn=self.warn,
        )
        self.solution = sol.detached()
        return sol.value


class NashFPN(_GameFPN):
    """The authors' N-FPN: T(z; d) = P_{Δ×Δ}(z − α(z + W(z + Q(d)) + b)), Q(d) = σ(A d + a).

    Parameters: (k + 1)·2n + (2n + 1)·2n.

    Args:
        n_actions: n.
        context_dim: k.
        alpha: α, the step (the authors: 1).
        negative_slope: σ's slope for negative inputs.
        solver: forward solver (default ``Picard(tol=1e-5, max_iter=100)``, the authors' ε and depth).
        backward: gradient mode (default JFB).
        warn: warn when a forward solve misses the tolerance.
    """

    def __init__(
        self,
        n_actions: int,
        context_dim: int = 3,
        *,
        alpha: float = 1.0,
        negative_slope: float = 0.1,
        solver: Solver | None = None,
        backward: Backward | None = None,
        warn: bool = True,
    ) -> None:
        super().__init__(n_actions, context_dim, solver, backward, warn)
        if not alpha > 0:
            raise ValueError(f"NashFPN: alpha must be > 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.negative_slope = negative_slope
        self.encoder = nn.Linear(context_dim, 2 * n_actions)  # Q
        self.mix = nn.Linear(2 * n_actions, 2 * n_actions)  # W, b

    def injection(self, d: Tensor) -> tuple[Tensor, ...]:
        return (F.leaky_relu(self.encoder(d), self.negative_slope),)  # Q(d): (B, 2n)

    def game_map(self, z: Tensor, q: Tensor) -> Tensor:
        """F_Θ(z; d) = z + W(z + Q(d)) + b: (B, 2, n), (B, 2n) → (B, 2, n)."""
        flat = z.flatten(1)  # (B, 2n)
        return (flat + self.mix(flat + q)).view_as(z)

    def operator(self, z: Tensor, *inj: Tensor) -> Tensor:
        return project_simplex(z - self.alpha * self.game_map(z, *inj))


class _BilinearGameFPN(_GameFPN):
    """What the contractive and the logit N-FPN share: the antisymmetric coupling of a learned
    context game and its linear term,

        G(d) = Σ_k w_k(d) G_k,  w(d) = tanh(V d + v) ∈ [−1, 1]^m,  Σ_k ‖G_k‖₂ ≤ ρ,
        c(d) = U₂ σ(U₁ d + u₁) + u₂ ∈ R^{2×n},

    (parameters ``weights`` = V, v; ``coupling`` = the raw G_k, rescaled by ρ / max(ρ, Σ_k ‖G_k‖₂)
    once per forward; ``offset`` = the MLP c; its last layer starts at zero)."""

    def __init__(
        self,
        n_actions: int,
        context_dim: int,
        rho: float,
        components: int | None,
        hidden: int | None,
        negative_slope: float,
        solver: Solver | None,
        backward: Backward | None,
        warn: bool,
    ) -> None:
        super().__init__(n_actions, context_dim, solver, backward, warn)
        m = context_dim if components is None else components
        h = n_actions if hidden is None else hidden
        if m < 1 or h < 1:
            raise ValueError(f"{type(self).__name__}: components and hidden must be >= 1, got {m}, {h}")
        self.rho = float(rho)
        self.negative_slope = negative_slope
        self.weights = nn.Linear(context_dim, m)  # V, v
        self.coupling = nn.Parameter(torch.randn(m, n_actions, n_actions) / math.sqrt(n_actions))  # raw G_k
        self.offset = nn.Sequential(
            nn.Linear(context_dim, h), nn.LeakyReLU(negative_slope), nn.Linear(h, 2 * n_actions)
        )  # c(d)
        nn.init.zeros_(self.offset[-1].weight)
        nn.init.zeros_(self.offset[-1].bias)

    def coupling_matrices(self) -> Tensor:
        """The rescaled G_k: (m, n, n) with Σ_k ‖G_k‖₂ ≤ ρ."""
        norms = torch.linalg.matrix_norm(self.coupling, ord=2)  # (m,)
        scale = self.rho / torch.clamp(norms.sum(), min=self.rho)
        return self.coupling * scale

    def injection(self, d: Tensor) -> tuple[Tensor, ...]:
        w = torch.tanh(self.weights(d))  # (B, m) in [−1, 1]
        G = torch.einsum("bm,mij->bij", w, self.coupling_matrices())  # (B, n, n), ‖G‖₂ ≤ ρ
        return G, self.offset(d).view(-1, 2, self.n_actions)  # (B, n, n), (B, 2, n)

    @staticmethod
    def coupled(z: Tensor, G: Tensor) -> Tensor:
        """K(d) z = (G z₂, −Gᵀ z₁) with K = [[0, G], [−Gᵀ, 0]]: (B, 2, n), (B, n, n) → (B, 2, n)."""
        z1, z2 = z[:, 0], z[:, 1]
        return torch.stack([(G @ z2.unsqueeze(-1)).squeeze(-1), -(z1.unsqueeze(-2) @ G).squeeze(-2)], dim=1)


class ContractiveNashFPN(_BilinearGameFPN):
    """N-FPN with F_Θ(z; d) = μz + K(d)z + c(d), strongly monotone and Lipschitz by construction.

    K(d) = [[0, G(d)], [−G(d)ᵀ, 0]], G(d) = Σ_k w_k(d) G_k with w(d) = tanh(V d + v) and
    Σ_k ‖G_k‖₂ ≤ ρ (the raw matrices are rescaled by ρ / max(ρ, Σ_k ‖G_k‖₂) once per forward);
    c(d) = U₂ σ(U₁ d + u₁) + u₂. Then T(z; d) = P_{Δ×Δ}(z − αF_Θ(z; d)) is a γ-contraction with
    γ = √(1 − 2αμ + α²(μ² + ρ²)) < 1 for every parameter value and context
    (:attr:`contraction_bound`).

    Args:
        n_actions: n.
        context_dim: k.
        mu: μ > 0, the strong-monotonicity modulus.
        rho: ρ > 0, the bound on ‖G(d)‖₂. Only ρ/μ matters for what the model can represent (the
            fixed point is unchanged when F is scaled by a positive constant).
        alpha: the step; default μ/(μ² + ρ²) (the γ-minimising step); must lie in (0, 2μ/(μ² + ρ²)).
        components: m, the number of matrices G_k (default k).
        hidden: width of the MLP c(d) (default n).
        negative_slope: σ's slope.
        solver, backward, warn: as in :class:`NashFPN`.
    """

    def __init__(
        self,
        n_actions: int,
        context_dim: int = 3,
        *,
        mu: float = 1.0,
        rho: float = 1.0,
        alpha: float | None = None,
        components: int | None = None,
        hidden: int | None = None,
        negative_slope: float = 0.1,
        solver: Solver | None = None,
        backward: Backward | None = None,
        warn: bool = True,
    ) -> None:
        if not (mu > 0 and rho > 0):
            raise ValueError(f"ContractiveNashFPN: mu and rho must be > 0, got mu={mu!r}, rho={rho!r}")
        lip2 = mu**2 + rho**2
        alpha = mu / lip2 if alpha is None else alpha
        if not 0 < alpha < 2 * mu / lip2:
            raise ValueError(
                f"ContractiveNashFPN: alpha must lie in (0, 2μ/(μ²+ρ²)) = (0, {2 * mu / lip2:.4g}) for a "
                f"contraction, got {alpha!r}"
            )
        # c ≡ 0 at the start (the base class): the first fixed points are interior (a vertex output
        # has a zero projection Jacobian, hence a zero gradient, for JFB and the exact gradient alike)
        super().__init__(
            n_actions, context_dim, rho, components, hidden, negative_slope, solver, backward, warn
        )
        self.mu, self.alpha = float(mu), float(alpha)

    @property
    def contraction_bound(self) -> float:
        """γ = √(1 − 2αμ + α²(μ² + ρ²)) < 1, a Lipschitz bound of T(·; d) for every d."""
        return contraction_factor(self.alpha, self.mu, math.sqrt(self.mu**2 + self.rho**2))

    def game_map(self, z: Tensor, G: Tensor, c: Tensor) -> Tensor:
        """F_Θ(z; d) = μz + K(d)z + c(d) with K(d)z = (G z₂, −Gᵀ z₁): (B, 2, n) → (B, 2, n)."""
        return self.mu * z + self.coupled(z, G) + c

    def operator(self, z: Tensor, *inj: Tensor) -> Tensor:
        return project_simplex(z - self.alpha * self.game_map(z, *inj))


class LogitNashFPN(_BilinearGameFPN):
    """N-FPN whose operator is the logit (softmax) best response of a learned entropy-regularised
    zero-sum game; a contraction by construction, with every output strictly inside Δ × Δ.

        T(z; d) = [softmax(−(G(d) z₂ + c₁(d))); softmax(G(d)ᵀ z₁ − c₂(d))],

    with G(d), c(d) as in :class:`ContractiveNashFPN` (‖G(d)‖₂ ≤ ρ). This is the entropic mirror
    step z ↦ softmax(log z − F_Θ(z; d)) (step 1; the KL projection onto each simplex in place of the
    Euclidean one) for the game gradient F_Θ(z; d) = K(d) z + c(d) + log z + 1, so the fixed point
    z* is the quantal response equilibrium of the learned game, the unique zero of F_Θ on
    Δ × Δ up to a constant per player. The softmax Jacobian diag(p) − ppᵀ has spectral norm ≤ 1/2
    and ‖K(d)‖₂ = ‖G(d)‖₂ ≤ ρ, so T(·; d) is a γ-contraction with γ = ρ/2 < 1 for ρ < 2
    (:attr:`contraction_bound`), for every parameter value and context.

    Why: the projected step of :class:`ContractiveNashFPN` puts outputs exactly on the boundary of
    the simplex, where its Jacobian, hence every gradient through that entry, is zero; a stalled
    run can keep such dead entries for good (docs/games.md). A softmax has no zero entries and no
    dead gradients, and its fixed point has the form of the targets (a QRE).

    Args:
        n_actions: n.
        context_dim: k.
        rho: ρ ∈ (0, 2), the bound on ‖G(d)‖₂ (1: γ = 1/2).
        components, hidden, negative_slope, solver, backward, warn: as in :class:`ContractiveNashFPN`.
    """

    def __init__(
        self,
        n_actions: int,
        context_dim: int = 3,
        *,
        rho: float = 1.0,
        components: int | None = None,
        hidden: int | None = None,
        negative_slope: float = 0.1,
        solver: Solver | None = None,
        backward: Backward | None = None,
        warn: bool = True,
    ) -> None:
        if not 0 < rho < 2:
            raise ValueError(
                f"LogitNashFPN: rho must lie in (0, 2) for a contraction (γ = rho/2), got {rho!r}"
            )
        super().__init__(
            n_actions, context_dim, rho, components, hidden, negative_slope, solver, backward, warn
        )

    @property
    def contraction_bound(self) -> float:
        """γ = ρ/2 < 1, a Lipschitz bound of T(·; d) for every d."""
        return self.rho / 2

    def logits(self, z: Tensor, G: Tensor, c: Tensor) -> Tensor:
        """−(K(d) z + c(d)) = [−(G z₂ + c₁); Gᵀ z₁ − c₂]: (B, 2, n) → (B, 2, n)."""
        return -(self.coupled(z, G) + c)

    def operator(self, z: Tensor, *inj: Tensor) -> Tensor:
        return torch.softmax(self.logits(z, *inj), dim=-1)


def payoff_net_hidden_for(parameters: int, n_actions: int, context_dim: int = 3) -> int:
    """The hidden width h ≥ 1 whose :class:`PayoffNet` has the parameter count closest to ``parameters``.

    PayoffNet has (k + 1)h + (h + 1)·n(n−1)/2 parameters.
    """
    m = n_actions * (n_actions - 1) // 2
    h = round((parameters - m) / (context_dim + 1 + m))
    return max(1, h)


def _payoff_mlp(n: int, k: int, hidden: int, negative_slope: float) -> nn.Sequential:
    """d ↦ U₂ σ(U₁ d + u₁) + u₂, the n(n−1)/2 free entries of B̂(d): (B, k) → (B, n(n−1)/2)."""
    return nn.Sequential(
        nn.Linear(k, hidden), nn.LeakyReLU(negative_slope), nn.Linear(hidden, n * (n - 1) // 2)
    )


class _PayoffModel(nn.Module):
    """What Payoff-Net and the model-based N-FPN share: the payoff network d ↦ B̂(d) (``net``,
    (k + 1)h + (h + 1)·n(n−1)/2 parameters) and the checks of n and h."""

    def __init__(self, n_actions: int, context_dim: int, hidden: int | None, negative_slope: float) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(n_actions, bool) or not isinstance(n_actions, int) or n_actions < 2:
            raise ValueError(f"{name}: n_actions must be an integer >= 2, got {n_actions!r}")
        h = context_dim if hidden is None else hidden
        if h < 1:
            raise ValueError(f"{name}: hidden must be >= 1, got {h}")
        self.n_actions = n_actions  # n
        self.context_dim = context_dim  # k
        self.net = _payoff_mlp(n_actions, context_dim, h, negative_slope)

    def payoff(self, d: Tensor) -> Tensor:
        """B̂(d): (B, k) → (B, n, n), antisymmetric."""
        _check_context(d, self.context_dim, type(self).__name__)
        return antisymmetric(self.net(d), self.n_actions)


class PayoffNet(_PayoffModel):
    """Ling, Fang, Kolter (2018): x̂(d) = QRE(B̂(d)), B̂(d) = antisymmetric(U₂ σ(U₁ d + u₁) + u₂).

    Parameters: (k + 1)h + (h + 1)·n(n−1)/2 (the authors' reimplementation in McKenzie et al.:
    h = k = 3).

    Args:
        n_actions: n.
        context_dim: k.
        hidden: h (default k).
        negative_slope: σ's slope.
        tol, max_iter: the QRE solver's tolerance (float64 certificate) and Newton step cap; a
            game that misses it raises :class:`~fpnets.tasks.games.qre.QREConvergenceError`.
    """

    def __init__(
        self,
        n_actions: int,
        context_dim: int = 3,
        *,
        hidden: int | None = None,
        negative_slope: float = 0.1,
        tol: float = 1e-10,
        max_iter: int = 100,
    ) -> None:
        super().__init__(n_actions, context_dim, hidden, negative_slope)
        self.tol, self.max_iter = tol, max_iter
        self.solution: Solution | None = None

    def forward(self, d: Tensor) -> Tensor:
        """x̂(d) = QRE(B̂(d)): (B, k) → (B, 2, n)."""
        B = self.payoff(d)
        sol = solve_qre(B, tol=self.tol, max_iter=self.max_iter, throw=True)
        x = qre_implicit(B, sol.x) if torch.is_grad_enabled() and B.requires_grad else sol.x.to(B.dtype)
        self.solution = Solution(
            value=x.detach(),
            iterations=sol.iterations,
            residual=sol.residual,
            converged=sol.converged,
            trace=None,
            status=Status.CONVERGED if bool(sol.converged.all()) else Status.MAX_ITER,
            tol=self.tol,
            max_iter=self.max_iter,
            evaluations=int(sol.iterations.max()) + 1 if sol.iterations.numel() else 0,
        )
        return x


class PayoffNashFPN(_PayoffModel):
    """The model-based N-FPN: T(z; d) = P_{Δ×Δ}(z − α F_Θ(z; d)) with F_Θ the game gradient of B̂(d),

        F_Θ(z; d) = [B̂(d) z₂ + log z₁ + 1; −B̂(d)ᵀ z₁ + log z₂ + 1],
        B̂(d) = antisymmetric(U₂ σ(U₁ d + u₁) + u₂)   (Payoff-Net's payoff network).

    F_Θ is the gradient field of the strongly convex–strongly concave f(z₁, z₂) = z₁ᵀB̂z₂ + h(z₁) −
    h(z₂), so for every parameter value and context T has exactly one fixed point: the QRE of B̂(d)
    (docs/games.md). The forward computes it with :func:`~fpnets.tasks.games.qre.solve_qre` (damped
    Newton on a strictly concave function: it converges for every B̂), in float64, from the last
    solution of the same context when one is stored (``warm_starts``), else from uniform
    strategies; the core solver (``solver``, default ``Picard(tol=1e-5)``) then checks
    ‖T(z) − z‖ from that point (one evaluation when the solve met its tolerance) and the gradient
    is the core's backward mode (default JFB: one differentiable application of T at the detached
    fixed point, no linear solve; Payoff-Net solves the (2n + 2)-dimensional KKT system instead).
    The output is float64 inside and returned in the parameters' dtype.

    JFB here is a descent direction: on the tangent space of Δ × Δ, the exact derivative is
    −(∇F)⁻¹ ∂F/∂θ with ∇F = diag(1/z) + [[0, B̂], [−B̂ᵀ, 0]], whose inverse has a positive definite
    symmetric part; JFB replaces (∇F)⁻¹ by α I (tests/test_games_payoff_fpn.py checks the sign in
    float64).

    Parameters: (k + 1)h + (h + 1)·n(n−1)/2, as Payoff-Net's.

    Args:
        n_actions: n.
        context_dim: k.
        hidden: h (default k).
        negative_slope: σ's slope.
        alpha: α, the step of T (1).
        qre_tol, qre_max_iter: the Newton solver's tolerance and step cap (1e-10, 100); a game that
            misses them is left to the core solver's check (a miss is reported in ``solution``).
        warm_starts: how many contexts' last solutions are kept (least recently used dropped; 0 =
            always start from uniform strategies).
        solver, backward: the core solver that checks the fixed point, and the gradient mode.
        warn: warn when the check misses the tolerance.
    """

    def __init__(
        self,
        n_actions: int,
        context_dim: int = 3,
        *,
        hidden: int | None = None,
        negative_slope: float = 0.1,
        alpha: float = 1.0,
        qre_tol: float = 1e-10,
        qre_max_iter: int = 100,
        warm_starts: int = 100_000,
        solver: Solver | None = None,
        backward: Backward | None = None,
        warn: bool = True,
    ) -> None:
        super().__init__(n_actions, context_dim, hidden, negative_slope)
        if not alpha > 0:
            raise ValueError(f"PayoffNashFPN: alpha must be > 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.qre_tol, self.qre_max_iter = float(qre_tol), int(qre_max_iter)
        self.solver = Picard(tol=1e-5, max_iter=100) if solver is None else solver
        self.backward_mode = backward
        self.warn = warn
        self.warm: WarmStarts[Tensor] = WarmStarts(warm_starts)
        self.solution: Solution | None = None
        self.newton_iterations: Tensor | None = None  # (B,) Newton steps of the last forward

    def game_map(self, z: Tensor, B: Tensor) -> Tensor:
        """F_Θ(z; d) = [B̂ z₂ + log z₁ + 1; −B̂ᵀ z₁ + log z₂ + 1]: (B, 2, n), (B, n, n) → (B, 2, n).

        log is taken of max(z, tiny), so an iterate on the boundary stays finite."""
        logz = torch.log(z.clamp_min(torch.finfo(z.dtype).tiny))
        f1 = _matvec(B, z[:, 1]) + logz[:, 0] + 1.0
        f2 = -_rmatvec(B, z[:, 0]) + logz[:, 1] + 1.0
        return torch.stack([f1, f2], dim=1)

    def operator(self, z: Tensor, B: Tensor) -> Tensor:
        """T(z; d) = P_{Δ×Δ}(z − α F_Θ(z; d))."""
        return project_simplex(z - self.alpha * self.game_map(z, B))

    def forward(self, d: Tensor) -> Tensor:
        """x̂(d) = z* = QRE(B̂(d)): (B, k) → (B, 2, n)."""
        B = self.payoff(d)  # (B, n, n); checks the shape and that d is finite
        keys = row_keys(d)
        starts = [self.warm.get(k) for k in keys]
        init = None
        if any(s is not None for s in starts):
            uniform = torch.full((2, self.n_actions), 1.0 / self.n_actions, dtype=torch.float64)
            init = torch.stack([uniform if s is None else s for s in starts]).to(B.device)
        qre = solve_qre(
            B.detach().double(), tol=self.qre_tol, max_iter=self.qre_max_iter, init=init, warn=False
        )
        for key, x in zip(keys, qre.x.detach().cpu(), strict=True):
            self.warm.put(key, x)
        sol = fixed_point(
            self.operator,
            qre.x,
            B.double(),
            solver=self.solver,
            backward=self.backward_mode,
            warn=self.warn,
        )
        self.newton_iterations = qre.iterations
        self.solution = dataclasses.replace(sol.detached(), iterations=qre.iterations + sol.iterations)
        return sol.value.to(B.dtype)


def build_game_model(name: str, n_actions: int, context_dim: int = 3, **options: object) -> nn.Module:
    """One of :data:`MODELS` with keyword options passed to its constructor.

    "nfpn" → :class:`NashFPN`, "contractive" → :class:`ContractiveNashFPN`, "logit" →
    :class:`LogitNashFPN`, "payoff" →
    :class:`PayoffNashFPN`, "payoffnet" → :class:`PayoffNet`. Unknown names or options raise ``ValueError`` listing the valid ones.
    """
    classes: dict[str, type[nn.Module]] = {
        "nfpn": NashFPN,
        "contractive": ContractiveNashFPN,
        "logit": LogitNashFPN,
        "payoff": PayoffNashFPN,
        "payoffnet": PayoffNet,
    }
    if name not in classes:
        raise ValueError(f"build_game_model: unknown model {name!r}; valid: {', '.join(MODELS)}")
    cls = classes[name]
    valid = [
        p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "n_actions", "context_dim")
    ]
    bad = sorted(set(options) - set(valid))
    if bad:
        raise ValueError(f"build_game_model: unknown option(s) {bad} for {name!r}; valid: {', '.join(valid)}")
    return cls(n_actions, context_dim, **options)  # type: ignore[arg-type]
