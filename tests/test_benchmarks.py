"""Smoke tests of benchmarks/epoch_time.py and benchmarks/gpu.sh (tiny CPU settings, subprocesses).

Both scripts run once, concurrently (one thread each), in a module fixture: epoch_time.py directly
with ``--reduced --batch 2`` for SVHN and CIFAR-10 × (fpn, jacobian, explicit), and
``gpu.sh --cpu-smoke`` (the same through the GPU script, the MNIST benchmarks skipped).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("svhn", "cifar10")
VARIANTS = ("fpn", "jacobian", "explicit")
TIMEOUT = 240


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils timeout")
    tmp = tmp_path_factory.mktemp("benchmarks")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    direct_json = tmp / "epoch_time.json"
    args = ["--reduced", "--device", "cpu", "--batch", "2", "--models", ",".join(MODELS)]
    args += ["--variants", ",".join(VARIANTS), "--json", str(direct_json)]
    direct = subprocess.Popen(
        [sys.executable, "benchmarks/epoch_time.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = tmp / "gpu-out"
    smoke_env = {
        **env,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "GPU_SH_SKIP": "backward_modes memory_depth epoch_mnist",  # other scripts, tested elsewhere
    }
    smoke = subprocess.Popen(
        ["bash", "benchmarks/gpu.sh", "--cpu-smoke"],
        cwd=ROOT,
        env=smoke_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        direct_log, _ = direct.communicate(timeout=TIMEOUT)
        smoke_log, _ = smoke.communicate(timeout=TIMEOUT)
    finally:
        for proc in (direct, smoke):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return {
        "direct": (direct.returncode, direct_log, direct_json),
        "smoke": (smoke.returncode, smoke_log, out),
    }


def check_rows(rows: list[dict[str, Any]]) -> None:
    got = {(r["model"], r["variant"]): r for r in rows}
    assert set(got) == {(m, v) for m in MODELS for v in VARIANTS}
    for (model, variant), r in got.items():
        assert r["median_step_s"] > 0 and r["s_per_epoch_extrapolated"] > 0, (model, variant)
        assert r["timed_steps"] >= 1 and r["steps_per_epoch"] > 0
        assert r["ratio_vs_jfb"] > 0
        if variant == "fpn":
            assert r["ratio_vs_jfb"] == 1.0 and r["jacobian_products_per_step"] == 0
        if variant == "jacobian":  # IFT with CG: Jacobian products in the backward pass
            assert r["jacobian_products_per_step"] > 0 and r["cg"]["max_iter"] == 3
            assert r["paper_ratio_vs_jfb"] > 1
        if variant == "explicit":
            assert r["mean_forward_depth"] is None and r["jacobian_products_per_step"] is None
        else:
            assert 1 <= r["mean_forward_depth"] <= r["max_iter"] == 3
    assert got["cifar10", "fpn"]["augment"] == "cifar10" and got["svhn", "fpn"]["augment"] == "none"
    assert got["cifar10", "jacobian"]["tol"] == 1e-4 and got["cifar10", "fpn"]["tol"] == 0.1
    assert got["cifar10", "fpn"]["epoch_samples"] == 50_000 and got["svhn", "fpn"]["epoch_samples"] == 73_257


def test_epoch_time_reduced(runs: dict[str, Any]) -> None:
    rc, log, path = runs["direct"]
    assert rc == 0, log
    data = json.loads(path.read_text())
    assert data["synthetic_data"] and data["extrapolated"]
    assert data["args"]["batch"] == 2 and data["env"]["device"] == "cpu"
    check_rows(data["rows"])
    assert "SYNTHETIC" in log and "EXTRAPOLATED" in log
    assert "| cifar10 | Jacobian-based |" in log


def test_gpu_sh_cpu_smoke(runs: dict[str, Any]) -> None:
    rc, log, out = runs["smoke"]
    assert rc == 0, log
    data = json.loads((out / "epoch_time.json").read_text())
    check_rows(data["rows"])
    assert {r["step"] for r in data["rows"]} == {"epoch_svhn", "epoch_cifar10"}
    files = {p.name for p in out.iterdir()}
    assert {"summary.txt", "gpu.log", "epoch_time.json", "raw.tar.gz"} <= files
    assert len(files) <= 8  # what the GPU machine's $OUT returns
    with tarfile.open(out / "raw.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"raw/epoch_svhn.json", "raw/epoch_cifar10.log", "raw/env.txt"} <= names
    summary = (out / "summary.txt").read_text()
    assert "epoch_svhn: ok" in summary and "epoch_cifar10: ok" in summary
    assert "backward_modes: skipped" in summary
    assert "| cifar10 | Jacobian-based |" in summary


def test_gpu_sh_rejects_unknown_argument() -> None:
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--bogus"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "unknown argument" in proc.stderr
