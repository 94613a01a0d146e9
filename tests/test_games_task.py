"""The games task through the trainer: config sections, batches carrying the true payoff, the
solver/backward wiring, tiny runs through ``train`` and the command line, the data cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import fpnets
from fpnets.cli import main
from fpnets.data import DataError
from fpnets.tasks import get_task
from fpnets.tasks.games import (
    ContractiveNashFPN,
    NashFPN,
    PayoffNashFPN,
    PayoffNet,
    duality_gap,
    qre_residual,
)
from fpnets.tasks.games.data import cache_path
from fpnets.tasks.games.task import GamesTask, GameTarget, GameTensorSplit, games_data_dir
from fpnets.train import (
    ConfigError,
    config_from_dict,
    evaluate_checkpoint,
    load_checkpoint,
    load_config,
    read_metrics_csv,
    train,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

VARIANTS = ("nfpn", "contractive", "logit", "payoff", "payoffnet")

TINY = [
    "data.n_actions=4",
    "data.n_train=96",
    "data.n_val=24",
    "data.n_test=24",
    "data.batch_size=12",
    "train.epochs=2",
    "optim.scheduler=none",
    "run.threads=1",
    "run.tensorboard=false",
    "run.progress=false",
]


def uniform_mse(target: torch.Tensor) -> float:
    """Test MSE (1/2n)‖x̂ − x*‖² of predicting both players' uniform strategy x̂ = 1/n."""
    n = target.shape[-1]
    return float((target.double() - 1.0 / n).pow(2).mean())


@pytest.mark.parametrize("variant", VARIANTS)
def test_bundled_config_resolves_and_round_trips(variant: str) -> None:
    cfg = load_config("games", [f"model.variant={variant}"])
    assert isinstance(cfg.make_task(), GamesTask) and cfg.model.variant == variant
    assert config_from_dict(tomllib.loads(cfg.to_toml())) == cfg
    assert cfg.run_name == f"games-n10-{variant}" and cfg.select == "val.mse"
    assert cfg.data.payoff_low < 0 < cfg.data.payoff_high  # mixed equilibria (see the config)
    assert (cfg.model.mu is not None) == (variant == "contractive")
    assert (cfg.model.rho is not None) == (variant in ("contractive", "logit"))
    assert (cfg.model.hidden is not None) == (variant in ("payoff", "payoffnet"))


def test_metrics_and_directions() -> None:
    task = get_task("games")
    assert [m.name for m in task.metrics] == ["mse", "qre_residual", "duality_gap"]
    assert not any(m.higher_is_better for m in task.all_metrics())


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("games-data")
    cfg = load_config("games", TINY)
    return data_dir, cfg.make_task().load_splits(data_dir)


def test_batches_carry_the_true_payoff_and_exact_targets(tiny_splits) -> None:
    _, splits = tiny_splits
    cfg = load_config("games", TINY)
    task = cfg.make_task()
    assert isinstance(splits.train, GameTensorSplit) and splits.sizes == {"train": 96, "val": 24, "test": 24}
    assert splits.train.target.dtype == torch.float64 and splits.train.target.shape == (96, 2, 4)
    loader = task.loader(splits.train, train=True)
    assert len(loader) == 8
    seen = 0
    for (d,), target in loader:
        assert isinstance(target, GameTarget) and d.shape == (12, 3)
        B = target.payoff
        torch.testing.assert_close(B, -B.transpose(1, 2))  # antisymmetric
        # the targets are the QREs of exactly these games
        assert float(qre_residual(B, target.profile).max()) < 1e-12
        assert float(duality_gap(B, target.profile).abs().max()) < 1e-12
        values = task.measure(target.profile.float(), target)
        assert float(values["mse"].max()) < 1e-14 and float(values["qre_residual"].max()) < 1e-6
        uniform = torch.full_like(target.profile, 0.25)
        assert float(task.measure(uniform, target)["qre_residual"].min()) > 0
        seen += d.shape[0]
    assert seen == 96


def test_solver_and_backward_come_from_the_config() -> None:
    cfg = load_config(
        "games", ["model.variant=nfpn", "solver.max_iter=7", "solver.tol=1e-3", "backward.name=ift"]
    )
    model = cfg.make_task().build_model()
    assert isinstance(model, NashFPN) and model.warn is False
    assert isinstance(model.solver, fpnets.Picard) and (model.solver.max_iter, model.solver.tol) == (7, 1e-3)
    assert isinstance(model.backward_mode, fpnets.IFT)
    default = load_config("games", ["model.variant=contractive", "solver.name=anderson"]).make_task()
    model = default.build_model()
    assert isinstance(model, ContractiveNashFPN) and isinstance(model.solver, fpnets.Anderson)
    assert model.backward_mode is None and model.contraction_bound == pytest.approx(2**-0.5)
    payoff = load_config("games", ["model.variant=payoffnet", "model.qre_tol=1e-9"]).make_task().build_model()
    assert isinstance(payoff, PayoffNet) and payoff.tol == 1e-9 and payoff.net[0].out_features == 9
    spec = ["model.variant=payoff", "model.qre_tol=1e-9", "solver.tol=1e-6", "backward.name=ift"]
    fpn = load_config("games", spec).make_task().build_model()
    assert isinstance(fpn, PayoffNashFPN) and fpn.qre_tol == 1e-9 and fpn.net[0].out_features == 9
    assert fpn.solver.tol == 1e-6 and isinstance(fpn.backward_mode, fpnets.IFT) and fpn.warn is False
    assert sum(p.numel() for p in fpn.parameters()) == 486  # Payoff-Net's network
    # parameters: the N-FPN (k + 1)·2n + (2n + 1)·2n = 500 at n = 10, k = 3; Payoff-Net 486
    nfpn = load_config("games", ["model.variant=nfpn"]).make_task().build_model()
    assert sum(p.numel() for p in nfpn.parameters()) == 500
    assert sum(p.numel() for p in payoff.parameters()) == 486


