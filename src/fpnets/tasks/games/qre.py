"""Quantal response equilibria (QRE) of entropy-regularised two-player zero-sum matrix games.

The game. Player 1 picks a mixed strategy x₁ ∈ Δⁿ and pays x₁ᵀ B x₂ to player 2, who picks
x₂ ∈ Δⁿ; both are regularised by the negative entropy h(x) = Σᵢ xᵢ log xᵢ:

    f(x₁, x₂) = x₁ᵀ B x₂ + h(x₁) − h(x₂),     player 1 minimises f, player 2 maximises it.

f is strongly convex in x₁ and strongly concave in x₂, so the saddle point (the QRE) exists and is
unique. Its game gradient (the paper's F) is

    F(x) = [∇_{x₁} f; −∇_{x₂} f] = [B x₂ + log x₁ + 1; −Bᵀ x₁ + log x₂ + 1],

a strongly monotone map, and the QRE is the solution of the variational inequality
⟨F(x*), y − x*⟩ ≥ 0 for all y ∈ Δⁿ × Δⁿ, i.e. the fixed point x* = P_{Δ×Δ}(x* − α F(x*)).
The KKT conditions B x₂ + log x₁ + 1 + λ₁ 1 = 0, −Bᵀ x₁ + log x₂ + 1 + λ₂ 1 = 0 give the
logit best responses

    x₁ = softmax(−B x₂),     x₂ = softmax(Bᵀ x₁)      (player 1 avoids cost, player 2 seeks it).

Shapes: a batch of games B is (N, n, n) (or (…, n, n) for the metrics); a strategy profile
x = (x₁, x₂) is (N, 2, n), row 0 the minimiser's strategy, row 1 the maximiser's.

Public names:

- :func:`antisymmetric`: the antisymmetric matrix with given strictly-upper-triangular entries.
- :func:`game_gradient`, :func:`best_response`: F(x) and the logit best responses.
- :func:`qre_residual`, :func:`projected_residual`, :func:`duality_gap`: three certificates, each
  zero exactly at the QRE.
- :func:`solve_qre` → :class:`QRESolution`: batched damped Newton to float64 precision.
- :func:`qre`: the QRE as a differentiable layer (Newton forward, implicit-function backward).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...operators.simplex import project_simplex

__all__ = [
    "QREConvergenceError",
    "QREConvergenceWarning",
    "QRESolution",
    "antisymmetric",
    "best_response",
    "duality_gap",
    "game_gradient",
    "projected_residual",
    "qre",
    "qre_implicit",
    "qre_residual",
    "solve_qre",
]


class QREConvergenceWarning(UserWarning):
    """Warned when :func:`solve_qre` stops at ``max_iter`` with games above the tolerance."""


class QREConvergenceError(RuntimeError):
    """Raised by :func:`solve_qre` (``throw=True``) when games stay above the tolerance."""


# ----------------------------------------------------------------------------------------------
# Checks and small helpers


def _check_games(B: Tensor, what: str, batched: bool = False) -> None:
    if not isinstance(B, Tensor):
        raise TypeError(f"{what}: the payoff matrices B must be a torch.Tensor, got {type(B).__name__}")
    if not B.is_floating_point():
        raise TypeError(f"{what}: B must be floating point, got dtype {B.dtype}; cast it with .double()")
    if B.dim() < 2 or B.shape[-1] != B.shape[-2]:
        raise ValueError(f"{what}: B must be (..., n, n) square payoff matrices, got shape {tuple(B.shape)}")
    if batched and B.dim() != 3:
        raise ValueError(f"{what}: B must be a batch (N, n, n), got shape {tuple(B.shape)}")
    if not bool(torch.isfinite(B).all()):
        raise ValueError(f"{what}: B holds NaN or Inf; check the payoff network or the data")


def _check_profile(B: Tensor, x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what}: the strategy profile x must be a torch.Tensor, got {type(x).__name__}")
    n = B.shape[-1]
    if x.shape[-2:] != (2, n):
        raise ValueError(
            f"{what}: x must be (..., 2, n) = (..., 2, {n}) (row 0: player 1, row 1: player 2) for "
            f"B of shape {tuple(B.shape)}, got {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what}: x holds NaN or Inf")


def _matvec(B: Tensor, v: Tensor) -> Tensor:
    """B v for (…, n, n) and (…, n)."""
    return (B @ v.unsqueeze(-1)).squeeze(-1)


def _rmatvec(B: Tensor, v: Tensor) -> Tensor:
    """Bᵀ v for (…, n, n) and (…, n)."""
    return (v.unsqueeze(-2) @ B).squeeze(-2)


def antisymmetric(v: Tensor, n: int) -> Tensor:
    """The antisymmetric n × n matrices B with B_ij = v_k for i < j (row-major order), B_ji = −v_k.

    Args:
        v: (…, n(n−1)/2) the free (strictly upper triangular) entries.
        n: the number of actions.

    Returns:
        B: (…, n, n), Bᵀ = −B.
    """
    m = n * (n - 1) // 2
    if v.shape[-1] != m:
        raise ValueError(
            f"antisymmetric: n={n} needs n(n-1)/2 = {m} free entries, got last dimension {v.shape[-1]}"
        )
    i, j = torch.triu_indices(n, n, offset=1, device=v.device)
    B = v.new_zeros(*v.shape[:-1], n, n)
    B[..., i, j] = v
    B[..., j, i] = -v
    return B


def game_gradient(B: Tensor, x: Tensor) -> Tensor:
    """F(x) = [B x₂ + log x₁ + 1; −Bᵀ x₁ + log x₂ + 1] for x in the interior of Δⁿ × Δⁿ.

    Args:
        B: (…, n, n) payoff matrices.
        x: (…, 2, n) strategy profiles with positive entries.

    Returns:
        F(x): (…, 2, n).
    """
    _check_games(B, "game_gradient")
    _check_profile(B, x, "game_gradient")
    if bool((x <= 0).any()):
        raise ValueError("game_gradient: F involves log x, so every entry of x must be > 0")
    x1, x2 = x[..., 0, :], x[..., 1, :]
    f1 = _matvec(B, x2) + torch.log(x1) + 1.0
    f2 = -_rmatvec(B, x1) + torch.log(x2) + 1.0
    return torch.stack([f1, f2], dim=-2)


def best_response(B: Tensor, x: Tensor) -> Tensor:
    """The logit best responses (softmax(−B x₂), softmax(Bᵀ x₁)), shaped like x: (…, 2, n)."""
    _check_games(B, "best_response")
    _check_profile(B, x, "best_response")
    x1, x2 = x[..., 0, :], x[..., 1, :]
    return torch.stack([torch.softmax(-_matvec(B, x2), -1), torch.softmax(_rmatvec(B, x1), -1)], dim=-2)


def qre_residual(B: Tensor, x: Tensor) -> Tensor:
    """r(x) = ‖x − (softmax(−B x₂), softmax(Bᵀ x₁))‖₂ over both players, per game: (…,).

    r ≥ 0, and r = 0 exactly when x is the QRE of B (the QRE is the unique fixed point of the logit
    best responses). Defined for any x ∈ Δⁿ × Δⁿ, also on the boundary.
    """
    return torch.linalg.vector_norm(x - best_response(B, x), dim=(-2, -1))


def _residual_unchecked(B: Tensor, x1: Tensor, x2: Tensor) -> Tensor:
    """:func:`qre_residual` of (x₁, x₂) without the input checks (inside the solver loop)."""
    r1 = x1 - torch.softmax(-_matvec(B, x2), -1)
    r2 = x2 - torch.softmax(_rmatvec(B, x1), -1)
    return (r1.pow(2).sum(-1) + r2.pow(2).sum(-1)).sqrt()


def projected_residual(B: Tensor, x: Tensor, step: float = 1.0) -> Tensor:
    """‖x − P_{Δ×Δ}(x − α F(x))‖₂ per game, α = ``step`` > 0; zero exactly at the QRE.

    The natural residual of the variational inequality; needs x > 0 (F involves log x).
    """
    if not step > 0:
        raise ValueError(f"projected_residual: step must be > 0, got {step!r}")
    return torch.linalg.vector_norm(x - project_simplex(x - step * game_gradient(B, x)), dim=(-2, -1))


def duality_gap(B: Tensor, x: Tensor) -> Tensor:
    """The regularised duality gap max_{y₂} f(x₁, y₂) − min_{y₁} f(y₁, x₂) per game: (…,).

    In closed form gap(x) = lse(Bᵀ x₁) + lse(−B x₂) + h(x₁) + h(x₂) (lse: log-sum-exp,
    h(x) = Σ xᵢ log xᵢ with 0 log 0 = 0), which equals
    KL(x₁ ‖ softmax(−B x₂)) + KL(x₂ ‖ softmax(Bᵀ x₁)): it is ≥ 0 and zero exactly at the QRE.
    Defined for any x ∈ Δⁿ × Δⁿ (zero entries allowed).
    """
    _check_games(B, "duality_gap")
    _check_profile(B, x, "duality_gap")
    x1, x2 = x[..., 0, :], x[..., 1, :]
    h = torch.special.xlogy(x, x).sum(dim=(-2, -1))  # h(x₁) + h(x₂)
    return torch.logsumexp(_rmatvec(B, x1), -1) + torch.logsumexp(-_matvec(B, x2), -1) + h


# ----------------------------------------------------------------------------------------------
# The solver


@dataclass(frozen=True)
class QRESolution:
    """What :func:`solve_qre` returns (float64).

    Attributes:
        x: (N, 2, n) the QREs (x₁, x₂), entries > 0, rows summing to 1.
        residual: (N,) the certificate :func:`qre_residual` of ``x``.
        iterations: (N,) Newton steps spent on each game.
        converged: (N,) residual ≤ tol.
        tol: the tolerance the solve ran with.
    """

    x: Tensor
    residual: Tensor
    iterations: Tensor
    converged: Tensor
    tol: float


def _reduced(B: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x₂ = softmax(b), x₁ = softmax(−B x₂) and φ(x₂) = −lse(−B x₂) − Σ x₂ log x₂.

    φ(x₂) = min_{x₁} f(x₁, x₂) is strictly concave; its maximiser over Δⁿ is the QRE's x₂.
    Returns (x₁, x₂, log x₂, φ): (m, n), (m, n), (m, n), (m,).
    """
    logx2 = torch.log_softmax(b, -1)
    x2 = logx2.exp()
    a = -_matvec(B, x2)  # −B x₂
    lse = torch.logsumexp(a, -1)
    x1 = (a - lse.unsqueeze(-1)).exp()
    phi = -lse - (x2 * logx2).sum(-1)
    return x1, x2, logx2, phi


