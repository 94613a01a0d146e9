"""The one fixed-point loop, shared by every solver, forward and adjoint.

Per-sample stopping: a sample whose residual reached the tolerance is frozen (its value and
residual are final) and is no longer iterated. When the operator does not couple samples and its
batch arguments are known, T is evaluated on the active rows only; when it couples them (BatchNorm
with batch statistics) or is an opaque closure, T is evaluated on the whole batch, frozen rows held
at their final value, and only the active rows are updated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._solution import NonFiniteError, Status
from .solvers import Solver


@dataclass
class RawSolve:
    """Plain result of :func:`solve` (no gradient attached)."""

    value: Tensor  # (B, ...) u*
    iterations: Tensor  # (B,) evaluations of T per sample
    residual: Tensor  # (B,)
    converged: Tensor  # (B,) bool
    trace: Tensor | None  # (K, B)
    evaluations: int
    carrier: tuple[Tensor, Tensor] | None = None  # (u, T(u)) with a graph, u equal to value
    last_eval: Tensor | None = None  # (B, ...) T(u_{k_b - 1}) at each sample's last evaluation (record)

    @property
    def status(self) -> Status:
        return Status.CONVERGED if bool(self.converged.all()) else Status.MAX_ITER


def check_image(z: Tensor, fz: Any, what: str = "T(z0)", ref: str = "z0") -> None:
    """T must map the latent space to itself: a tensor of the same shape, dtype and device as ``z``.

    Args:
        z: the iterate T was applied to (``ref`` names it in the message).
        fz: what T returned.
        what: the evaluation, for the message (``"T(z0)"``, ``"T at evaluation 3"``).

    Raises:
        TypeError: ``fz`` is not a tensor.
        ValueError: its shape, dtype or device differ from those of ``z``.
    """
    if not isinstance(fz, Tensor):
        raise TypeError(
            f"{what} returned {type(fz).__name__}, expected a Tensor like {ref}; the operator must "
            "return the next latent iterate as one tensor"
        )
    problems = []
    if fz.shape != z.shape:
        problems.append(f"shape {tuple(fz.shape)} vs {ref} {tuple(z.shape)}")
    if fz.dtype != z.dtype:
        problems.append(f"dtype {fz.dtype} vs {ref} {z.dtype}")
    if fz.device != z.device:
        problems.append(f"device {fz.device} vs {ref} {z.device}")
    if problems:
        raise ValueError(
            f"{what} does not live in the space of {ref}: " + "; ".join(problems) + ". "
            "The operator must return the next latent iterate, shaped, typed and placed like its input "
            "at every evaluation."
        )


def check_inputs(z0: Tensor, args: Sequence[Any]) -> None:
    """The checks on z0 and the batch arguments that every solve makes before evaluating T.

    Raises:
        TypeError: z0 is not a floating-point (or complex) tensor.
        ValueError: z0 has no batch dimension or an empty batch, or a tensor in ``args`` does not
            have z0's batch size B as its first dimension.
    """
    if not isinstance(z0, Tensor):
        raise TypeError(f"z0 must be a torch.Tensor, got {type(z0).__name__}")
    if z0.dim() == 0:
        raise ValueError("z0 must have a batch dimension first, got a 0-dimensional tensor")
    batch = z0.shape[0]
    if batch == 0:
        raise ValueError(f"z0 has an empty batch (shape {tuple(z0.shape)}); pass at least one sample")
    if not (z0.is_floating_point() or z0.is_complex()):
        raise TypeError(
            f"z0 has dtype {z0.dtype}; the iterates u_k live in z0's dtype and need a floating-point "
            "tensor: pass z0.float() (or the dtype of the operator's parameters)"
        )
    for i, a in enumerate(args):
        if not isinstance(a, Tensor):
            continue  # non-tensors are passed to T as they are
        size = a.shape[0] if a.dim() > 0 else None
        if size != batch:
            got = "a 0-dimensional tensor" if size is None else f"batch size {size} (shape {tuple(a.shape)})"
            raise ValueError(
                f"args[{i}] (input {i} after z0) has {got}, but z0 has batch size {batch}: every "
                "tensor passed after z0 is batch-first and follows its sample through the solve, so it "
                f"is never broadcast. Pass it with batch size {batch} (e.g. x.expand({batch}, ...)), or "
                "capture a shared tensor in the operator's closure instead"
            )


def _rows(x: Any, rows: Tensor) -> Any:
    # advanced indexing keeps the memory format (channels_last), index_select does not
    return x[rows] if isinstance(x, Tensor) else x


def _put(buf: Tensor, rows: Tensor, values: Tensor) -> Tensor:
    """buf[rows] = values; out of place when a graph is recorded (the Unrolled backward)."""
    if torch.is_grad_enabled() and (buf.requires_grad or values.requires_grad):
        return buf.index_copy(0, rows, values)
    return buf.index_copy_(0, rows, values)


def solve(
    f: Callable[..., Tensor],
    z0: Tensor,
    solver: Solver,
    *,
    args: Sequence[Any] = (),
    full_batch: bool = True,
    trace: bool = False,
    what: str = "T",
    carry: bool = False,
    carry_input_grad: bool = False,
    record: bool = False,
) -> RawSolve:
    """Iterate u ← solver.update(u, T(u)) from z0, per sample, until the tolerance or the cap.

    Args:
        f: T, called as ``f(z, *args)``; returns a tensor like ``z``.
        z0: (B, ...) starting latent.
        solver: a :class:`fpnets.solvers.Solver` configuration.
        args: batch-first tensors that ``f`` takes after ``z`` (non-tensors are passed as they are).
        full_batch: evaluate T on the whole batch every time (needed when T couples samples, or when
            ``f`` is a closure whose batch cannot be sliced); otherwise only on the active rows.
        trace: record the residual of every sample after every evaluation.
        what: name of the map in error messages.
        carry: with ``full_batch``, evaluate T with an autograd graph (of that one application,
            on a detached copy of its input) and return the last one as ``carrier``: it is T(u*)
            for the whole batch, so a backward mode needs no extra application of T.
        carry_input_grad: the carrier's input requires grad (for modes that need ∂T/∂u).
        record: keep, for each sample b, T(u_{k_b − 1}), the output of its last evaluation (the one
            whose residual stopped it), as ``last_eval``; under grad mode it carries the graph of
            every iteration (the Unrolled backward routes the gradient of u* into it).

    Apart from ``carry``, the autograd mode is the caller's: under ``torch.no_grad()`` this builds
    no graph.

    Raises:
        TypeError: z0 is not a floating-point tensor, or T returns something other than a tensor.
        ValueError: z0 has no batch, a tensor in ``args`` has another batch size than z0, or T returns
            a tensor of another shape, dtype or device than its input (checked at every evaluation).
        NonFiniteError: T produced a NaN or an Inf.
    """
    check_inputs(z0, args)
    batch = z0.shape[0]
    device = z0.device
    carry = carry and full_batch
    carrier: tuple[Tensor, Tensor] | None = None

    def full(u: Tensor) -> Tensor:
        nonlocal carrier
        if not carry:
            return f(u, *args)
        u_in = u.detach().clone().requires_grad_(carry_input_grad)
        with torch.enable_grad():
            y = f(u_in, *args)
        if not isinstance(y, Tensor):
            return y  # check_image reports it
        carrier = (u_in, y)
        return y.detach()

    fz = full(z0)
    check_image(z0, fz, f"{what}(z0)")
    evaluations = 1
    tol = solver.tol
    r = solver.residual(z0, fz)  # (B,)

    out_z = z0.clone() if not z0.requires_grad else z0  # (B, ...) final values land here
    out_r = r.detach().clone()
    out_fz = fz.clone() if record else None  # (B, ...) T at each sample's last evaluation
    iterations = torch.full((batch,), solver.max_iter, dtype=torch.long, device=device)
    converged = torch.zeros(batch, dtype=torch.bool, device=device)
    rows = torch.arange(batch, device=device)  # original index of each active row
    z, r_act, act_args = z0, r, list(args)
    state = solver.init(z0, fz)
    history: list[Tensor] = []
    current_r = out_r.clone() if trace else None
    k = 1  # evaluations of T so far for every active sample
    while True:
        finite, any_done = torch.stack((torch.isfinite(r_act).all(), (r_act <= tol).any())).tolist()
        if not finite:
            bad = rows[~torch.isfinite(r_act)].tolist()
            raise NonFiniteError(
                f"{what} produced a NaN or Inf at evaluation {k} (samples {bad[:10]}"
                f"{' ...' if len(bad) > 10 else ''}); check the input for NaN/Inf, lower the "
                "learning rate, or make the operator contractive"
            )
        if trace:
            assert current_r is not None
            current_r.index_copy_(0, rows, r_act.detach())
            history.append(current_r.clone())
        last = k >= solver.max_iter
        if any_done or last:
            done = torch.ones_like(r_act, dtype=torch.bool) if last else r_act <= tol
            done_rows = rows[done]
            out_z = _put(out_z, done_rows, z[done])
            if out_fz is not None and k > 1:  # after evaluation 1, out_fz already holds T(z0)
                out_fz = _put(out_fz, done_rows, fz[done])
            out_r.index_copy_(0, done_rows, r_act.detach()[done])
            converged.index_copy_(0, done_rows, (r_act <= tol)[done])
            iterations.index_copy_(0, done_rows, torch.full_like(done_rows, k))
            if last or bool(done.all()):
                break
            keep = ~done
            rows = rows[keep]
            z, fz, r_act = z[keep], fz[keep], r_act[keep]
            state = tuple(s[keep] if isinstance(s, Tensor) else s for s in state)
            if not full_batch:
                act_args = [_rows(a, keep) for a in act_args]
        z, state = solver.update(z, fz, state, k)
        k += 1
        if not full_batch:
            fz = f(z, *act_args)
            check_image(z, fz, f"{what} at evaluation {k}", ref="its input")
        elif rows.numel() == batch:
            fz = full(z)
            check_image(z, fz, f"{what} at evaluation {k}", ref="its input")
        else:  # frozen rows held at their final values
            u_all = _put(out_z, rows, z)
            fz = full(u_all)
            check_image(u_all, fz, f"{what} at evaluation {k}", ref="its input")
            fz = fz[rows]
        evaluations += 1
        r_act = solver.residual(z, fz)
    return RawSolve(
        value=out_z,
        iterations=iterations,
        residual=out_r,
        converged=converged,
        trace=torch.stack(history) if trace else None,
        evaluations=evaluations,
        carrier=carrier,
        last_eval=out_fz,
    )
