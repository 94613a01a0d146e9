"""Every failure path of the core: clear errors that name the problem."""

from __future__ import annotations

import pytest
import torch

import fpnets
from fpnets import IFT, Anderson, CGNormal, Neumann, Picard, make_backward, make_solver


def _slow(z: torch.Tensor) -> torch.Tensor:
    return 0.99 * z + 1.0


def test_nonconvergence_warns_once_with_residual_and_cap() -> None:
    z0 = torch.zeros(3, 4)
    with pytest.warns(
        fpnets.ConvergenceWarning, match=r"3 of 3 samples.*max_iter=5.*largest residual"
    ) as rec:
        sol = fpnets.fixed_point(_slow, z0, solver=Picard(tol=1e-6, max_iter=5))
    assert len(rec) == 1
    assert not bool(sol.converged.any())
    assert sol.status is fpnets.Status.MAX_ITER
    assert sol.iterations.tolist() == [5, 5, 5]
    assert "did not converge" in sol.message


def test_nonconvergence_silent_when_asked() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = fpnets.fixed_point(_slow, torch.zeros(2, 2), solver=Picard(tol=1e-6, max_iter=3), warn=False)
    assert not bool(sol.converged.any())


def test_nonconvergence_raises_with_throw() -> None:
    with pytest.raises(fpnets.ConvergenceError, match=r"tol=1e-06 after max_iter=4"):
        fpnets.fixed_point(_slow, torch.zeros(2, 2), solver=Picard(tol=1e-6, max_iter=4), throw=True)


def test_nan_stops_the_solve_naming_the_evaluation() -> None:
    calls = {"n": 0}

    def f(z: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = 0.5 * z + 1.0
        if calls["n"] == 3:
            out = out.clone()
            out[1, 0] = float("nan")
        return out

    with pytest.raises(fpnets.NonFiniteError, match=r"NaN or Inf at evaluation 3 \(samples \[1\]"):
        fpnets.fixed_point(f, torch.zeros(2, 3), solver=Picard(tol=1e-12, max_iter=50))


def test_inf_in_input_is_reported() -> None:
    x = torch.ones(2, 3)
    x[0, 0] = float("inf")
    with pytest.raises(fpnets.NonFiniteError, match=r"evaluation 1 \(samples \[0\]"):
        fpnets.fixed_point(lambda z, x: 0.5 * z + x, torch.zeros(2, 3), x)


def test_shape_mismatch_names_both() -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 4\) vs z0 \(2, 3\)"):
        fpnets.fixed_point(lambda z: torch.zeros(2, 4), torch.zeros(2, 3))


def test_dtype_mismatch_names_both() -> None:
    with pytest.raises(ValueError, match=r"dtype torch.float64 vs z0 torch.float32"):
        fpnets.fixed_point(lambda z: z.double(), torch.zeros(2, 3))


def test_device_mismatch_names_both() -> None:
    with pytest.raises(ValueError, match=r"device meta vs z0 cpu"):
        fpnets.fixed_point(lambda z: torch.empty(2, 3, device="meta"), torch.zeros(2, 3))


def test_bad_z0() -> None:
    with pytest.raises(ValueError, match="batch dimension"):
        fpnets.fixed_point(lambda z: z, torch.tensor(1.0))
    with pytest.raises(ValueError, match="empty batch"):
        fpnets.fixed_point(lambda z: z, torch.zeros(0, 3))
    with pytest.raises(TypeError, match=r"z0 must be a torch\.Tensor"):
        fpnets.fixed_point(lambda z: z, [1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"returned list"):
        fpnets.fixed_point(lambda z: [z], torch.zeros(1, 2))


def test_wrong_solver_and_backward_objects() -> None:
    with pytest.raises(TypeError, match="solver must be a fpnets solver"):
        fpnets.fixed_point(lambda z: z, torch.zeros(1, 2), solver="anderson")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="backward must be a fpnets backward mode"):
        fpnets.fixed_point(lambda z: z, torch.zeros(1, 2), backward="jfb")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="IFT: solver must be"):
        IFT(solver="cg")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Picard(tol=-1), "tol must be a number >= 0"),
        (lambda: Picard(max_iter=0), "max_iter must be a positive integer"),
        (lambda: Picard(max_iter=2.5), "max_iter must be a positive integer"),
        (lambda: Picard(damping=0.0), r"damping must lie in \(0, 1\]"),
        (lambda: Picard(damping=1.5), r"damping must lie in \(0, 1\]"),
        (lambda: Anderson(m=0), "m must be a positive integer"),
        (lambda: Anderson(beta=2.0), r"beta must lie in \(0, 1\]"),
        (lambda: Anderson(ridge=-1.0), "ridge must be a number >= 0"),
        (lambda: Neumann(-1), "k must be an integer >= 0"),
        (lambda: CGNormal(max_iter=0), "max_iter must be a positive integer"),
    ],
)
def test_invalid_configuration(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_registry_builds_and_rejects() -> None:
    assert make_solver("anderson", tol=1e-3, m=3) == Anderson(tol=1e-3, m=3)
    assert make_solver("Picard", max_iter=7) == Picard(max_iter=7)
    assert make_backward("neumann", k=2) == Neumann(2)
    ift = make_backward("ift", solver={"name": "cg", "max_iter": 9})
    assert isinstance(ift, IFT) and ift.solver == CGNormal(max_iter=9)
    assert make_backward("ift", solver="picard").solver == Picard()
    with pytest.raises(ValueError, match=r"unknown solver 'newton'; valid names: anderson, picard"):
        make_solver("newton")
    with pytest.raises(
        ValueError, match=r"unknown backward mode 'bptt'; valid names: ift, jfb, neumann, unrolled"
    ):
        make_backward("bptt")
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) 'memory' for solver Anderson; valid options: .*m,"
    ):
        make_solver("anderson", memory=5)
    with pytest.raises(ValueError, match=r"unknown adjoint solver 'lu'; valid names: anderson, cg, picard"):
        make_backward("ift", solver={"name": "lu"})
    with pytest.raises(ValueError, match="the IFT solver needs a 'name'"):
        make_backward("ift", solver={"tol": 1e-3})