def _newton_direction(B: Tensor, x1: Tensor, x2: Tensor, logx2: Tensor) -> tuple[Tensor, Tensor]:
    """The Newton step for max φ(x₂) s.t. 1ᵀx₂ = 1, as a step u = Δ/x₂ in log x₂, and its decrement.

    With S = diag(x₁) − x₁x₁ᵀ, D = diag(x₂), the Hessian of φ is −(BᵀSB + D⁻¹) and the gradient
    g = Bᵀx₁ − log x₂ − 1. The step Δ solves (BᵀSB + D⁻¹) Δ = g + ν1, 1ᵀΔ = 0; in the scaled
    unknown w = D^{-1/2} Δ the matrix K = I + D^{1/2}BᵀSBD^{1/2} is symmetric with eigenvalues
    ≥ 1, so the solve is well conditioned even when entries of x₂ are tiny.
    Returns u (m, n) and the Newton decrement λ² = gᵀΔ (m,), λ² ≥ 0.
    """
    n = B.shape[-1]
    g = _rmatvec(B, x1) - logx2 - 1.0  # (m, n)
    sq = x2.sqrt()  # D^{1/2}
    M = B * sq.unsqueeze(-2)  # B D^{1/2}: (m, n, n)
    Ms = M * x1.sqrt().unsqueeze(-1)  # diag(√x₁) B D^{1/2}
    p = _rmatvec(M, x1)  # Mᵀ x₁: (m, n)
    K = Ms.transpose(-1, -2) @ Ms - p.unsqueeze(-1) * p.unsqueeze(-2)  # D^{1/2}BᵀSBD^{1/2}
    K = K + torch.eye(n, dtype=B.dtype, device=B.device)
    L, info = torch.linalg.cholesky_ex(K)
    rhs = torch.stack([sq * g, sq], dim=-1)  # (m, n, 2)
    breakdown = bool((info != 0).any())  # K is SPD in exact arithmetic; LU only if rounding breaks that
    sol = torch.linalg.solve(K, rhs) if breakdown else torch.cholesky_solve(rhs, L)
    wg, w1 = sol[..., 0], sol[..., 1]
    nu = -(sq * wg).sum(-1) / (sq * w1).sum(-1)  # makes 1ᵀΔ = √x₂ᵀw = 0
    w = wg + nu.unsqueeze(-1) * w1
    delta = sq * w  # Δ = D^{1/2} w
    Bd = _matvec(B, delta)
    SBd = x1 * (Bd - (x1 * Bd).sum(-1, keepdim=True))  # S B Δ
    u = g + nu.unsqueeze(-1) - _rmatvec(B, SBd)  # Δ / x₂, without dividing by x₂
    return u, (g * delta).sum(-1)


