"""The traffic task through the trainer and the CLI: configs, network lookup, tiny runs on a 6-node
network (selection on val.rel_error, metric columns, figures, checkpoint evaluation), the
mean-capacity baseline, and the errors for bad config values."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fpnets
from fpnets.cli import main
from fpnets.data import DataError
from fpnets.tasks import get_task
from fpnets.tasks.traffic import ExplicitTrafficNet, TrafficNFPN
from fpnets.tasks.traffic.metrics import relative_error, trafix_score, wardrop_gap
from fpnets.tasks.traffic.task import TrafficTask, evaluate_baseline, network_dir
from fpnets.tasks.traffic.task import _main as baseline_main
from fpnets.train import (
    ConfigError,
    config_from_dict,
    evaluate_checkpoint,
    load_config,
    read_metrics_csv,
    train,
)

from conftest import load_benchmark

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# A 6-node network: zones 1-3 (first thru node 4), both directions of a small grid, node coordinates.
NET = """<NUMBER OF ZONES> 3
<NUMBER OF NODES> 6
<FIRST THRU NODE> 4
<NUMBER OF LINKS> {count}
<END OF METADATA>

~ init_node term_node capacity length free_flow_time b power speed toll link_type ;
{rows}
"""
LINKS = [
    (1, 4, 100, 2), (4, 1, 100, 2), (4, 5, 80, 3), (5, 4, 80, 3), (5, 2, 100, 2), (2, 5, 100, 2),
    (4, 6, 60, 2), (6, 4, 60, 2), (6, 5, 60, 2), (5, 6, 60, 2), (6, 3, 100, 1), (3, 6, 100, 1),
]  # fmt: skip
TRIPS = """<NUMBER OF ZONES> 3
<TOTAL OD FLOW> 300.0
<END OF METADATA>

Origin 1
    2 :    120.0;     3 :    40.0;
Origin 2
    1 :     60.0;     3 :    50.0;
Origin 3
    1 :     30.0;