def test_bad_config_values_name_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError,
        match=r"model.variant must be one of nfpn, contractive, logit, payoff, payoffnet, got 'fpn'",
    ):
        load_config("games", ["model.variant=fpn"])
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'name' in \[data\]; valid keys: batch_size, eval_batch_size, n_actions",
    ):
        load_config("games", ["data.name=digits"])
    with pytest.raises(
        ConfigError, match=r"unknown key\(s\) 'width' in \[model\]; valid keys: variant, alpha"
    ):
        config_from_dict({"task": {"name": "games"}, "model": {"width": 3}})
    with pytest.raises(ConfigError, match=r"model.mu applies to the contractive variant\(s\), not 'nfpn'"):
        load_config("games", ["model.variant=nfpn", "model.mu=2.0"])
    with pytest.raises(
        ConfigError, match=r"model.qre_tol applies to the payoff, payoffnet variant\(s\), not 'contractive'"
    ):
        load_config("games", ["model.variant=contractive", "model.qre_tol=1e-8"])
    with pytest.raises(ConfigError, match=r"model.rho must be > 0, got -1.0"):
        load_config("games", ["model.variant=contractive", "model.rho=-1.0"])
    with pytest.raises(
        ConfigError, match=r"model.rho must be < 2 for the logit variant \(γ = ρ/2\), got 2.0"
    ):
        load_config("games", ["model.variant=logit", "model.rho=2.0"])
    with pytest.raises(ConfigError, match=r"model.mu applies to the contractive variant\(s\), not 'logit'"):
        load_config("games", ["model.variant=logit", "model.mu=1.0"])
    with pytest.raises(ConfigError, match=r"n_actions must be an integer >= 2, got 1"):
        load_config("games", ["data.n_actions=1"])
    with pytest.raises(ConfigError, match=r"need payoff_low <= payoff_high"):
        load_config("games", ["data.payoff_low=11.0"])
    with pytest.raises(
        ConfigError,
        match=r"train.select must be one of val.loss, val.mse, val.qre_residual, val.duality_gap, got 'val.acc'",
    ):
        load_config("games", ["train.select=val.acc"])
    with pytest.raises(ConfigError, match=r"backward.name = 'ift' does not apply to payoffnet"):
        load_config("games", ["model.variant=payoffnet", "backward.name=ift"]).make_task().build_model()
    with pytest.raises(ConfigError, match=r"unknown solver 'newton'; valid names: anderson, picard"):
        load_config("games", ["solver.name=newton"]).make_task().build_model()


def test_tiny_run_learns_selects_on_val_mse_and_reevaluates(tiny_splits, tmp_path: Path) -> None:
    # the contractive N-FPN starts from interior fixed points, so two tiny epochs reliably learn
    # (the authors' N-FPN may start at vertex outputs, whose projection has a zero gradient)
    data_dir, splits = tiny_splits
    cfg = load_config("games", [*TINY, "model.variant=contractive"])
    result = train(cfg, run_dir=tmp_path / "run", data_dir=data_dir, progress=False)
    rows = read_metrics_csv(result.run_dir / "metrics.csv")
    for split in ("train", "val"):
        for name in ("loss", "mse", "qre_residual", "duality_gap", "iters"):
            assert all(r[f"{split}_{name}"] is not None for r in rows), f"{split}_{name}"
    assert [r["epoch"] for r in rows] == [1, 2]
    best = min(rows, key=lambda r: (r["val_mse"], r["val_loss"]))
    assert result.best_epoch == best["epoch"] == load_checkpoint(result.run_dir, "best").epoch
    assert result.val["mse"] == pytest.approx(best["val_mse"], rel=1e-9)
    # mse is the loss up to the mean: both are the mean squared entry error
    assert result.test["mse"] == pytest.approx(result.test["loss"], rel=1e-5)
    assert result.test["mse"] < uniform_mse(splits.test.target)
    assert 1 <= result.test["iters"] <= 100
    stored = json.loads((result.run_dir / "results.json").read_text())
    assert stored["select"] == "val.mse" and stored["test"]["mse"] == pytest.approx(result.test["mse"])
    for name in ("curves.png", "iterations.png", "strategies.png", "config.toml"):
        assert (result.run_dir / name).is_file(), name
    again = evaluate_checkpoint(result.run_dir, data_dir=data_dir, device="cpu")
    for key in ("loss", "mse", "qre_residual", "duality_gap", "iters"):
        assert again[key] == pytest.approx(result.test[key], rel=1e-6), key
    assert again["n"] == 24 and again["epoch"] == result.best_epoch