def solve_qre(
    B: Tensor,
    *,
    tol: float = 1e-13,
    log_tol: float = 1e-11,
    max_iter: int = 100,
    init: Tensor | None = None,
    throw: bool = False,
    warn: bool = True,
) -> QRESolution:
    """The QREs of a batch of zero-sum games, by damped Newton in float64.

    Method: x₁ is eliminated in closed form (x₁ = softmax(−B x₂)), which leaves the strictly
    concave maximisation of φ(x₂) = −lse(−B x₂) − Σ x₂ log x₂ over Δⁿ. Each step solves the
    equality-constrained Newton system (well-conditioned scaled form, see
    :func:`_newton_direction`) and moves multiplicatively, log x₂ ← log x₂ + t Δ/x₂ (renormalised),
    so iterates stay in the interior; t is the largest of 1, ½, ¼, … meeting Armijo's condition on φ.
    Games that reach the tolerance are frozen. The certificate is :func:`qre_residual`.

    Args:
        B: (N, n, n) payoff matrices (any square matrices; antisymmetric in the benchmark).
        tol: stop a game once its residual ‖x − best_response(x)‖₂ ≤ tol ...
        log_tol: ... and max_i |log x₂ᵢ − log softmax(Bᵀx₁)ᵢ| ≤ log_tol (the relative accuracy of
            tiny probabilities, which the absolute residual does not see; one more Newton step at
            most, since convergence is quadratic). ``converged`` reports the residual only.
        max_iter: the most Newton steps per game.
        init: optional (N, 2, n) starting profile with positive entries (only x₂ is used).
        throw: raise :class:`QREConvergenceError` if a game misses ``tol``.
        warn: otherwise warn with :class:`QREConvergenceWarning`.

    Returns:
        a :class:`QRESolution` (float64, on B's device).
    """
    _check_games(B, "solve_qre", batched=True)
    if not tol >= 0:
        raise ValueError(f"solve_qre: tol must be >= 0, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"solve_qre: max_iter must be a non-negative integer, got {max_iter!r}")
    Bd = B.detach().to(torch.float64)
    N, n = Bd.shape[0], Bd.shape[-1]
    if init is None:
        b = Bd.new_zeros(N, n)  # x₂ uniform
    else:
        _check_profile(Bd, init, "solve_qre")
        if init.shape != (N, 2, n):
            raise ValueError(f"solve_qre: init must be (N, 2, n) = {(N, 2, n)}, got {tuple(init.shape)}")
        if bool((init[:, 1] <= 0).any()):
            raise ValueError("solve_qre: init must have positive entries (the iterates stay in the interior)")
        b = init[:, 1].detach().to(Bd).log()
    x = Bd.new_empty(N, 2, n)
    residual = Bd.new_full((N,), float("inf"))
    iterations = torch.zeros(N, dtype=torch.int64, device=Bd.device)
    active = torch.arange(N, device=Bd.device)
    eps = torch.finfo(torch.float64).eps
    for k in range(max_iter + 1):
        if active.numel() == 0:
            break
        Ba, ba = Bd[active], b[active]
        x1, x2, logx2, phi = _reduced(Ba, ba)
        xa = torch.stack([x1, x2], dim=-2)
        ra = _residual_unchecked(Ba, x1, x2)
        x[active], residual[active] = xa, ra
        # relative accuracy of small entries: log x₂ against log softmax(Bᵀ x₁) (x₁ is exact given x₂)
        log_gap = (logx2 - torch.log_softmax(_rmatvec(Ba, x1), -1)).abs().amax(-1)
        keep = (ra > tol) | (log_gap > log_tol)
        if k == max_iter or not bool(keep.any()):
            break
        active, Ba, x1, x2, logx2, phi = active[keep], Ba[keep], x1[keep], x2[keep], logx2[keep], phi[keep]
        u, dec = _newton_direction(Ba, x1, x2, logx2)
        # backtracking: the largest t = 2^-j with φ(new) ≥ φ + c t λ² (up to rounding of φ)
        t = torch.ones_like(phi)
        new = logx2 + u
        slack = 64 * eps * (1.0 + phi.abs())
        todo = torch.arange(active.numel(), device=Bd.device)
        for _ in range(60):
            phi_new = _reduced(Ba[todo], new[todo])[3]
            ok = phi_new >= phi[todo] + 1e-4 * t[todo] * dec[todo] - slack[todo]
            todo = todo[~ok]
            if todo.numel() == 0:
                break
            t[todo] *= 0.5
            new[todo] = logx2[todo] + t[todo].unsqueeze(-1) * u[todo]
        b[active] = new - new.max(-1, keepdim=True).values  # the gauge: max log-weight 0
        iterations[active] += 1
    converged = residual <= tol
    sol = QRESolution(x=x, residual=residual, iterations=iterations, converged=converged, tol=tol)
    if not bool(converged.all()):
        failed = int((~converged).sum())
        msg = (
            f"solve_qre: {failed} of {N} games still above tol={tol:g} after max_iter={max_iter} Newton steps "
            f"(largest residual {float(residual.max()):.3e}); raise max_iter or loosen tol"
        )
        if throw:
            raise QREConvergenceError(msg)
        if warn:
            warnings.warn(msg, QREConvergenceWarning, stacklevel=2)
    return sol


# ----------------------------------------------------------------------------------------------
# The differentiable layer


class _QREImplicit(torch.autograd.Function):
    """x*(B) given the solved x*, with the implicit-function gradient of the KKT system."""

    @staticmethod
    def forward(ctx: Any, B: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(B.detach().to(torch.float64), x.detach().to(torch.float64))
        return x.detach().to(B.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None]:  # type: ignore[override]
        B, x = ctx.saved_tensors  # (N, n, n), (N, 2, n) float64
        N, n = B.shape[0], B.shape[-1]
        g = grad.to(torch.float64)
        s1, s2 = x[:, 0].sqrt(), x[:, 1].sqrt()
        # Jᵀ v = −(g₁, g₂, 0, 0) for the KKT Jacobian J of
        #   B x₂ + log x₁ + 1 + λ₁1 = 0,  −Bᵀx₁ + log x₂ + 1 + λ₂1 = 0,  1ᵀx₁ = 1ᵀx₂ = 1,
        # solved in the scaled unknowns vᵢ = √xᵢ ∘ wᵢ (rows scaled by D^{1/2}): identity plus an
        # antisymmetric block, bordered by the constraints; nonsingular and well conditioned.
        C = s1.unsqueeze(-1) * B * s2.unsqueeze(-2)  # D₁^{1/2} B D₂^{1/2}
        A = B.new_zeros(N, 2 * n + 2, 2 * n + 2)
        eye = torch.eye(n, dtype=B.dtype, device=B.device)
        A[:, :n, :n] = eye
        A[:, :n, n : 2 * n] = -C
        A[:, n : 2 * n, :n] = C.transpose(-1, -2)
        A[:, n : 2 * n, n : 2 * n] = eye
        A[:, :n, 2 * n] = s1
        A[:, n : 2 * n, 2 * n + 1] = s2
        A[:, 2 * n, :n] = s1
        A[:, 2 * n + 1, n : 2 * n] = s2
        rhs = torch.cat([-s1 * g[:, 0], -s2 * g[:, 1], B.new_zeros(N, 2)], dim=-1)
        w = torch.linalg.solve(A, rhs)
        v1, v2 = s1 * w[:, :n], s2 * w[:, n : 2 * n]
        # dL = v₁ᵀ dB x₂ − v₂ᵀ dBᵀ x₁  ⇒  ∇_B L = v₁ x₂ᵀ − x₁ v₂ᵀ
        gB = v1.unsqueeze(-1) * x[:, 1].unsqueeze(-2) - x[:, 0].unsqueeze(-1) * v2.unsqueeze(-2)
        return gB.to(grad.dtype), None


def qre_implicit(B: Tensor, x: Tensor) -> Tensor:
    """Attach the implicit-function gradient of the QRE map to a solved profile.

    Returns ``x`` (cast to B's dtype) as a function of ``B``: its backward solves, per game, the
    transposed KKT system Jᵀ v = −(g₁, g₂, 0, 0) (J the Jacobian of the KKT conditions in
    (x₁, x₂, λ₁, λ₂)) and returns ∇_B = v₁ x₂ᵀ − x₁ v₂ᵀ. Exact only if ``x`` is the QRE of ``B``
    (solve it with :func:`solve_qre`).

    Args:
        B: (N, n, n) payoff matrices (with a graph).
        x: (N, 2, n) their QREs.
    """
    _check_games(B, "qre_implicit", batched=True)
    _check_profile(B, x, "qre_implicit")
    if x.shape[0] != B.shape[0]:
        raise ValueError(f"qre_implicit: {x.shape[0]} profiles for {B.shape[0]} games")
    if bool((x < 0).any()):
        raise ValueError(
            "qre_implicit: x must be a point of the simplices (negative entries); solve it with solve_qre"
        )
    return _QREImplicit.apply(B, x)


def qre(B: Tensor, *, tol: float = 1e-13, max_iter: int = 100) -> Tensor:
    """The QRE x*(B) as a differentiable function of the payoff matrices (the Payoff-Net layer).

    Forward: :func:`solve_qre` in float64 (raises :class:`QREConvergenceError` on failure).
    Backward: implicit differentiation of the KKT system (:func:`qre_implicit`), one
    (2n + 2)-dimensional linear solve per game; no graph is kept through the Newton iterations.

    Args:
        B: (N, n, n) payoff matrices (any float dtype; the result has the same dtype).

    Returns:
        x*: (N, 2, n).
    """
    sol = solve_qre(B, tol=tol, max_iter=max_iter, throw=True)
    return qre_implicit(B, sol.x)
