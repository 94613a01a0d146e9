"""Models that map a context d to equilibrium link flows X̂(d) (B, E), in vehicles.

- :class:`TrafficNFPN`: the N-FPN of McKenzie et al. Latent z ∈ R^{K×E} (the flow of each
  commodity k on each link; commodities are origins by default, or OD pairs), and

      x = P_C1(z),  y = P_C2(2x − z − α F(x; d)),  T(z; d) = z − x + y        (Davis–Yin splitting)

  with C1 = {z ≥ 0, z_k = 0 on links that pass through another zone below the first thru node},
  C2 = {N z_k = b_k for every k} (flow conservation, projection from a truncated SVD of the
  node–link incidence N, :class:`fpnets.operators.affine.AffineProjection`) and the game gradient
  F(x; d)_k = F_Θ(Σ_k x_k, d) for every k (one learned link-cost vector). At the fixed point z*,
  x* = P_C1(z*) solves the variational inequality ⟨F(x*), x − x*⟩ ≥ 0 for all x ∈ C1 ∩ C2, and
  the output is X̂ = s · Σ_k P_C1(z*)_k (s: the flow scale; the latent works in units of s).
  Two forms of F_Θ:

  * ``variant="nfpn"``: the paper's network, F_Θ(X, d) = σ(F_x(X) ⊙ F_d(d)) with tanh MLPs
    F_x: E → h → E → E and F_d: m → h → h → E → E (σ = LeakyReLU(0.1)); 45,956 parameters on Sioux
    Falls with h = 100. No monotonicity: T is not guaranteed to be averaged.
  * ``variant="averaged"``: F_Θ(X, d) = μ X + Aᵀ σ(A X + g(d)) + c(d), σ = LeakyReLU (slope in
    [0, 1]), A a :class:`fpnets.layers.SpectralLinear` with ‖A‖₂ ≤ a. This is the gradient of the
    convex function μ/2 ‖X‖² + Σ ψ(A X + g(d)) + c(d)·X (ψ′ = σ) whose gradient is L-Lipschitz with
    L = μ + a², so F_Θ is 1/L-cocoercive (Baillon–Haddad), and the broadcast
    F(x)_k = F_Θ(Σ_k x_k) is 1/(K L)-cocoercive on R^{K×E}. Davis–Yin splitting with a cocoercive
    F of constant β and 0 < α < 2β is averaged (Davis & Yin 2017, Prop. 2.1), so T is averaged for
    every parameter value when α < 2 / (K L); the constructor checks this condition.
  * ``variant="averaged-wide"``: the same F_Θ (same bound, same proof), with the parameters moved
    from A into the context networks: a shared tanh trunk d → 170 → 170 (the explicit MLP's width)
    feeds both heads [g(d), c(d)], and A has only 8 rows (45,912 parameters on Sioux Falls). With μ
    dominating L the equilibrium is close to the Euclidean projection of −c(d)/μ onto the feasible
    link flows {Σ_k x_k : x ∈ C1 ∩ C2} (exactly that when A = 0: the VI of μX + c is the
    optimality condition of min μ/2 ‖X‖² + c·X), and a projection onto a convex set that holds X*
    is nonexpansive, so ‖P(−c/μ) − X*‖ ≤ ‖−c/μ − X*‖: the wide head gets the explicit MLP's
    regression capacity and the projection can only reduce its error.
  * ``variant="averaged-diag"``: F_Θ(X, d) = w(d) ⊙ X + Aᵀ σ(A X + g(d)) + c(d) with per-link,
    context-dependent slopes w(d) = μ (w₀ + (1 − w₀) sigmoid(v(d))) ∈ [w₀ μ, μ] (w₀ = 0.1), a third
    head v(d) of the shared trunk d → 143 → 143, and A with 8 rows (45,813 parameters on Sioux
    Falls). The true link costs are separable and increasing in each link's flow, with slopes that
    the capacities (the context) set; w(d) ⊙ X is their linearisation. F_Θ is the gradient of
    Σ_e w_e(d) X_e² / 2 + Σ ψ(A X + g(d)) + c(d)·X, convex with an L-Lipschitz gradient for the
    same L = μ + a² (max_e w_e ≤ μ), so the same bound α < 2 / (K L) makes T averaged.

  * ``variant="bpr"``: F_Θ(X, d) = t̂(sX; d)/τ, the network's BPR cost form with learned,
    context-dependent capacities and a learned B: t̂_e(v; d) = t₀_e (1 + B̂ (v / ĉ_e(d))^{p_e}),
    ĉ(d) = c₀ ⊙ (1 + r tanh(h_Θ(d))) (h_Θ a tanh MLP m → h → h → E, r = ``cap_range``), p the link
    file's powers, τ the mean free-flow time (:class:`LearnedCapacityCosts`). F_Θ is the gradient
    of the convex Beckmann potential Σ_e ∫₀^{X_e} t̂_e, hence monotone, and the N-FPN's fixed point
    is the Wardrop equilibrium of the learned costs. Its operator is Davis–Yin in the metric of
    D⁻¹, D a per-link step from the inverse slopes of the learned costs
    (:meth:`TrafficNFPN.metric_operator`). The forward solve does not iterate it from scratch: it
    computes the equilibrium with the certified assignment solver
    (:func:`~.assignment.solve_equilibrium`, relative gap ≤ ``gap``), builds the operator's exact
    fixed point ζ* from it (:func:`~.assignment.splitting_latent`), and hands ζ* to the core
    solver as z₀, which checks ‖T(ζ*) − ζ*‖ against its tolerance (and iterates T if it is
    missed); JFB then differentiates one application of T at ζ*. Convergence is certified per
    sample by the Wardrop gap, not by a Lipschitz bound.

- :class:`ExplicitTrafficNet`: an MLP d → X̂ with (about) a given parameter count.
- :class:`MeanCapacityBaseline`: no learning; the equilibrium under the mean capacities.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._fixed_point import fixed_point
from ..._solution import Solution
from ..._warm import WarmStarts, row_keys
from ...backward import JFB, Backward
from ...layers import SpectralLinear
from ...operators.affine import AffineProjection
from ...solvers import Picard, Solver
from .network import LinkCosts, Network

__all__ = [
    "ExplicitTrafficNet",
    "LearnedCapacityCosts",
    "MeanCapacityBaseline",
    "TrafficNFPN",
    "explicit_hidden_size",
    "traffic_loss",
]

VARIANTS = ("nfpn", "averaged", "averaged-wide", "averaged-diag", "bpr")
AVERAGED = ("averaged", "averaged-wide", "averaged-diag")
"""The variants with a cocoercive F_Θ (T averaged by construction)."""


def traffic_loss(pred: Tensor, target: Tensor, scale: float) -> Tensor:
    """Mean squared error of link flows in units of ``scale``: mean(((X̂ − X) / s)²)."""
    if pred.shape != target.shape:
        raise ValueError(
            f"traffic_loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ"
        )
    return (((pred - target) / scale) ** 2).mean()


class PaperGameGradient(nn.Module):
    """F_Θ(X, d) = LeakyReLU(F_x(X) ⊙ F_d(d)), the paper's parameterisation (X normalised link flows)."""

    def __init__(self, num_links: int, context_dim: int, hidden: int = 100) -> None:
        super().__init__()
        self.fd = nn.ModuleList(
            [nn.Linear(context_dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, num_links)]
        )
        self.fd_out = nn.Linear(num_links, num_links)
        self.fx = nn.ModuleList([nn.Linear(num_links, hidden), nn.Linear(hidden, num_links)])
        self.fx_out = nn.Linear(num_links, num_links)

    def context_features(self, d: Tensor) -> Tensor:  # (B, m) -> (B, E)
        h = d
        for layer in self.fd:
            h = torch.tanh(layer(h))
        return F.leaky_relu(self.fd_out(h), 0.1)

    def forward(self, x: Tensor, cd: Tensor) -> Tensor:  # (B, E), (B, E) -> (B, E)
        h = x
        for layer in self.fx:
            h = torch.tanh(layer(h))
        return F.leaky_relu(F.leaky_relu(self.fx_out(h), 0.1) * cd, 0.1)