def test_bundled_default_is_the_contractive_nfpn() -> None:
    config = load_config("games")
    assert config.model.variant == "contractive" and config.run_name == "games-n10-contractive"
    model = config.make_task().build_model()
    assert isinstance(model, ContractiveNashFPN) and model.contraction_bound == pytest.approx(2**-0.5)


@pytest.mark.parametrize("variant", ["contractive", "nfpn"])
def test_nfpn_through_the_command_line_honours_the_solver(
    tiny_splits, tmp_path: Path, capsys, variant: str
) -> None:
    data_dir, _ = tiny_splits
    run = tmp_path / variant
    args = ["train", "games", "--run-dir", str(run), "--data-dir", str(data_dir), "--quiet"]
    for item in [*TINY, f"model.variant={variant}", "train.epochs=1", "solver.max_iter=3", "run.plots=false"]:
        args += ["--set", item]
    assert main(args) == 0
    assert "test mse" in capsys.readouterr().out
    (row,) = read_metrics_csv(run / "metrics.csv")
    assert 1 <= row["train_iters"] <= 3 and 1 <= row["val_iters"] <= 3
    assert row["val_mse"] == pytest.approx(row["val_loss"], rel=1e-5) and row["val_duality_gap"] >= 0


@pytest.mark.parametrize("variant", ["payoffnet", "payoff"])
def test_tiny_run_through_the_command_line(tiny_splits, tmp_path: Path, capsys, variant: str) -> None:
    # both learn the payoff network B̂(d) of an exact QRE: Payoff-Net with the implicit gradient,
    # the model-based N-FPN with JFB
    data_dir, splits = tiny_splits
    run = tmp_path / "cli"
    args = ["train", "games", "--run-dir", str(run), "--data-dir", str(data_dir), "--quiet"]
    for item in [*TINY, f"model.variant={variant}"]:
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test mse" in out and "qre_residual" in out and "acc" not in out
    rows = read_metrics_csv(run / "metrics.csv")
    assert {"train_mse", "val_mse", "val_qre_residual", "val_duality_gap"} <= set(rows[0])
    best = min(rows, key=lambda r: (r["val_mse"], r["val_loss"]))
    assert load_checkpoint(run, "best").epoch == best["epoch"]
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["mse"] < uniform_mse(splits.test.target)
    assert main(["eval", str(run), "--data-dir", str(data_dir)]) == 0
    assert f"test mse {results['test']['mse']:.4g}" in capsys.readouterr().out


def test_data_is_cached_where_documented(tiny_splits, tmp_path: Path, monkeypatch) -> None:
    data_dir, splits = tiny_splits
    cfg = load_config("games", TINY)
    path = cache_path(cfg.data.game_config(), data_dir)
    assert path.is_file()
    again = cfg.make_task().load_splits(data_dir)  # read back from the cache: the same games
    assert torch.equal(again.test.target, splits.test.target) and torch.equal(again.train.W, splits.train.W)
    monkeypatch.setenv("FPNETS_DATA", str(tmp_path / "root"))
    assert games_data_dir(None) == tmp_path / "root" / "games"
    monkeypatch.delenv("FPNETS_DATA")
    monkeypatch.setenv("FPNETS_CACHE", str(tmp_path / "cache"))
    assert games_data_dir(None) == tmp_path / "cache" / "games"
    assert games_data_dir(tmp_path / "x") == tmp_path / "x"
    # a corrupt cache file is named, with the fix
    broken = tmp_path / "broken"
    broken.mkdir()
    cache_path(cfg.data.game_config(), broken).write_bytes(b"not a torch file")
    with pytest.raises(DataError, match=r"(?s)cannot read the game cache .*delete .* to regenerate"):
        cfg.make_task().load_splits(broken)
    # cache = false writes nothing
    load_config("games", [*TINY, "data.cache=false"]).make_task().load_splits(tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_loader_rejects_plain_tensor_splits() -> None:
    from fpnets.tasks import TensorSplit

    task = load_config("games", TINY).make_task()
    split = TensorSplit((torch.rand(4, 3),), torch.rand(4, 2, 4))
    with pytest.raises(TypeError, match=r"needs GameTensorSplit splits"):
        task.loader(split, train=False)
    with pytest.raises(ValueError, match=r"W must be \(n\(n-1\)/2, k\) = \(6, 3\)"):
        GameTensorSplit((torch.rand(4, 3),), torch.rand(4, 2, 4), torch.zeros(5, 3))
