"""Smoke test of benchmarks/ct_backward.py: the CT F-FPN's training step with JFB, IFT and the unrolled
network at several depths, on a tiny generated geometry (``--quick``: 32×32, 12 angles, 4 channels,
batch 4, depths 2, 4, 8; no real data needed).

Beyond "it runs and writes a row per method and depth", it checks the memory properties the
benchmark exists to show, which are deterministic (allocation sizes, not timings): the memory JFB
and IFT hold for the backward pass is the same at every depth, the unrolled network's grows
linearly in K, and so does its peak allocation while JFB's stays flat.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DEPTHS = (2, 4, 8)
METHODS = ("jfb", "ift", "unrolled")


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    """benchmarks/ct_backward.py as a module; the test process is left as it was afterwards."""
    folder = ROOT / "benchmarks"
    sys.path.insert(0, str(folder))  # the script imports its sibling ``common``
    had_common, threads = "common" in sys.modules, torch.get_num_threads()
    try:
        spec = importlib.util.spec_from_file_location("ct_backward_bench", folder / "ct_backward.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(folder))
        if not had_common:
            sys.modules.pop("common", None)
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def result(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ct_backward")
    out = tmp / "ct_backward.json"
    args = ["--quick", "--threads", "1", "--data-dir", str(tmp / "data"), "--json", str(out)]
    args += ["--adjoint-max-iter", "10"]  # the untrained network's adjoint misses 1e-6: cap it, for speed
    returned = bench.main(args)
    written = json.loads(out.read_text())
    assert written["rows"] == json.loads(json.dumps(returned["rows"], default=str))
    return written


def rows_of(result: dict[str, Any], method: str) -> list[dict[str, Any]]:
    return sorted((r for r in result["rows"] if r["method"] == method), key=lambda r: r["depth"])


def test_one_row_per_method_and_depth(result: dict[str, Any]) -> None:
    assert sorted((r["method"], r["depth"]) for r in result["rows"]) == sorted(
        (m, k) for m in METHODS for k in DEPTHS
    )
    for key in ("command", "commit", "hardware", "load", "table"):
        assert result[key]
    assert result["load"]["start"]["loadavg"] is not None and result["load"]["end"]["loadavg"] is not None
    assert result["hardware"]["threads"] == 1 and result["hardware"]["torch"]
    for r in result["rows"]:
        assert r["timed_steps"] == 2 and r["step_ms_median"] > 0
        assert r["epoch_steps"] == 500  # ceil(2000 shipped training images / batch 4)
        assert r["epoch_s_extrapolated"] == pytest.approx(r["epoch_steps"] * r["step_ms_median"] / 1e3)
    # one table line per row, in the markdown table printed on stdout
    assert len([line for line in result["table"].splitlines() if line.startswith("| ")]) == 1 + len(
        result["rows"]
    )


def test_depth_is_what_was_asked(result: dict[str, Any]) -> None:
    # tol = 0: the F-FPN's solve runs exactly K evaluations of T, plus one with a graph for the
    # backward mode; the unrolled network applies T exactly K times
    for method in ("jfb", "ift"):
        for r in rows_of(result, method):
            # the batch runs K evaluations; a sample stops earlier only at an exact float fixed point
            assert r["solve_evaluations"] == r["depth"] and 0 < r["mean_depth"] <= r["depth"]
            assert r["forward_T_calls"] == r["depth"] + 1 and r["forward_T_graph_calls"] == 1
            assert r["settings"]["model"] == "FFPN" and method.upper() in r["settings"]["backward"]
    for r in result["rows"]:  # max_p |u_K − u_{K−1}|_p of the instrumented forward: measured, finite
        assert 0 <= r["last_change_max"] < float("inf")
    for r in rows_of(result, "unrolled"):
        assert r["forward_T_calls"] == r["forward_T_graph_calls"] == r["depth"]
        assert r["settings"]["model"] == "UnrolledFFPN" and r["settings"]["steps"] == r["depth"]
    # the IFT adjoint solve is the one asked for (10 products at most, plus the final backprop)
    for r in rows_of(result, "ift"):
        assert "max_iter=10" in r["settings"]["backward"]
        assert 1 <= r["vjps_per_step"] <= 11
    for r in rows_of(result, "jfb") + rows_of(result, "unrolled"):
        assert r["vjps_per_step"] == 0


def test_jfb_and_ift_memory_flat_in_depth(result: dict[str, Any]) -> None:
    for method in ("jfb", "ift"):
        rows = rows_of(result, method)
        held = {r["held_bytes"] for r in rows}
        assert len(held) == 1, f"{method} holds {held} bytes at depths {DEPTHS}: must not depend on K"
        nodes = {r["graph_nodes"] for r in rows}
        assert len(nodes) == 1
    peaks = [r["peak_bytes"] for r in rows_of(result, "jfb")]
    assert max(peaks) <= 1.05 * min(peaks), f"JFB's peak allocation grows with depth: {peaks}"


def test_unrolled_memory_grows_linearly(result: dict[str, Any]) -> None:
    unrolled = rows_of(result, "unrolled")
    h = [r["held_bytes"] for r in unrolled]  # K = 2, 4, 8
    assert h[0] < h[1] < h[2]
    # linear in K: the step from 4 to 8 adds twice what the step from 2 to 4 added
    assert (h[2] - h[1]) / (h[1] - h[0]) == pytest.approx(2.0, rel=0.1)
    jfb = rows_of(result, "jfb")
    assert unrolled[-1]["held_bytes"] > 3 * jfb[-1]["held_bytes"]
    p = [r["peak_bytes"] for r in unrolled]
    assert p[2] > 2.5 * p[0], f"the unrolled network's peak allocation should grow with K: {p}"
    assert p[2] > 3 * jfb[-1]["peak_bytes"]


def test_bad_options_name_the_problem(bench: ModuleType, tmp_path: Path) -> None:
    base = ["--quick", "--threads", "1", "--data-dir", str(tmp_path), "--json", ""]
    with pytest.raises(SystemExit, match=r"model\.lipschitz must be one of"):
        bench.main([*base, "--lipschitz", "bogus"])
    with pytest.raises(SystemExit, match="--depths must be positive integers"):
        bench.main([*base, "--depths", "0,4"])
    with pytest.raises(SystemExit, match=r"unknown or no method\(s\) \['bfgs'\]"):
        bench.main([*base, "--methods", "jfb,bfgs"])
