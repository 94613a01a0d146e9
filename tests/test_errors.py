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


# --------------------------------------------------------------------------------------------------
# Input checks: z0's dtype, the batch size of the inputs, what T returns at every evaluation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_or_boolean_z0_is_refused(dtype: torch.dtype) -> None:
    z0 = torch.zeros(2, 3, dtype=dtype)
    with pytest.raises(TypeError, match=rf"z0 has dtype {dtype}; .*floating-point.*z0\.float\(\)"):
        fpnets.fixed_point(lambda z: z, z0)
    with pytest.raises(TypeError, match=rf"z0 has dtype {dtype}"):
        fpnets.fixed_point(lambda z, x: z + x, z0, torch.ones(2, 3))


def _changes_at(evaluation: int, change):
    """0.5 z + 1 until the given evaluation, then change(z); counts its calls."""
    calls = {"n": 0}

    def f(z: torch.Tensor, *args: torch.Tensor):
        calls["n"] += 1
        out = 0.5 * z + 1.0
        return change(out) if calls["n"] >= evaluation else out

    return f


MID_SOLVE = {
    "shape": (
        lambda y: torch.cat([y, y[:, :1]], dim=1),
        ValueError,
        r"shape \((\d), 4\) vs its input \(\1, 3\)",
    ),
    "broadcastable shape": (lambda y: y[:, :1], ValueError, r"shape \((\d), 1\) vs its input \(\1, 3\)"),
    "dtype": (lambda y: y.double(), ValueError, r"dtype torch.float64 vs its input torch.float32"),
    "device": (lambda y: torch.empty_like(y, device="meta"), ValueError, r"device meta vs its input cpu"),
    "non-tensor": (lambda y: (y,), TypeError, r"returned tuple, expected a Tensor like its input"),
}


@pytest.mark.parametrize("case", sorted(MID_SOLVE))
@pytest.mark.parametrize("path", ["closure", "per-sample", "coupled"])
def test_operator_changing_its_output_mid_solve_is_named(case: str, path: str) -> None:
    change, error, pattern = MID_SOLVE[case]
    f = _changes_at(3, change)
    z0 = torch.zeros(3, 3)
    solver = Picard(tol=1e-6, max_iter=50)
    with pytest.raises(error, match=r"T at evaluation 3 .*" + pattern):
        if path == "closure":
            fpnets.fixed_point(f, z0, solver=solver)
        else:  # sample 0 starts at its fixed point 2: it is frozen, so later evaluations see fewer rows
            z0[0] = 2.0
            fpnets.fixed_point(f, z0, torch.zeros(3, 1), solver=solver, coupled=path == "coupled")


def test_operator_changing_its_output_mid_solve_names_the_evaluation() -> None:
    f = _changes_at(5, lambda y: y[:, :1])
    with pytest.raises(ValueError, match=r"T at evaluation 5 does not live in the space of its input"):
        fpnets.fixed_point(f, torch.zeros(2, 3), solver=Anderson(tol=1e-9, max_iter=50))
    # the same operator under the graph-recording (Unrolled) solve
    f = _changes_at(2, lambda y: y.double())
    with pytest.raises(ValueError, match=r"T at evaluation 2 .*dtype torch.float64"):
        fpnets.fixed_point(f, torch.zeros(2, 3, requires_grad=True), backward=fpnets.Unrolled())


@pytest.mark.parametrize("coupled", [False, True])
def test_batch_one_input_beside_a_larger_batch_is_refused(coupled: bool) -> None:
    z0 = torch.zeros(4, 3)
    with pytest.raises(
        ValueError, match=r"args\[0\] .*has batch size 1 \(shape \(1, 3\)\), but z0 has batch size 4"
    ):
        fpnets.fixed_point(lambda z, x: 0.5 * z + x, z0, torch.ones(1, 3), coupled=coupled)
    with pytest.raises(
        ValueError, match=r"args\[1\] .*batch size 2 .*z0 has batch size 4.*x\.expand\(4, \.\.\.\)"
    ):
        fpnets.fixed_point(
            lambda z, x, y: 0.5 * z + x + y, z0, torch.ones(4, 3), torch.ones(2, 3), coupled=coupled
        )
    with pytest.raises(ValueError, match=r"args\[0\] .*a 0-dimensional tensor, but z0 has batch size 4"):
        fpnets.fixed_point(lambda z, s: s * z, z0, torch.tensor(0.5), coupled=coupled)
    # non-tensor arguments pass through unchecked; a batch-B input is accepted
    sol = fpnets.fixed_point(lambda z, x, s: s * z + x, z0, torch.ones(4, 3), 0.5, coupled=coupled)
    torch.testing.assert_close(sol.value, torch.full((4, 3), 2.0), rtol=0, atol=1e-3)


def test_layer_with_a_z0_of_another_batch_than_its_input() -> None:
    class Op(torch.nn.Module):
        def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * z + x

    layer = fpnets.FixedPointLayer(Op())
    with pytest.raises(ValueError, match=r"args\[0\] .*batch size 1 .*z0 has batch size 5"):
        layer(torch.ones(1, 3), z0=torch.zeros(5, 3))