class CocoerciveGameGradient(nn.Module):
    """F_Θ(X, d) = μ X + Aᵀ σ(A X + g(d)) + c(d), 1/L-cocoercive in X with L = μ + a² (see module doc).

    A: ``hidden`` × E with ‖A‖₂ ≤ a (``bound``); [g(d), c(d)] from one context network, a tanh MLP
    m → h_c (→ h_c, ``context_depth`` − 1 more layers) → hidden + E with h_c = ``context_hidden``. The
    bound holds for every context network: g and c only shift the argument and add a constant in X.
    With ``diagonal=True`` μ X becomes w(d) ⊙ X, w(d) = μ (w₀ + (1 − w₀) sigmoid(v(d))) ∈ [w₀ μ, μ]
    (w₀ = ``slope_floor``), v(d) a third head (E more outputs); the bound L = μ + a² is unchanged.
    """

    def __init__(
        self,
        num_links: int,
        context_dim: int,
        hidden: int = 128,
        *,
        mu: float = 0.1,
        bound: float = 1.0,
        slope: float = 0.1,
        context_hidden: int = 64,
        context_depth: int = 1,
        diagonal: bool = False,
        slope_floor: float = 0.1,
    ) -> None:
        super().__init__()
        if mu < 0 or bound <= 0 or not 0 <= slope <= 1:
            raise ValueError("CocoerciveGameGradient: need mu >= 0, bound > 0 and slope in [0, 1]")
        if context_depth < 1 or context_hidden < 1:
            raise ValueError(
                f"CocoerciveGameGradient: context_depth ({context_depth}) and context_hidden "
                f"({context_hidden}) must be >= 1"
            )
        if not 0 < slope_floor <= 1:
            raise ValueError(f"CocoerciveGameGradient: slope_floor must lie in (0, 1], got {slope_floor}")
        self.diagonal = diagonal
        self.slope_floor = slope_floor
        self.num_links = num_links
        self.mu = mu
        self.bound = bound
        self.slope = slope
        self.a = SpectralLinear(num_links, hidden, bias=False, bound=bound)
        layers: list[nn.Module] = [nn.Linear(context_dim, context_hidden), nn.Tanh()]
        for _ in range(context_depth - 1):  # the shared trunk m → h_c → … → h_c (tanh)
            layers += [nn.Linear(context_hidden, context_hidden), nn.Tanh()]
        heads = hidden + (2 if diagonal else 1) * num_links  # [g(d), c(d)] or [g(d), c(d), v(d)]
        self.context_net = nn.Sequential(*layers, nn.Linear(context_hidden, heads))
        self.hidden = hidden
        self.anchored = False

    def anchor(self, mean: Tensor, std: Tensor) -> None:
        """Make c(d) = −μ (m + σ ⊙ ĉ(d)) with m, σ (E,) the per-link mean and standard deviation of
        the training flows (latent units, i.e. divided by s) and ĉ(d) the raw head: for A = 0 the
        fixed point is then the projection of m + σ ⊙ ĉ(d) onto the feasible link flows, a
        standardised regression that the projection can only bring closer to X*. Needs μ > 0."""
        if not self.mu > 0:
            raise ValueError("CocoerciveGameGradient.anchor: needs mu > 0 (c(d) is anchored at −μ m)")
        _register_stats(self, "c", (mean, std), self.num_links, "CocoerciveGameGradient.anchor")
        self.anchored = True

    @property
    def lipschitz(self) -> float:
        """L = μ + a² · max σ′, an upper bound of the Lipschitz constant of F_Θ(·, d) for every d."""
        return self.mu + self.bound**2 * max(1.0, self.slope)

    def context_features(self, d: Tensor) -> Tensor:
        """[g(d), c(d)] (B, hidden + E), or [g(d), c(d), w(d)] (B, hidden + 2E) when diagonal."""
        out = self.context_net(d)
        h, e = self.hidden, self.num_links
        if self.anchored:  # c(d) = −μ (m + σ ⊙ ĉ(d))
            c = -self.mu * (self.c_mean + self.c_std * out[:, h : h + e])
            out = torch.cat([out[:, :h], c, out[:, h + e :]], dim=1)
        if not self.diagonal:
            return out
        w = self.mu * (self.slope_floor + (1.0 - self.slope_floor) * torch.sigmoid(out[:, h + e :]))
        return torch.cat([out[:, : h + e], w], dim=1)

    def forward(self, x: Tensor, cd: Tensor) -> Tensor:  # (B, E), (B, hidden + E [+ E]) -> (B, E)
        h, e = self.hidden, self.num_links
        g, c = cd[:, :h], cd[:, h : h + e]
        linear = cd[:, h + e :] * x if self.diagonal else self.mu * x  # w(d) ⊙ X or μ X
        a = self.a.effective_weight()  # (hidden, E)
        return linear + F.leaky_relu(x @ a.T + g, self.slope) @ a + c


