"""The prepared GPU scripts in ``--cpu-smoke`` mode: benchmarks/gpu.sh (Table 2's MNIST step and the
reference code beside fpnets) and benchmarks/gpu_traffic.sh (parallel data generation into fpnets'
cache, training to a deadline, the mean-capacity baseline), plus the traffic configs' step limits.

Both scripts run once, concurrently, in a module fixture (one thread each). The parts that need the
real data (MNIST, the reference code, the TNTP networks in ../shared) are skipped where it is absent;
gpu.sh's SVHN/CIFAR-10 steps and the MNIST benchmarks are tested in tests/test_benchmarks.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fpnets.train import load_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
NETWORKS = DATA / "transportation-networks"
HAS_VS = (SHARED / "peers" / "jfb-reference" / "Networks.py").is_file() and (DATA / "mnist").is_dir()
HAS_EMA = (NETWORKS / "Eastern-Massachusetts").is_dir()
TIMEOUT = 600  # generous: the shared test machine pauses processes now and then
SMOKE_SIZES = {"n_train": 8, "n_val": 4, "n_test": 4}  # gpu_traffic.sh --cpu-smoke
needs_ema = pytest.mark.skipif(not HAS_EMA, reason="needs ../shared/data/transportation-networks")


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils timeout")
    tmp = tmp_path_factory.mktemp("gpu_scripts")
    gpu_out, traffic_out, cache = tmp / "gpu", tmp / "traffic", tmp / "cache"
    procs = {
        "gpu": subprocess.Popen(
            ["bash", "benchmarks/gpu.sh", "--cpu-smoke"],
            cwd=ROOT,
            env=_env(
                OUT=str(gpu_out),
                GPU_SH_SKIP="epoch_svhn epoch_cifar10 backward_modes memory_depth vs_reference_epoch",
                GPU_SH_BUDGET=str(TIMEOUT - 60),
                GPU_SH_STEP_SCALE="5",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    }
    if HAS_EMA:
        procs["traffic"] = subprocess.Popen(
            ["bash", "benchmarks/gpu_traffic.sh", "--cpu-smoke", "--data-root", str(DATA)],
            cwd=ROOT,
            env=_env(
                OUT=str(traffic_out),
                GPU_TRAFFIC_NETWORKS="ema",
                GPU_TRAFFIC_VARIANTS="averaged-wide",
                GPU_TRAFFIC_CACHE=str(cache),
                GPU_TRAFFIC_BUDGET=str(TIMEOUT - 60),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    logs: dict[str, tuple[int, str]] = {}
    try:
        for name, proc in procs.items():
            log, _ = proc.communicate(timeout=TIMEOUT)
            logs[name] = (proc.returncode, log)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return {"logs": logs, "gpu": gpu_out, "traffic": traffic_out, "cache": cache}


def _files(out: Path) -> set[str]:
    files = {p.name for p in out.iterdir()}
    assert len(files) <= 8, files  # what the device tool returns from $OUT
    return files


# ----------------------------------------------------------------------------------------------
# gpu.sh: Table 2 (MNIST step here) and the reference code beside fpnets


def test_gpu_sh_runs_table2_mnist_and_vs_reference(smoke: dict[str, Any]) -> None:
    rc, log = smoke["logs"]["gpu"]
    assert rc == 0, log
    out = smoke["gpu"]
    files = _files(out)
    assert {"summary.txt", "gpu.log", "epoch_time.json", "raw.tar.gz"} <= files
    rows = json.loads((out / "epoch_time.json").read_text())["rows"]
    assert {(r["step"], r["model"]) for r in rows} == {("epoch_mnist", "mnist")}
    got = {r["variant"]: r for r in rows}
    assert set(got) == {"fpn", "jacobian", "explicit"}
    assert got["fpn"]["epoch_samples"] == 60_000 and got["fpn"]["ratio_vs_jfb"] == 1.0
    assert got["fpn"]["jacobian_products_per_step"] == 0 < got["jacobian"]["jacobian_products_per_step"]
    assert got["jacobian"]["paper_ratio_vs_jfb"] == pytest.approx(28.4 / 17.6, rel=1e-2)
    summary = (out / "summary.txt").read_text()
    assert "epoch_mnist: ok" in summary and "| mnist | Jacobian-based |" in summary
    assert "epoch_svhn: skipped (GPU_SH_SKIP)" in summary
    if not HAS_VS:
        assert "vs_reference: skipped (no MNIST or reference code)" in summary
        assert "vs_reference.json" not in files
        return
    # the epoch step runs the same script with --epoch (tested in tests/test_benchmarks.py): skipped here
    assert "vs_reference: ok" in summary and "vs_reference_epoch: skipped (GPU_SH_SKIP)" in summary
    vs = json.loads((out / "vs_reference.json").read_text())
    assert set(vs) == {"vs_reference"}
    data = vs["vs_reference"]
    assert data["hardware"]["device"] == "cpu" and data["args"]["limit"] == 200
    assert "--peer-dir" in data["command"] and data["args"]["eval"] is True
    net = data["networks"]["paper"]
    assert net["same_initial_weights"] is True and net["checks"] == []
    assert net["parameters"] == {"reference": 54_352, "fpnets": 54_352}
    steps = net["steps"]
    assert steps["ratio_median_ms"] == pytest.approx(
        steps["reference"]["median_ms"] / steps["fpnets"]["median_ms"]
    )
    for side in ("reference", "fpnets"):
        assert steps[side]["loss_finite"] and 1 <= steps[side]["iters_per_step_batch_max"] <= 50
        assert net["eval"][side]["n"] == 200
    assert "| ms/step, median of all timed steps |" in summary
    with tarfile.open(out / "raw.tar.gz") as tar:
        assert {"raw/vs_reference.log", "raw/vs_reference.json"} <= set(tar.getnames())


# ----------------------------------------------------------------------------------------------
# gpu_traffic.sh


@needs_ema
def test_gpu_traffic_smoke_trains_on_certified_equilibria(smoke: dict[str, Any]) -> None:
    rc, log = smoke["logs"]["traffic"]
    assert rc == 0, log
    out = smoke["traffic"]
    assert {"summary.txt", "traffic.json", "traffic.log", "raw.tar.gz"} <= _files(out)
    result = json.loads((out / "traffic.json").read_text())
    assert result["mode"] == "cpu" and set(result["networks"]) == {"ema"}
    ema = result["networks"]["ema"]
    data = ema["data"]
    assert data["network"] == "EMA" and data["cached"] is False and data["paper_size"] is True
    assert {k: data[k] for k in SMOKE_SIZES} == SMOKE_SIZES and data["contexts"] == sum(SMOKE_SIZES.values())
    assert 0 <= data["max_gap"] <= data["target_gap"] == 1e-8
    assert data["train_sets"] == ["data.n_train=8", "data.n_val=4", "data.n_test=4"]
    assert ema["paper"] == {"relative_error": 4.7e-4, "trafix": 0.978}
    runs = ema["runs"]
    assert set(runs) == {"averaged-wide", "mean-capacity"}  # nfpn and explicit: GPU_TRAFFIC_VARIANTS
    for variant, run in runs.items():
        assert run["phase"] == "done" and run["sizes"] == SMOKE_SIZES, variant
        test = run["set_metrics"]["test"]
        assert (
            test["n"] == 4
            and math.isfinite(test["relative_error_total"])
            and test["relative_error_total"] > 0
        )
        assert 0 <= test["trafix"] <= 1 and test["target_gap_max"] <= 1e-8
        assert run["test"]["rel_error"] == pytest.approx(test["relative_error"], rel=1e-4)
    run = runs["averaged-wide"]
    assert run["device"] == "cpu" and run["parameters"] == 78_490
    assert 2 <= run["epochs"] <= 3 and 1 <= run["best_epoch"] <= run["epochs"]  # --max-epochs 3
    assert len(run["epoch_seconds"]) == run["epochs"] == len(run["val_rel_error"])
    best = run["val_rel_error"][run["best_epoch"] - 1]
    assert best == pytest.approx(min(run["val_rel_error"]))  # selected on the validation split
    assert run["set_metrics"]["test"]["iterations"]["max"] <= 10  # smoke: solver.max_iter=10
    assert runs["mean-capacity"]["parameters"] == 0
    summary = (out / "summary.txt").read_text()
    assert "gen_ema: ok" in summary and "train_ema_averaged-wide: ok" in summary
    assert "| ema | averaged-wide | 78,490 | 8/4/4 |" in summary
    with tarfile.open(out / "raw.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"raw/gen_ema.json", "raw/traffic_tool.py", "raw/runs/ema-averaged-wide/metrics.csv"} <= names
    assert not any("/checkpoints/" in n for n in names)


@needs_ema
def test_gpu_traffic_cache_is_the_trainers_own(smoke: dict[str, Any]) -> None:
    """The parallel generation wrote the data set `fpnets train` reads: the same contexts as the
    serial generator draws, flows that are equilibria to the certified gap."""
    import torch

    import fpnets.tasks.traffic.data as tdata
    from fpnets.tasks.traffic.assignment import relative_gap

    assert smoke["logs"]["traffic"][0] == 0
    sets = [f"data.{k}={v}" for k, v in SMOKE_SIZES.items()]
    sets.append(f"data.cache_dir={json.dumps(str(smoke['cache']))}")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cache was not found: build_dataset would generate")

    original, tdata.generate = tdata.generate, refuse
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            task_data = load_config("traffic-ema", sets).make_task().dataset(DATA)  # as the trainer reads it
            data = tdata.build_dataset(  # the same file in float64
                NETWORKS / "Eastern-Massachusetts",
                **SMOKE_SIZES,
                data_dir=smoke["cache"],
                dtype=torch.float64,
            )
    finally:
        tdata.generate = original
    assert data.path == task_data.path and data.params == task_data.params
    n = sum(SMOKE_SIZES.values())
    d = np.concatenate([s.context.numpy() for s in (data.train, data.val, data.test)])
    x = np.concatenate([s.flow.numpy() for s in (data.train, data.val, data.test)])
    np.testing.assert_array_equal(d, data.model.sample(n, seed=data.params.seed + 1))  # the serial draw
    gaps = relative_gap(data.network, data.model.costs(data.network, d), x)  # recomputed, not stored
    assert np.all(gaps <= 1e-8) and np.all(gaps >= -1e-12), gaps


@needs_ema
@pytest.mark.parametrize(("min_train", "cut"), [(1, (2, 2, 2)), (10, (4, 1, 1))])
def test_gpu_traffic_generation_cuts_to_a_solved_prefix(tmp_path: Path, min_train: int, cut: tuple) -> None:
    """Out of time, the generator keeps the longest solved prefix of the context stream (here the
    calibration rows only, 2 workers × 3 contexts) and cuts n_train; n_val and n_test stay unless
    fewer than n_val + n_test + min_train contexts were solved (then a fifth of them each)."""
    tool = tmp_path / "tool.py"
    subprocess.run(["bash", "benchmarks/gpu_traffic.sh", "--write-tool", str(tool)], cwd=ROOT, check=True)
    out, config = tmp_path / "gen.json", tmp_path / "sioux.toml"  # a small network, a config of its own
    config.write_text('[task]\nname = "traffic"\n\n[data]\nnetwork = "SiouxFalls"\n')
    sizes = ["--set", "data.n_train=10", "--set", "data.n_val=2", "--set", "data.n_test=2"]
    cmd = [sys.executable, str(tool), "gen", str(config), *sizes, "--data-dir", str(DATA)]
    cmd += ["--cache", str(tmp_path / "cache"), "--json", str(out), "--workers", "2", "--seconds", "0"]
    cmd += ["--calibrate", "3", "--chunk", "4", "--min-train", str(min_train)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    gen = json.loads(out.read_text())
    assert gen["calibration"]["contexts"] == 6 and gen["contexts"] == 6
    assert (gen["n_train"], gen["n_val"], gen["n_test"], gen["paper_size"]) == (*cut, False)
    assert gen["requested"] == {"n_train": 10, "n_val": 2, "n_test": 2}
    assert gen["train_sets"] == [
        f"data.{k}={v}" for k, v in zip(("n_train", "n_val", "n_test"), cut, strict=True)
    ]
    assert gen["max_gap"] <= 1e-8
    if min_train > 1:
        return
    rerun_sets = [a for s in gen["train_sets"] for a in ("--set", s)]  # the cut sizes are in the cache
    rerun = [*cmd[:4], *rerun_sets, *cmd[4 + len(sizes) :]]
    proc = subprocess.run(rerun, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0 and "cached:" in proc.stdout, proc.stdout + proc.stderr
    assert json.loads(out.read_text())["cached"] is True


def test_gpu_traffic_rejects_unknown_argument() -> None:
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_traffic.sh", "--bogus"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2 and "unknown argument --bogus" in proc.stderr


# ----------------------------------------------------------------------------------------------
# the traffic configs of the larger networks


TRAFFIC_CONFIGS = {  # config: (network, capacity range r)
    "traffic-ema": ("Eastern-Massachusetts", 0.3),
    "traffic-friedrichshain": ("Berlin-Friedrichshain", 0.3),
    "traffic-tiergarten": ("Berlin-Tiergarten", 0.3),
    "traffic-anaheim": ("Anaheim", 0.8),
}


@pytest.mark.parametrize("name", sorted(TRAFFIC_CONFIGS))
def test_traffic_config_averaged_step_is_below_the_limit(name: str) -> None:
    """α < 2/(K L), L = μ + a², K the origins with demand: Davis–Yin is averaged for every Θ."""
    network, r = TRAFFIC_CONFIGS[name]
    cfg = load_config(name)
    assert cfg.data.network == network and (cfg.data.n_train, cfg.data.n_test) == (5000, 500)
    assert (cfg.data.cap_range or 0.3) == r
    assert cfg.model.variant == "averaged-wide" and cfg.data.gap <= 1e-6
    # the Sioux Falls config's measured settings: standardised contexts, warm-started training solves
    # for every training context, a forward cap that lets cold evaluation solves converge
    variants = ("averaged", "averaged-wide")
    models = {v: load_config(name, [f"model.variant={v!r}".replace("'", '"')]).model for v in variants}
    assert all(m.standardize and m.warm_starts == cfg.data.n_train for m in models.values())
    assert load_config(name, ['model.variant="explicit"']).model.standardize
    assert cfg.solver.max_iter == 2000
    path = NETWORKS / network
    if not path.is_dir():
        pytest.skip(f"needs {path}")
    from fpnets.tasks.traffic.network import Network

    origins = len(np.unique(Network.from_tntp(path).od_pairs[0]))
    for variant, m in models.items():
        assert m.alpha < 2 / (origins * (m.mu + m.bound**2)), (variant, origins, m.alpha)


TRAFFIC_LINKS = {
    "traffic-ema": 258,
    "traffic-friedrichshain": 523,
    "traffic-tiergarten": 766,
    "traffic-anaheim": 914,
}


def _averaged_wide_count(num_links: int) -> int:
    """The default N-FPN's (averaged-wide, m = 10) parameter count: trunk 10 → 170 → 170, heads g(d) ∈ R⁸
    and c(d) ∈ R^E, A ∈ R^{8×E}."""
    return (
        (10 * 170 + 170) + (170 * 170 + 170) + (170 * 8 + 8) + (170 * num_links + num_links) + 8 * num_links
    )


def test_averaged_wide_count_formula_matches_the_model() -> None:
    from fpnets.tasks.traffic.models import TrafficNFPN
    from test_traffic import braess
    from test_traffic_models import small_network

    for net in (braess(), small_network()):
        model = TrafficNFPN(net, 1.0, variant="averaged-wide", alpha=1e-3)
        assert sum(p.numel() for p in model.parameters()) == _averaged_wide_count(net.num_links)


@pytest.mark.parametrize("name", sorted(TRAFFIC_LINKS))
def test_traffic_config_explicit_baseline_has_the_default_nfpns_size(name: str) -> None:
    """The explicit baseline of each larger network is sized to the config's default N-FPN (to 0.5 %)."""
    from fpnets.tasks.traffic.models import ExplicitTrafficNet

    links = TRAFFIC_LINKS[name]
    cfg = load_config(name, ['model.variant="explicit"'])
    assert load_config(name).model.variant == "averaged-wide"
    target = _averaged_wide_count(links)
    assert cfg.model.num_params == target
    explicit = ExplicitTrafficNet(links, 1.0, num_params=cfg.model.num_params)
    assert abs(sum(p.numel() for p in explicit.parameters()) - target) <= 0.005 * target