"""
NODES = "Node X Y ;\n1 0 0 ;\n2 2 0 ;\n3 1 2 ;\n4 0.5 0.5 ;\n5 1.5 0.5 ;\n6 1 1.2 ;\n"


def write_network(root: Path) -> Path:
    d = root / "transportation-networks" / "Toy"
    d.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(f"\t{a}\t{b}\t{c}\t1\t{t}\t0.15\t4\t0\t0\t1\t;" for a, b, c, t in LINKS)
    (d / "Toy_net.tntp").write_text(NET.format(count=len(LINKS), rows=rows))
    (d / "Toy_trips.tntp").write_text(TRIPS)
    (d / "Toy_node.tntp").write_text(NODES)
    return d


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("traffic-data")
    write_network(r)
    return r


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(root: Path, *extra: str):
    return load_config(
        "traffic-siouxfalls",
        [
            'data.network="Toy"',
            "data.n_train=24",
            "data.n_val=8",
            "data.n_test=8",
            "data.batch_size=8",
            "data.eval_batch_size=8",
            f"data.cache_dir={json.dumps(str(root / 'cache'))}",
            "solver.max_iter=30",
            "optim.lr=1e-2",
            "run.threads=1",
            "run.tensorboard=false",
            "run.progress=false",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def run(root: Path, tmp_path_factory: pytest.TempPathFactory):
    cfg = tiny(root, "train.epochs=2", 'task.wardrop_gap="eval"', "model.hidden=16")
    return train(cfg, run_dir=tmp_path_factory.mktemp("traffic") / "run", data_dir=root, progress=False)


# -------------------------------------------------------------------------------------------------
# configs


@pytest.mark.parametrize("name", ["traffic-siouxfalls", "traffic-ema"])
@pytest.mark.parametrize(
    "variant", ["averaged", "averaged-wide", "averaged-diag", "bpr", "nfpn", "explicit", "mean-capacity"]
)
def test_configs_resolve_and_round_trip(name: str, variant: str) -> None:
    cfg = load_config(name, [f"model.variant={json.dumps(variant)}"])
    assert get_task(cfg.task.name) is TrafficTask and cfg.select == "val.rel_error"
    assert cfg.model.variant == variant
    assert config_from_dict(tomllib.loads(cfg.to_toml())) == cfg
    assert cfg.run_name == f"traffic-{cfg.data.slug()}-{variant}"


def test_run_names() -> None:
    assert load_config("traffic-siouxfalls").run_name == "traffic-siouxfalls-averaged-wide"
    assert load_config("traffic-ema").run_name == "traffic-easternmassachusetts-averaged-wide"


def test_network_directory_lookup(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toy = root / "transportation-networks" / "Toy"
    assert network_dir("Toy", root) == toy  # <root>/transportation-networks/<name>
    assert network_dir("Toy", root / "transportation-networks") == toy  # <root>/<name>
    assert network_dir(str(toy)) == toy  # a path is used as it is
    monkeypatch.setenv("FPNETS_DATA", str(root))
    assert network_dir("Toy") == toy
    with pytest.raises(
        DataError, match=r"network 'Nowhere' not found: tried .*transportation-networks/Nowhere"
    ):
        network_dir("Nowhere", root)
    monkeypatch.delenv("FPNETS_DATA")
    with pytest.raises(DataError, match="neither --data-dir nor \\$FPNETS_DATA"):
        network_dir("Toy")
    with pytest.raises(DataError, match="is not a directory of TNTP files"):
        network_dir(str(tmp_path / "missing"))


def test_solver_and_backward_come_from_the_config(root: Path) -> None:
    cfg = tiny(root, 'solver.name="anderson"', 'backward.name="neumann"', "backward.options={k=3}")
    task = cfg.make_task()
    task.load_splits(root)
    model = task.build_model()
    assert isinstance(model, TrafficNFPN) and isinstance(model.solver, fpnets.Anderson)
    assert (model.solver.tol, model.solver.max_iter) == (1e-4, 30)
    assert isinstance(model.backward_mode, fpnets.Neumann) and model.backward_mode.k == 3
    bare = config_from_dict(
        {"task": {"name": "traffic"}, "data": {"network": "Toy", "n_train": 24, "n_val": 8, "n_test": 8,
         "cache_dir": str(root / "cache")}, "solver": {"name": "anderson"}}
    )  # fmt: skip
    bare_task = bare.make_task()
    bare_task.load_splits(root)
    solver = bare_task.build_model().solver
    assert (solver.tol, solver.max_iter) == (1e-4, 50)  # the paper's tolerance and depth
    assert bare_task.build_model().warm.capacity == 0  # warm starts: off unless asked for
    warm = tiny(root, "model.warm_starts=24").make_task()
    warm.load_splits(root)
    assert warm.build_model().warm.capacity == 24
    explicit = tiny(root, 'model.variant="explicit"', "model.num_params=500").make_task()
    explicit.load_splits(root)
    net = explicit.build_model()
    assert isinstance(net, ExplicitTrafficNet)
    assert abs(sum(p.numel() for p in net.parameters()) - 500) < 60


def test_standardize_uses_the_training_split_statistics(root: Path) -> None:
    for variant, extra in (("explicit", ["model.num_params=500"]), ("averaged", ["model.hidden=8"])):
        task = tiny(root, f'model.variant="{variant}"', "model.standardize=true", *extra).make_task()
        task.load_splits(root)
        model = task.build_model()
        data = task.dataset(root)
        d, x = data.train.context.double(), data.train.flow.double()
        if variant == "explicit":
            assert isinstance(model, ExplicitTrafficNet) and model.standardized
            np.testing.assert_allclose(model.flow_mean.numpy(), x.mean(0).numpy(), rtol=1e-6)
        else:
            assert isinstance(model, TrafficNFPN) and model.game.anchored
            np.testing.assert_allclose(
                model.game.c_mean.numpy(), x.mean(0).numpy() / data.flow_scale(), rtol=1e-5
            )
        np.testing.assert_allclose(model.context_mean.numpy(), d.mean(0).numpy(), rtol=1e-6)
        np.testing.assert_allclose(model.context_std.numpy(), d.std(0).numpy(), rtol=1e-6)
        # data.limit: the statistics of the contexts trained on, not of the whole training split
        cut = tiny(
            root, f'model.variant="{variant}"', "model.standardize=true", "data.limit=10", *extra
        ).make_task()
        cut.load_splits(root)
        np.testing.assert_allclose(cut.build_model().context_mean.numpy(), d[:10].mean(0).numpy(), rtol=1e-6)
        # false keeps the d / 10 inputs (and the s · softplus readout, the unanchored c(d))
        plain = tiny(root, f'model.variant="{variant}"', "model.standardize=false", *extra).make_task()
        plain.load_splits(root)
        assert not plain.build_model().standardized


# -------------------------------------------------------------------------------------------------
# a tiny run through the trainer


def test_run_writes_metrics_selects_on_val_rel_error_and_figures(run) -> None:
    rows = read_metrics_csv(run.run_dir / "metrics.csv")
    for split in ("train", "val"):
        for name in ("loss", "rel_error", "trafix", "conservation", "wardrop_gap", "iters"):
            assert f"{split}_{name}" in rows[0]
    # the Wardrop gap is measured on evaluation batches only (wardrop_gap = "eval")
    assert all(math.isnan(float(r["train_wardrop_gap"])) for r in rows)
    assert all(math.isfinite(float(r["val_wardrop_gap"])) for r in rows)
    best = min(rows, key=lambda r: float(r["val_rel_error"]))
    assert run.best_epoch == int(best["epoch"])
    results = json.loads((run.run_dir / "results.json").read_text())
    assert results["select"] == "val.rel_error" and results["best_epoch"] == run.best_epoch
    for name in ("flows.png", "flow_map.png", "error_map.png", "traffic_metrics.json"):
        assert (run.run_dir / name).stat().st_size > 0, name


def test_set_metrics_are_the_selected_models(run, root: Path) -> None:
    """traffic_metrics.json holds the whole-set numbers of the selected model, recomputed here."""
    task = run.config.make_task()
    splits = task.load_splits(root)
    d, x = splits.test.inputs[0], splits.test.target.double()
    with torch.no_grad():
        pred = run.model(d).double()  # (N, E)
    summary = json.loads((run.run_dir / "traffic_metrics.json").read_text())["test"]
    total = float(torch.linalg.norm(pred - x) / torch.linalg.norm(x))
    assert summary["relative_error_total"] == pytest.approx(total, rel=1e-6)
    assert summary["relative_error"] == pytest.approx(float(relative_error(pred, x).mean()), rel=1e-6)
    assert summary["trafix"] == pytest.approx(float(trafix_score(pred, x).mean()), abs=1e-12)
    data = task.dataset(root)
    gaps = wardrop_gap(pred, d, data.network, data.model)
    assert summary["wardrop_gap"]["mean"] == pytest.approx(float(gaps.mean()), rel=1e-6)
    assert summary["target_gap_max"] <= 1e-8  # certified targets
    assert summary["iterations"]["max"] <= 30 and summary["n"] == 8
    # the test metrics of results.json agree with the sample means computed here
    assert run.test["rel_error"] == pytest.approx(float(relative_error(pred, x).mean()), rel=1e-5)


def test_evaluate_checkpoint_reproduces_the_test_metrics(run, root: Path) -> None:
    stats = evaluate_checkpoint(run.run_dir, data_dir=root, device="cpu")
    for key in ("loss", "rel_error", "trafix", "conservation", "wardrop_gap", "iters"):
        assert stats[key] == pytest.approx(run.test[key], rel=1e-6, abs=1e-12), key
    assert stats["n"] == run.test["n"] == 8


def test_cli_trains_the_explicit_baseline(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "toy.toml"
    cfg.write_text(tiny(root, 'model.variant="explicit"', "model.num_params=400", "train.epochs=2").to_toml())
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--data-dir", str(root), "--run-dir", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "test rel_error" in text and "trafix" in text
    rows = read_metrics_csv(out / "metrics.csv")
    assert len(rows) == 2 and rows[0]["train_iters"] in ("", None)  # no fixed point
    assert all(math.isfinite(float(r["train_wardrop_gap"])) for r in rows)  # the config says "always"
    assert (out / "flows.png").exists()


def test_mean_capacity_baseline_is_evaluated_not_trained(root: Path, tmp_path: Path) -> None:
    cfg = tiny(root, 'model.variant="mean-capacity"')
    task = cfg.make_task()
    task.load_splits(root)
    with pytest.raises(
        ConfigError, match=r"evaluation-only baseline.*python -m fpnets\.tasks\.traffic\.task"
    ):
        task.build_model()
    results = evaluate_baseline(cfg, run_dir=tmp_path / "mc", data_dir=root)
    baseline = task.build_baseline()
    data = task.dataset(root)
    pred = baseline(data.test.context).double()  # (N, E): one flow for every context
    assert torch.equal(pred[0], pred[-1])
    x = data.test.flow.double()
    assert results["test"]["rel_error"] == pytest.approx(float(relative_error(pred, x).mean()), rel=1e-6)
    assert results["parameters"] == 0 and results["test"]["iters"] is None
    summary = json.loads((tmp_path / "mc" / "traffic_metrics.json").read_text())["test"]
    assert summary["relative_error_total"] == pytest.approx(
        float(torch.linalg.norm(pred - x) / torch.linalg.norm(x)), rel=1e-6
    )
    assert (tmp_path / "mc" / "config.toml").exists() and (tmp_path / "mc" / "flows.png").exists()
    # the command line writes the same results from a config file
    cfg_file = tmp_path / "toy.toml"
    cfg_file.write_text(cfg.to_toml())
    out = tmp_path / "mc-cli"
    assert (
        baseline_main([str(cfg_file), "--data-dir", str(root), "--out", str(out), "--set", "run.plots=false"])
        == 0
    )
    again = json.loads((out / "results.json").read_text())
    assert again["test"]["rel_error"] == pytest.approx(results["test"]["rel_error"], rel=1e-12)
    assert not (out / "flows.png").exists()  # run.plots = false


# -------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (['model.variant="explicit"', "model.alpha=0.1"], "model.alpha applies to the nfpn, averaged"),
        (
            ['model.variant="nfpn"', "model.mu=1.0"],
            "model.mu applies to the averaged, averaged-wide, averaged-diag variant",
        ),
        (["model.alpha=-1.0"], "model.alpha must be a positive number"),
        (
            ['model.variant="fast"'],
            "model.variant must be one of nfpn, averaged, averaged-wide, averaged-diag, bpr, explicit, mean-capacity",
        ),
        (['model.commodity="path"'], "commodity"),
        (["data.gap=0.1"], r"data.gap must lie in \(0, 1e-3\)"),
        (["data.n_train=0"], "data.n_train must be >= 1"),
        (["data.newton=-1"], "data.newton must be >= 0"),
        (["data.sweeps=0"], "data.sweeps must be >= 1"),
        (["data.cap_range=1.5"], r"data.cap_range must lie in \(0, 1\)"),
        (['model.variant="bpr"', "model.cap_range=1.5"], r"model.cap_range must lie in \(0, 1\)"),
        (['model.variant="bpr"', "model.gap=0.0"], r"model.gap must lie in \(0, 1\)"),
        (['model.variant="bpr"', "model.rounds=0"], "model.rounds must be >= 1"),
        (['model.variant="bpr"', "model.sweeps=0"], "model.sweeps must be >= 1"),
        (['model.variant="bpr"', "model.newton=-2"], r"model.newton must be >= 0 \(0: none\)"),
        (["model.newton=4"], "model.newton applies to the bpr variant"),
        (['model.variant="bpr"', "model.hidden=-1"], r"model.hidden must be >= 1 \(>= 0 for bpr"),
        (["model.cap_range=0.5"], "model.cap_range applies to the bpr variant"),
        (
            ['model.variant="nfpn"', "model.standardize=true"],
            "model.standardize applies to the averaged, averaged-wide, averaged-diag, bpr, explicit variant",
        ),
        (["model.warm_starts=-1"], r"model.warm_starts must be >= 0 \(0: off\)"),
        (
            ['model.variant="explicit"', "model.warm_starts=10"],
            "model.warm_starts applies to the nfpn, averaged, averaged-wide, averaged-diag, bpr variant",
        ),
        (['task.wardrop_gap="sometimes"'], "wardrop_gap"),
        (['train.select="val.acc"'], "train.select must be one of val.loss, val.rel_error"),
    ],
)
def test_bad_config_values_are_named(root: Path, overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        tiny(root, *overrides)


def test_model_errors_are_config_errors(root: Path) -> None:
    task = tiny(root, "model.alpha=5.0").make_task()
    task.load_splits(root)
    with pytest.raises(ConfigError, match=r"alpha=5 must be below 2/\(K L\)"):
        task.build_model()
    explicit = tiny(root, 'model.variant="explicit"', 'backward.name="jfb"').make_task()
    explicit.load_splits(root)
    with pytest.raises(ConfigError, match="does not apply to the explicit variant"):
        explicit.build_model()


def test_missing_network_is_a_data_error(root: Path, tmp_path: Path) -> None:
    cfg = tiny(root, 'data.network="Atlantis"')
    with pytest.raises(DataError, match="network 'Atlantis' not found"):
        train(cfg, run_dir=tmp_path / "run", data_dir=root)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "options",
    [
        ("model.standardize=false", "model.sweeps=4", "model.newton=0"),
        ("model.standardize=true", "model.sweeps=2", "model.newton=4"),  # the Sioux Falls config's
    ],
)
def test_bpr_variant_trains_through_the_trainer_and_evaluates(root: Path, tmp_path: Path, options) -> None:
    # every forward is the certified equilibrium of the learned costs: one Picard check per sample,
    # flow conserved to float32 rounding, the same test metrics again from the checkpoint (also with
    # standardised contexts and the Newton steps in the forward solve)
    cfg = tiny(
        root,
        'model.variant="bpr"',
        "model.hidden=4",
        "model.gap=1e-9",
        "train.epochs=2",
        "run.plots=false",
        *options,
    )
    result = train(cfg, run_dir=tmp_path / "bpr", data_dir=root, progress=False)
    task = cfg.make_task()
    task.load_splits(root)
    model = task.build_model()
    fast = options[0].endswith("true")
    assert model.standardized == fast and (model.sweeps, model.newton) == ((2, 4) if fast else (4, 0))
    rows = read_metrics_csv(result.run_dir / "metrics.csv")
    assert all(float(r["val_iters"]) == 1.0 and float(r["train_iters"]) == 1.0 for r in rows)
    assert result.test["conservation"] < 1e-5
    stats = evaluate_checkpoint(result.run_dir, data_dir=root, device="cpu")
    for key in ("loss", "rel_error", "trafix", "conservation", "iters"):
        assert stats[key] == pytest.approx(result.test[key], rel=1e-5, abs=1e-9), key


def test_traffic_predict_benchmark_times_the_run_and_the_solver(run, root: Path, tmp_path: Path) -> None:
    import runpy
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "traffic_predict.py"
    out = tmp_path / "predict.json"
    argv = [str(script), "--runs", str(run.run_dir), "--data-dir", str(root), "--repeats", "1"]
    argv += ["--gaps", "1e-3,1e-8", "--out", str(out)]
    saved = sys.argv
    try:
        sys.argv = argv
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved
    payload = json.loads(out.read_text())
    (model,) = payload["models"]
    summary = json.loads((run.run_dir / "traffic_metrics.json").read_text())["test"]
    assert model["relative_error"] == pytest.approx(summary["relative_error_total"], rel=1e-5)
    assert model["contexts"] == 8 and model["cpu_s_per_context"] > 0
    gaps = {(s["gap"], s["contexts"]): s["relative_error"] for s in payload["solver"]}
    assert set(gaps) == {(1e-3, 8), (1e-3, 1), (1e-8, 8), (1e-8, 1)}
    assert gaps[(1e-8, 8)] < 1e-5  # the solver at the data's gap reproduces the targets


def test_traffic_forward_benchmark_measures_convergence_against_a_reference(
    run, root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    module = load_benchmark("traffic_forward")
    out = tmp_path / "forward.json"
    args = ["--run", str(run.run_dir), "--data-dir", str(root), "--repeats", "1", "--threads", "1"]
    args += ["--solvers", "config,picard-500,anderson5-500", "--ref-tol", "1e-7", "--out", str(out)]
    assert module.main(args) == 0
    payload = json.loads(out.read_text())["result"]
    assert payload["contexts"] == 8 and list(payload["solvers"]) == ["config", "picard-500", "anderson5-500"]
    summary = json.loads((run.run_dir / "traffic_metrics.json").read_text())["test"]
    # the run's own solver (30 iterations at most) is what the run measured: the same error
    own = payload["solvers"]["config"]
    assert own["rel_error_whole"] == pytest.approx(summary["relative_error_total"], rel=1e-4)
    assert own["iterations_max"] == 30 and own["converged"] < 1.0
    assert (
        own["distance_to_reference_median"] > payload["solvers"]["picard-500"]["distance_to_reference_median"]
    )
    for name in ("picard-500", "anderson5-500"):  # the tolerance met: within it of the reference
        row = payload["solvers"][name]
        assert row["converged"] == 1.0 and row["distance_to_reference_max"] < 1e-3
        assert row["iterations_max"] <= payload["reference"]["iterations_max"]
    # a reference that cannot converge is refused, with the fix
    with pytest.raises(SystemExit, match=r"raise --ref-iter or --ref-tol"):
        module.main(
            ["--run", str(run.run_dir), "--data-dir", str(root), "--ref-tol", "1e-12", "--ref-iter", "2"]
        )
    with pytest.raises(SystemExit, match=r"--solvers: unknown or none \['newton'\]"):
        module.main(["--run", str(run.run_dir), "--data-dir", str(root), "--solvers", "newton"])
    capsys.readouterr()