class TrafficNFPN(nn.Module):
    """N-FPN for traffic equilibria: X̂(d) = s · Σ_k P_C1(z*)_k with z* = T(z*; d) (module doc).

    Args:
        network: the road network (incidence, demand, first thru node).
        flow_scale: s, link flows are divided by s inside the latent (e.g. the mean training flow).
        context_dim: m.
        variant: "nfpn" (the paper's F_Θ), "averaged" (cocoercive F_Θ; T averaged by construction) or
            "averaged-wide" (the same F_Θ with a wide shared context trunk, see the module doc),
            "averaged-diag" (per-link context-dependent slopes w(d) ⊙ X in place of μ X) or "bpr"
            (BPR costs with learned capacities, forward by the assignment solver).
        commodity: "origin" (K = origins) or "od" (K = OD pairs, as in the paper).
        alpha: α, the DYS step (1e-2 in the paper).
        hidden: width of F_Θ; default 100 for "nfpn" (the paper's 45,956 parameters on Sioux Falls)
            286 for "averaged" (45,970 parameters on Sioux Falls) and 8 for "averaged-wide" (trunk
            m → 170 → 170; 45,912 parameters on Sioux Falls) and "averaged-diag" (trunk m → 143 → 143;
            45,813 parameters).
        mu, bound: μ and a of the averaged variant.
        context_scale: contexts are divided by it before F_Θ (d = 10 U[0, 1]^m → [0, 1]).
        solver, backward: fpnets solver (default Picard(tol, max_iter)) and backward mode (default JFB).
        tol, max_iter: default solver tolerance (1e-4) and cap (50), as in the paper.
        warn: warn when a forward solve misses the tolerance.
        initial: the starting latent z₀: "free-flow" (every OD pair on its free-flow shortest path: a
            point of C1 ∩ C2), "min-norm" (N⁺ b_k, the minimum-norm point of C2), "zero", or a (K, E)
            array of commodity flows in vehicles (e.g. from :func:`~.assignment.commodity_flows`).
            Not used by "bpr" (its z₀ is the fixed point from the equilibrium solve).
        cap_range: bpr: r in ĉ(d) = c₀ ⊙ (1 + r tanh(h_Θ(d))).
        gap, rounds: bpr: the target relative Wardrop gap and the most column-generation rounds of
            its forward equilibrium solve.
        sweeps, newton: bpr: Gauss–Seidel sweeps and projected Newton steps per round of that solve
            (:func:`~.assignment.solve_equilibrium`; 4 and 0 by default; 2 and 4 solve contextual
            Sioux Falls equilibria about 4× faster, docs/traffic.md).
        warm_starts: bpr: how many contexts' last path flows are kept to start the next solve of the
            same context (the least recently used are dropped; 0 = always start all-or-nothing;
            unset: 100,000). The Davis–Yin variants: how many training contexts' last latents z are
            kept to start the next training solve of the same context (unset: 0, every solve starts
            at z₀). Only solves in training mode read or write the store, so evaluation stays a
            function of the parameters and the input alone (``fpnets eval`` reproduces it); the
            store is not checkpointed (a resumed run starts its first epoch from z₀).
        context_stats: (mean, std), each (m,): contexts enter F_Θ as (d − mean) / std (the training
            split's statistics) instead of d / context_scale.
        flow_stats: averaged variants: (mean, std), each (E,), of the training link flows in vehicles;
            anchors c(d) = −μ (mean + std ⊙ ĉ(d)) / s (:meth:`CocoerciveGameGradient.anchor`).

    Attributes:
        solution: the :class:`fpnets.Solution` of the last forward (detached).
    """

    def __init__(
        self,
        network: Network,
        flow_scale: float,
        *,
        context_dim: int = 10,
        variant: str = "nfpn",
        commodity: str = "origin",
        alpha: float = 1e-2,
        hidden: int | None = None,
        mu: float = 0.1,
        bound: float = 1.0,
        context_scale: float = 10.0,
        solver: Solver | None = None,
        backward: Backward | None = None,
        tol: float = 1e-4,
        max_iter: int = 50,
        warn: bool = False,
        initial: str | np.ndarray = "free-flow",
        cap_range: float = 0.5,
        gap: float = 1e-7,
        rounds: int = 200,
        sweeps: int = 4,
        newton: int = 0,
        warm_starts: int | None = None,
        context_stats: tuple[Any, Any] | None = None,
        flow_stats: tuple[Any, Any] | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
        if not (flow_scale > 0 and math.isfinite(flow_scale)):
            raise ValueError(f"flow_scale must be positive and finite, got {flow_scale!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha!r}")
        self.variant = variant
        self.commodity = commodity
        self.alpha = float(alpha)
        self.flow_scale = float(flow_scale)
        self.context_scale = float(context_scale)
        self.num_links = network.num_links
        b = network.commodity_demand(commodity) / flow_scale  # (K, n)
        self.num_commodities = b.shape[0]
        self.projection = AffineProjection(torch.as_tensor(network.incidence, dtype=torch.float64))
        offset = self.projection.offset(torch.as_tensor(b, dtype=torch.float64))  # (K, E) N⁺ b_k
        self.projection.float()
        self.register_buffer("offset", offset.float())
        self.register_buffer(
            "allowed", torch.as_tensor(~network.forbidden_links(commodity), dtype=torch.float32)
        )
        self.network = network
        self.gap = float(gap)
        self.rounds = int(rounds)
        self.sweeps = int(sweeps)
        self.newton = int(newton)
        self.paths = None  # the bpr variant's shared path set (grows over calls: a warm start)
        if warm_starts is None:
            warm_starts = 100_000 if variant == "bpr" else 0
        # the last fixed point of each context seen (the most recent ``warm_starts`` contexts): bpr,
        # its path flows (P,) (numpy); the Davis–Yin variants, the latent z (K, E) of training solves
        self.warm: WarmStarts[Any] = WarmStarts(warm_starts)
        self._h0: np.ndarray | None = None  # bpr: all-or-nothing path flows on the free-flow paths
        self.equilibrium_gap: np.ndarray | None = None  # bpr: the relative gaps of the last solve (B,)
        self.equilibrium_rounds: np.ndarray | None = None  # bpr: its column-generation rounds (B,)
        if variant == "bpr":
            if not 0 < gap < 1:
                raise ValueError(f"gap must lie in (0, 1), got {gap!r}")
            if rounds < 1:
                raise ValueError(f"rounds must be >= 1, got {rounds!r}")
            if sweeps < 1 or newton < 0:
                raise ValueError(
                    f"sweeps must be >= 1 and newton >= 0, got sweeps={sweeps!r}, newton={newton!r}"
                )
            width = explicit_hidden_size(45956, context_dim, self.num_links) if hidden is None else hidden
            self.unused_weight = 1e-2  # β: D on the links a commodity does not use, relative
            self.register_buffer("incidence", torch.as_tensor(network.incidence, dtype=torch.float32))  # N
            self.register_buffer("demand_b", torch.as_tensor(b, dtype=torch.float32))  # b_k / s (K, n)
            self.game: nn.Module = LearnedCapacityCosts(network, flow_scale, context_dim, width, cap_range)
        elif variant == "nfpn":
            self.game = PaperGameGradient(self.num_links, context_dim, 100 if hidden is None else hidden)
        else:
            if variant == "averaged":
                width, trunk = (286 if hidden is None else hidden), {}
            elif variant == "averaged-wide":
                width, trunk = (8 if hidden is None else hidden), {"context_hidden": 170, "context_depth": 2}
            else:
                width = 8 if hidden is None else hidden
                trunk = {"context_hidden": 143, "context_depth": 2, "diagonal": True}
            self.game = CocoerciveGameGradient(
                self.num_links, context_dim, width, mu=mu, bound=bound, **trunk
            )
            limit = self.averaged_step_limit()
            if not self.alpha < limit:
                raise ValueError(
                    f"TrafficNFPN(variant={variant!r}): alpha={alpha:g} must be below 2/(K L) = {limit:.4g} "
                    f"(K = {self.num_commodities} commodities, L = {self.game.lipschitz:g}) for T to be averaged; "
                    "lower alpha, mu or bound"
                )
        if isinstance(initial, str):
            if initial == "free-flow":
                from .assignment import all_or_nothing

                z0 = all_or_nothing(network, commodity=commodity) / flow_scale
            elif initial == "min-norm":
                z0 = offset.numpy()
            elif initial == "zero":
                z0 = np.zeros((self.num_commodities, self.num_links))
            else:
                raise ValueError(
                    f"initial must be 'free-flow', 'min-norm', 'zero' or a (K, E) array, got {initial!r}"
                )
        else:
            z0 = np.asarray(initial, dtype=np.float64) / flow_scale
            if z0.shape != (self.num_commodities, self.num_links):
                raise ValueError(
                    f"initial must have shape ({self.num_commodities}, {self.num_links}) (K, E), got {z0.shape}"
                )
        self.register_buffer("z0", torch.as_tensor(z0, dtype=torch.float32))
        self.standardized = context_stats is not None
        if context_stats is not None:
            _register_stats(self, "context", context_stats, context_dim, "context_stats")
        if flow_stats is not None:
            if not isinstance(self.game, CocoerciveGameGradient):
                raise ValueError(f"flow_stats apply to the averaged variants, not {variant!r}")
            mean, std = _stats(flow_stats, self.num_links, "flow_stats")
            self.game.anchor(mean / flow_scale, std / flow_scale)
        self.solver = Picard(tol=tol, max_iter=max_iter) if solver is None else solver
        self.backward_mode = JFB() if backward is None else backward
        self.warn = warn
        self.solution: Solution | None = None

    def normalize(self, d: Tensor) -> Tensor:  # (B, m) -> (B, m)
        """The context as F_Θ sees it: (d − mean) / std when standardised, else d / context_scale."""
        return _normalize(self, d)

    def averaged_step_limit(self) -> float:
        """2 / (K L): DYS is averaged for α below it (variant "averaged"; inf is not claimed for "nfpn")."""
        if self.variant not in AVERAGED:
            raise ValueError(
                f"averaged_step_limit: only the {', '.join(AVERAGED)} variants have a cocoercive F_Θ"
            )
        return 2.0 / (self.num_commodities * self.game.lipschitz)

    def project_c1(self, z: Tensor) -> Tensor:  # (B, K, E) -> (B, K, E)
        return z.clamp_min(0.0) * self.allowed

    def project_c2(self, z: Tensor) -> Tensor:  # (B, K, E) -> (B, K, E)
        return self.projection(z, offset=self.offset)

    def game_gradient(self, x: Tensor, cd: Tensor) -> Tensor:
        """F(x; d)_k = F_Θ(Σ_k x_k, d): (B, K, E) -> (B, K, E) (broadcast over k)."""
        return self.game(x.sum(1), cd).unsqueeze(1).expand_as(x)

    def operator(self, z: Tensor, cd: Tensor) -> Tensor:
        """T(z; d) = z − x + P_C2(2x − z − α F(x; d)), x = P_C1(z): (B, K, E), (B, ·) -> (B, K, E).

        Evaluated as T(z) = x − αF + N⁺b − V_r V_rᵀ(2x − z − αF): P_C2(v) = v − V_r V_rᵀ v + N⁺b
        substituted, so z cancels, and V_rᵀ F is taken once per sample, since F is the same for
        every commodity; the last subtraction is fused into the matrix product. It equals the
        composition :meth:`operator_reference` (a test checks value and gradients in float64) in
        fewer passes over the (B, K, E) latent: 1.09–1.34× less time per evaluation, 1.38–2.22×
        with its JFB backward, on the five TNTP networks (benchmarks/results/traffic_operator.json).
        """
        b, k, e = z.shape
        basis = self.projection.basis.to(z.dtype)  # (E, r) V_r
        x = self.project_c1(z)  # (B, K, E), a new tensor: the in-place steps below are safe for autograd
        af = self.alpha * self.game(x.sum(1), cd)  # (B, E) α F_Θ(Σ_k x_k, d)
        u = x.mul(2.0).sub_(z).reshape(b * k, e) @ basis  # (B K, r) V_rᵀ(2x − z)
        u = u.view(b, k, -1).sub_((af @ basis).unsqueeze(1))  # (B, K, r) V_rᵀ v
        w = x.add_(self.offset.to(z.dtype)).sub_(af.unsqueeze(1))  # (B, K, E) x − αF + N⁺b
        return torch.addmm(w.reshape(b * k, e), u.reshape(b * k, -1), basis.T, alpha=-1.0).view(b, k, e)

    def operator_reference(self, z: Tensor, cd: Tensor) -> Tensor:
        """T(z; d) composed as written, z − x + P_C2(2x − z − α F(x; d)) (slower; :meth:`operator`)."""
        x = self.project_c1(z)
        y = self.project_c2(2.0 * x - z - self.alpha * self.game_gradient(x, cd))
        return z - x + y

    def readout(self, z: Tensor) -> Tensor:
        """X̂ = s · Σ_k P_C1(z)_k: (B, K, E) -> (B, E) in vehicles."""
        return self.flow_scale * self.project_c1(z).sum(1)

    def initial_latent(self, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """z₀ (B, K, E), see ``initial``."""
        return self.z0.to(dtype=dtype, device=device).unsqueeze(0).expand(batch, -1, -1).contiguous()

    def metric_operator(self, z: Tensor, cd: Tensor, metric: Tensor, correction: Tensor) -> Tensor:
        """T_D(z; d) = z − x + P^D_C2(2x − z − D ⊙ F(x; d)), x = P_C1(z): Davis–Yin in the metric of
        D⁻¹ (the bpr variant's operator).

        D = ``metric`` (B, K, E) > 0 is a per-commodity diagonal step: α times the inverse slope of
        the learned cost of each link the commodity uses at the equilibrium, and α β times their
        median on the others (β = 1e-2), and
        P^D_C2(v)_k = v_k − ``correction``_k (N v_k − b_k) with correction_k = D_k Nᵀ (N D_k Nᵀ)⁺
        (B, K, E, n), the projection onto C2 in that metric. Any fixed point of T_D is a Wardrop
        equilibrium of F (the same variational inequality, in another metric), and x* itself is one
        (:meth:`equilibrium_latent`). D ⊙ dF is the first-order response of link flows to a change of
        their costs (a flow shifts by the cost change over the link's slope), so JFB's one step of
        T_D is a Newton-scaled step where one step of the Euclidean T is dominated by the steepest,
        most congested links.
        """
        x = self.project_c1(z)
        v = 2.0 * x - z - metric * self.game_gradient(x, cd)  # (B, K, E)
        excess = torch.einsum("ne,bke->bkn", self.incidence, v) - self.demand_b  # N v_k − b_k
        y = v - torch.einsum("bken,bkn->bke", correction, excess)
        return z - x + y

    def equilibrium_latent(self, cd: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(ζ* (B, K, E), D (B, K, E), D Nᵀ (N D Nᵀ)⁺ (B, K, E, n)) at the equilibrium of the learned
        costs (bpr): the fixed point of :meth:`metric_operator` and its metric.

        Solves the Wardrop equilibria of t̂(·; d) for the batch with the assignment solver (gap ≤
        ``gap``); ζ* = x*/s − D ⊙ r/τ (:func:`~.assignment.splitting_latent` with the per-link step
        D; r the reduced costs, 0 on the used links). Warm start: the path set is kept
        between calls, and each context starts from the path flows of its previous solve (a
        context seen before, e.g. in the last epoch; others start all-or-nothing). The reached gaps
        are in ``equilibrium_gap`` (a miss is data here: the core solver's check of ‖T(ζ*) − ζ*‖
        then reports the sample as not converged).
        """
        import warnings

        from .assignment import (
            PathSet,
            commodity_flows,
            free_flow_path_flow,
            solve_equilibrium,
            splitting_latent,
        )

        game = self.game
        costs = game.link_costs(cd)
        if self.paths is None:  # the path set only grows, so the start h0's path ids stay valid
            self.paths = PathSet(self.network)
            self._h0 = free_flow_path_flow(self.network, self.paths)
        h0 = self._h0
        keys = row_keys(d)
        init = np.zeros((len(keys), len(self.paths)))
        for i, key in enumerate(keys):
            h = self.warm.get(key, h0)
            init[i, : len(h)] = h
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a missed gap is recorded, not warned
            res = solve_equilibrium(
                self.network,
                costs,
                gap=self.gap,
                max_iter=self.rounds,
                sweeps=self.sweeps,
                newton=self.newton,
                paths=self.paths,
                init_path_flow=init,
            )
        for key, h in zip(keys, res.path_flow, strict=True):
            self.warm.put(key, h.copy())
        self.equilibrium_gap = res.gap
        self.equilibrium_rounds = res.iterations
        flows = commodity_flows(self.network, res.paths, res.path_flow, self.commodity)  # (B, K, E)
        # D: the inverse slope of each used link's learned cost, in latent units (flow s per time τ)
        slope = costs.derivative(res.link_flow) * self.flow_scale / game.time_scale  # (B, E)
        used = flows > 1e-9 * max(float(flows.max()), 1e-300)  # (B, K, E)
        floor = 1e-6 * max(float(slope.max()), 1e-300)
        inverse = 1.0 / np.maximum(slope, floor)[:, None, :]  # (B, 1, E)
        # unused links get a small common weight (β times the median over used links), so a
        # commodity on a single path still sees the circulations through the rest of the network
        typical = np.array(
            [np.median(np.broadcast_to(inverse[i], used[i].shape)[used[i]]) for i in range(len(used))]
        )
        metric = self.alpha * np.where(used, inverse, self.unused_weight * typical[:, None, None])
        inc = self.network.incidence  # (n, E)
        lap = np.einsum("ie,bke,je->bkij", inc, metric, inc)  # N D_k Nᵀ, weighted Laplacians
        correction = np.einsum("bke,ie,bkij->bkej", metric, inc, np.linalg.pinv(lap, hermitian=True))
        zeta = splitting_latent(
            self.network,
            costs.time(res.link_flow),
            flows,
            metric,
            flow_scale=self.flow_scale,
            time_scale=game.time_scale,
            commodity=self.commodity,
        )
        as_t = lambda a: torch.as_tensor(a, dtype=cd.dtype, device=cd.device)  # noqa: E731
        return as_t(zeta), as_t(metric), as_t(correction)

    def forward(self, d: Tensor) -> Tensor:  # (B, m) -> (B, E)
        if d.dim() != 2:
            raise ValueError(f"TrafficNFPN expects contexts of shape (B, m), got {tuple(d.shape)}")
        if not torch.isfinite(d).all():
            raise ValueError("TrafficNFPN: contexts hold NaN or Inf")
        cd = self.game.context_features(self.normalize(d))  # (B, ·)
        if self.variant == "bpr":
            z0, metric, correction = self.equilibrium_latent(cd, d)
            sol = fixed_point(
                self.metric_operator,
                z0,
                cd,
                metric,
                correction,
                solver=self.solver,
                backward=self.backward_mode,
                warn=self.warn,
            )
            self.solution = sol.detached()
            return self.readout(sol.value)
        z0 = self.initial_latent(d.shape[0], cd.dtype, cd.device)
        warm = self.training and self.warm.capacity > 0
        if warm:
            keys = row_keys(d)
            for i, key in enumerate(keys):
                start = self.warm.get(key)
                if start is not None:
                    z0[i] = start.to(dtype=z0.dtype, device=z0.device)
        sol = fixed_point(
            self.operator, z0, cd, solver=self.solver, backward=self.backward_mode, warn=self.warn
        )
        self.solution = sol.detached()
        if warm:
            for key, z in zip(keys, self.solution.value, strict=True):
                self.warm.put(key, z.clone())
        return self.readout(sol.value)


class LearnedCapacityCosts(nn.Module):
    """F_Θ(X, d) = t₀ ⊙ (1 + B̂ (sX / ĉ(d))^p) / τ with ĉ(d) = c₀ ⊙ (1 + r tanh(h_Θ(d))) (module doc).

    X: link flows in units of s (B, E); the context features are the capacity ratios ĉ/c₀ (B, E).
    B̂ = exp(log_b), one scalar initialised to the mean B of the link file (0.15 if it has none);
    p: the file's powers.

    Args:
        network: the road network (t₀, c₀, B and p from its link file).
        flow_scale: s.
        context_dim: m.
        hidden: width h of the capacity network m → h → h → E (tanh); 0 makes it linear, m → E.
        cap_range: r ∈ (0, 1), the largest relative capacity change the model can express.
    """

    def __init__(
        self, network: Network, flow_scale: float, context_dim: int, hidden: int, cap_range: float = 0.5
    ) -> None:
        super().__init__()
        if not 0 < cap_range < 1:
            raise ValueError(f"cap_range must lie in (0, 1) (capacities stay positive), got {cap_range!r}")
        if hidden < 0:
            raise ValueError(f"hidden must be >= 0, got {hidden}")
        e = network.num_links
        self.cap_range = float(cap_range)
        self.flow_scale = float(flow_scale)
        self.time_scale = float(network.free_flow_time.mean())
        if not self.time_scale > 0:
            raise ValueError("LearnedCapacityCosts: the free-flow times must not all be zero")
        self.register_buffer(
            "t0", torch.as_tensor(network.free_flow_time / self.time_scale, dtype=torch.float32)
        )
        self.capacity = np.asarray(network.capacity, dtype=np.float64)  # c₀ in vehicles (E,)
        self.free_flow_time = np.asarray(network.free_flow_time, dtype=np.float64)  # t₀ (E,)
        self.register_buffer("c0", torch.as_tensor(network.capacity / flow_scale, dtype=torch.float32))
        self.register_buffer("power", torch.as_tensor(network.power, dtype=torch.float32))
        b0 = float(np.mean(network.b)) if np.mean(network.b) > 0 else 0.15  # the usual BPR B if none
        self.log_b = nn.Parameter(torch.tensor(math.log(b0)))
        if hidden == 0:
            self.capacity_net: nn.Module = nn.Linear(context_dim, e)
        else:
            self.capacity_net = nn.Sequential(
                nn.Linear(context_dim, hidden),
                nn.Tanh(),
                nn.Linear(hidden, hidden),
                nn.Tanh(),
                nn.Linear(hidden, e),
            )
        last = self.capacity_net if hidden == 0 else self.capacity_net[-1]
        nn.init.zeros_(last.weight)  # start at the file's capacities: ĉ = c₀
        nn.init.zeros_(last.bias)

    def context_features(self, d: Tensor) -> Tensor:  # (B, m) -> (B, E) ĉ(d)/c₀
        return 1.0 + self.cap_range * torch.tanh(self.capacity_net(d))

    def link_costs(self, ratio: Tensor) -> LinkCosts:
        """The learned costs t̂(·; d) of a batch (capacity ratios ĉ/c₀ (B, E)) as float64
        :class:`~.network.LinkCosts`, for the assignment solver."""
        cap = ratio.detach().double().cpu().numpy() * self.capacity  # (B, E) vehicles
        b = np.full(len(self.capacity), float(self.log_b.detach().exp()))
        return LinkCosts(self.free_flow_time, cap, b, self.power.double().cpu().numpy())

    def forward(self, x: Tensor, cd: Tensor) -> Tensor:  # (B, E), (B, E) -> (B, E)
        ratio = x.clamp_min(0.0) / (self.c0 * cd)
        return self.t0 * (1.0 + self.log_b.exp() * ratio**self.power)


def explicit_hidden_size(num_params: int, context_dim: int, num_links: int) -> int:
    """h such that the two-hidden-layer MLP m → h → h → E has about ``num_params`` parameters."""
    # params = h² + (m + E + 2) h + E
    b = context_dim + num_links + 2
    h = (-b + math.sqrt(b * b + 4 * max(num_params - num_links, 0))) / 2
    return max(1, round(h))


def _register_stats(module: nn.Module, prefix: str, stats: tuple[Any, Any], size: int, name: str) -> None:
    """Checked (mean, std) (:func:`_stats`) as the buffers ``<prefix>_mean`` and ``<prefix>_std``."""
    mean, std = _stats(stats, size, name)
    module.register_buffer(f"{prefix}_mean", mean)
    module.register_buffer(f"{prefix}_std", std)


def _normalize(module: nn.Module, d: Tensor) -> Tensor:  # (B, m) -> (B, m)
    """A model's context input: (d − context_mean) / context_std when ``module.standardized``, else
    d / ``module.context_scale``."""
    if module.standardized:
        return (d - module.context_mean.to(d.dtype)) / module.context_std.to(d.dtype)
    return d / module.context_scale


def _stats(stats: tuple[Any, Any], size: int, name: str) -> tuple[Tensor, Tensor]:
    """(mean, std) as float32 tensors of shape (size,), checked (finite; std > 0)."""
    try:
        mean, std = stats
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (mean, std)") from None
    mean = torch.as_tensor(np.asarray(mean, dtype=np.float64), dtype=torch.float32)
    std = torch.as_tensor(np.asarray(std, dtype=np.float64), dtype=torch.float32)
    if mean.shape != (size,) or std.shape != (size,):
        raise ValueError(
            f"{name}: mean and std must have shape ({size},), got {tuple(mean.shape)} and {tuple(std.shape)}"
        )
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise ValueError(
            f"{name}: mean must be finite and std positive (a constant column cannot be standardised)"
        )
    return mean, std


class ExplicitTrafficNet(nn.Module):
    """X̂(d) = s · softplus(MLP(d / 10)), an MLP m → h → h → E (tanh), sized to ``num_params``; or,
    standardised, X̂(d) = m_X + σ_X ⊙ MLP((d − m_d) / σ_d) with the training split's per-link flow and
    per-dimension context statistics (``flow_stats``, ``context_stats``)."""

    def __init__(
        self,
        num_links: int,
        flow_scale: float,
        *,
        context_dim: int = 10,
        num_params: int = 45956,
        hidden: int | None = None,
        context_scale: float = 10.0,
        context_stats: tuple[Any, Any] | None = None,
        flow_stats: tuple[Any, Any] | None = None,
    ) -> None:
        super().__init__()
        if (context_stats is None) != (flow_stats is None):
            raise ValueError("ExplicitTrafficNet: give both context_stats and flow_stats, or neither")
        h = explicit_hidden_size(num_params, context_dim, num_links) if hidden is None else hidden
        self.net = nn.Sequential(
            nn.Linear(context_dim, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, num_links)
        )
        self.flow_scale = float(flow_scale)
        self.context_scale = float(context_scale)
        self.standardized = context_stats is not None
        if context_stats is not None and flow_stats is not None:
            _register_stats(self, "context", context_stats, context_dim, "context_stats")
            _register_stats(self, "flow", flow_stats, num_links, "flow_stats")
        self.solution: Solution | None = None  # no fixed point

    def forward(self, d: Tensor) -> Tensor:  # (B, m) -> (B, E)
        z = self.net(_normalize(self, d))  # (B, E)
        if self.standardized:
            return self.flow_mean.to(z.dtype) + self.flow_std.to(z.dtype) * z
        return self.flow_scale * F.softplus(z)


class MeanCapacityBaseline(nn.Module):
    """X̂(d) = the equilibrium under the mean training capacities, for every d (no learning)."""

    def __init__(self, flow: Any) -> None:
        super().__init__()
        self.register_buffer("flow", torch.as_tensor(np.asarray(flow), dtype=torch.float32))
        self.solution: Solution | None = None

    @classmethod
    def from_data(cls, data: Any, *, gap: float = 1e-8) -> MeanCapacityBaseline:
        """Solve the equilibrium with c̄ = mean over the training contexts of c(d) (a TrafficData)."""
        from .assignment import solve_equilibrium

        network = data.network
        mean_cap = data.capacities(data.train.context).mean(0, keepdims=True)  # (1, E)
        e = network.num_links
        costs = LinkCosts(
            network.free_flow_time, mean_cap, np.full(e, data.model.b), np.full(e, data.model.power)
        )
        res = solve_equilibrium(network, costs, gap=gap, throw=True)
        return cls(res.link_flow[0])

    def forward(self, d: Tensor) -> Tensor:  # (B, m) -> (B, E)
        return self.flow.to(d.dtype).unsqueeze(0).expand(d.shape[0], -1)
