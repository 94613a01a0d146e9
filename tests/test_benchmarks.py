"""Smoke tests of benchmarks/epoch_time.py and benchmarks/gpu.sh (tiny CPU settings, subprocesses),
and of benchmarks/common.py's StepProbe (the instrumentation around fpnets.train.train_step).

Both scripts run once, concurrently (one thread each), in a module fixture: epoch_time.py directly
with ``--reduced --batch 2`` for SVHN and CIFAR-10 × (fpn, jacobian, explicit), and
``gpu.sh --cpu-smoke`` (the same through the GPU script, the MNIST benchmarks skipped).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fpnets.train import train_step

from conftest import load_benchmark

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
        "GPU_SH_SKIP": "backward_modes memory_depth epoch_mnist vs_reference vs_reference_epoch",  # tested elsewhere
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


# ----------------------------------------------------------------------------------------------
# StepProbe: phases of one train_step


def _common() -> Any:
    return load_benchmark("common", "benchmarks_common")


def _mlp() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    return model, torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])


def test_step_probe_splits_train_step_at_its_phases() -> None:
    common = _common()
    model, x, y = _mlp()
    twin = copy.deepcopy(model)
    with common.SavedTensors() as plain:  # the forward pass and the loss, by hand, on an identical copy
        loss_ref = F.cross_entropy(twin(x), y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with common.CallCounter(model[2]) as calls:
        with common.StepProbe(F.cross_entropy, opt, counter=calls) as probe:
            out = train_step(model, x, y, probe.loss, opt)
        assert (calls.calls, calls.by_phase, calls.backprops) == (1, {"forward": 1}, 1)
    assert probe.forward.total() == plain.total() > 0 and probe.held == plain.live() > 0
    assert probe.nodes == common.graph_nodes(loss_ref) > 0
    assert (probe.fwd_calls, probe.fwd_samples, probe.fwd_graph_calls) == (1, 5, 1)
    assert calls.phase == "backward"
    assert probe.backward.total() == 0  # a plain backward pass saves nothing
    assert probe.peak is None  # CPU
    assert torch.equal(out.loss, loss_ref.detach())
    # the windows and the optimizer hook are gone: later forward passes and steps are not recorded
    before = probe.forward.total()
    train_step(model, torch.randn(7, 4), y.repeat(2)[:7], F.cross_entropy, opt)  # new input storage
    assert probe.forward.total() == before and probe.backward.total() == 0


def test_step_probe_closes_its_windows_on_error() -> None:
    common = _common()
    model, x, y = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def broken(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise ValueError("bad loss")

    with pytest.raises(ValueError, match="bad loss"), common.StepProbe(broken, opt) as probe:
        train_step(model, x, y, probe.loss, opt)
    before = probe.forward.total()
    model(torch.randn(7, 4)).sum().backward()  # new input storage: it would be recorded
    assert probe.forward.total() == before
    with pytest.raises(RuntimeError, match="loss_fn of one train_step inside `with probe:`"):
        common.StepProbe(F.cross_entropy, opt).loss(model(x), y)


# ----------------------------------------------------------------------------------------------
# benchmarks/vs_reference.py: the reference implementation's own code beside fpnets (real data)

SHARED = ROOT.parent / "shared"
PEER = SHARED / "peers" / "jfb-reference"
MNIST = SHARED / "data" / "mnist"


@pytest.mark.skipif(
    not (PEER / "Networks.py").is_file() or not MNIST.is_dir(),
    reason="needs ../shared/peers/jfb-reference and ../shared/data/mnist",
)
def test_vs_reference_smoke(tmp_path: Path) -> None:
    out = tmp_path / "vs.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    args = ["--data-dir", str(MNIST), "--peer-dir", str(PEER), "--network", "both", "--steps", "3"]
    args += ["--rounds", "1", "--warmup", "1", "--limit", "200", "--eval", "--epoch", "--threads", "1"]
    args += ["--device", "cpu", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "benchmarks/vs_reference.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert "vs_reference.py" in data["command"] and "--steps 3" in data["command"]
    assert len(data["commit"].split("+")[0]) == 40
    assert data["hardware"]["cores"] == os.cpu_count() and data["hardware"]["threads"] == 1
    assert data["torch"] == torch.__version__
    for key in ("load_start", "load_end"):
        assert len(data[key]["loadavg"]) == 3 and "load average" in data[key]["uptime"]
    busy = data["load_start"]["loadavg"][0] > 0.5 * os.cpu_count()
    assert busy == any("at the start" in w for w in data["warnings"])
    assert data["reference"]["eps"] == 0.1 and data["reference"]["max_depth"] == 50
    expected = {"paper": (54_352, 0.5, 2), "published": (35_856, 0.9, 1)}
    assert set(data["networks"]) == set(expected)
    for name, (params, gamma, blocks) in expected.items():
        net = data["networks"][name]
        assert net["parameters"] == {"reference": params, "fpnets": params}, name
        assert (net["network"]["gamma"], net["network"]["lat_layers"]) == (gamma, blocks)
        assert f"model.gamma={gamma}" in net["fpnets_overrides"] and net["checks"] == []
        assert net["same_initial_weights"] is True
        steps = net["steps"]
        assert steps["total_steps_trained"] == 4 and steps["order"] == [["reference", "fpnets"]]
        for side in ("reference", "fpnets"):
            s = steps[side]
            assert s["timed_steps"] == 3 and len(s["ms_all"]) == 1 and len(s["ms_all"][0]) == 3
            assert s["loss_finite"] and 0 < s["train_loss"] < 10, (name, side)
            assert 1 <= s["iters_per_step_batch_max"] <= 50 and 0 <= s["train_acc"] <= 1
            assert s["median_ms"] > 0
            e = net["eval"][side]
            assert e["n"] == 200 and 0 <= e["acc"] <= 1 and e["median_seconds"] > 0
            assert 1 <= e["iters_batch_max"] <= 50
            ep = net["epoch"][side]
            assert ep["train_images"] == 200 and ep["steps"] == 2 and ep["loss_finite"]
            assert ep["total_s"] >= ep["train_s"] > 0 and 0 <= ep["test_acc"] <= 1
        assert (
            1 <= steps["fpnets"]["iters_per_step_sample_mean"] <= steps["fpnets"]["iters_per_step_batch_max"]
        )
        assert steps["ratio_median_ms"] == pytest.approx(
            steps["reference"]["median_ms"] / steps["fpnets"]["median_ms"]
        )
        assert net["eval"]["reference"]["batch"] == 400 and net["eval"]["fpnets"]["batch"] == 1000
        assert net["epoch"]["fpnets"]["overrides"][:2] == [
            f"model.latent_blocks={blocks}",
            f"model.gamma={gamma}",
        ]
    assert "| ms/step, median of all timed steps |" in proc.stdout
    assert "| one epoch, end to end | reference | fpnets train |" in proc.stdout
