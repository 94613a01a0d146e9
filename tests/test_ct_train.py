"""The CT task through the trainer and the CLI: configs, tiny runs (16 × 16 images, 8 angles), model
selection on val.psnr, figures, checkpoint evaluation, baselines chosen on validation, and the errors
for bad sinograms, NaN data and an expansive projection step."""

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
from fpnets.norms import max_channel_norm
from fpnets.tasks import Splits, TensorSplit, get_task
from fpnets.tasks.ct import FFPN, UnrolledFFPN, psnr
from fpnets.tasks.ct.task import CTTask, ct_data_dir, select_fbp, select_tv
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

TINY = [
    "data.image_size=16",
    "data.angles=8",
    "data.n_train=24",
    "data.n_val=8",
    "data.n_test=8",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "data.cache=false",
    "model.select_samples=4",
    "model.lambdas=[1e-3, 1e-2]",
    "solver.max_iter=15",
    "run.threads=1",
    "run.tensorboard=false",
    "run.progress=false",
]
TINY_NET = {
    "contractive": ["model.channels=4", "model.blocks=1"],
    "ffpn": ["model.channels=4", "model.blocks=2"],
}


def tiny(variant: str, *extra: str):
    return load_config("ct-ellipses", [*TINY, f"model.variant={variant}", *TINY_NET.get(variant, []), *extra])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny tensors: a second thread only adds synchronisation, ruinous on a busy machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    cfg = tiny("contractive", "train.epochs=2", "optim.lr=3e-3")
    return train(cfg, run_dir=tmp_path_factory.mktemp("ct") / "run", progress=False)


# -------------------------------------------------------------------------------------------------
# configs


@pytest.mark.parametrize("name", ["ct-ellipses", "ct-ellipses-128"])
@pytest.mark.parametrize("variant", ["ffpn", "contractive", "potential", "unrolled", "tvs", "fbp", "tv"])
def test_configs_resolve_and_round_trip(name: str, variant: str) -> None:
    cfg = load_config(name, [f"model.variant={variant}"])
    assert get_task(cfg.task.name) is CTTask and cfg.select == "val.psnr"
    assert cfg.model.variant == variant
    assert config_from_dict(tomllib.loads(cfg.to_toml())) == cfg


def test_cpu_and_paper_configs_describe_their_geometry_and_networks() -> None:
    cpu, paper = load_config("ct-ellipses"), load_config("ct-ellipses-128")
    assert cpu.model.variant == "contractive" and paper.model.variant == "ffpn"
    g, p = cpu.data.scan(), paper.data.scan()
    assert (g.n, g.n_angles, g.n_detectors) == (64, 30, 91)
    assert (p.n, p.n_angles, p.n_detectors) == (128, 30, 183)
    # the unrolled network has the same R_Θ as the paper-form F-FPN: identical parameter shapes
    a, b = (load_config("ct-ellipses", [f"model.variant={v}"]) for v in ("ffpn", "unrolled"))
    assert a.model.channels == b.model.channels and a.model.blocks == b.model.blocks
    # an image size alone derives the detector count: the smallest odd number >= N√2
    for n in (16, 23, 64):
        dets = load_config("ct-ellipses", [f"data.image_size={n}"]).data.scan().n_detectors
        assert dets % 2 == 1 and dets >= n * math.sqrt(2) > dets - 2


def test_solver_and_backward_come_from_the_config() -> None:
    model = tiny("contractive", "solver.name=anderson", "backward.name=neumann", "backward.options={k=3}")
    model = model.make_task().build_model()
    assert isinstance(model, FFPN) and isinstance(model.solver, fpnets.Anderson)
    assert model.solver.tol == 5e-3 and model.solver.max_iter == 15
    assert isinstance(model.backward_mode, fpnets.Neumann) and model.backward_mode.k == 3
    # a [solver] naming only the method: the reference rule (5e-3 on the max-channel norm, 100 steps)
    bare = {"task": {"name": "ct"}, "data": {"image_size": 16, "angles": 8}, "solver": {"name": "anderson"}}
    bare_model = config_from_dict({**bare, "model": {"variant": "contractive", "channels": 2, "blocks": 1}})
    solver = bare_model.make_task().build_model().solver
    assert (solver.tol, solver.max_iter, solver.norm) == (5e-3, 100, max_channel_norm)
    default = tiny("ffpn").make_task().build_model()
    assert isinstance(default.backward_mode, fpnets.JFB) and default.lipschitz == "reference"
    assert isinstance(tiny("unrolled", "model.steps=3").make_task().build_model(), UnrolledFFPN)


# -------------------------------------------------------------------------------------------------
# a tiny run


def test_tiny_run_selects_on_val_psnr_and_writes_its_columns_and_figures(run) -> None:
    rows = read_metrics_csv(run.run_dir / "metrics.csv")
    for col in ("train_psnr", "val_psnr", "train_ssim", "val_ssim", "val_mse", "val_iters", "rescales"):
        assert col in rows[0], col
    assert "train_acc" not in rows[0]
    best = max(rows, key=lambda r: (r["val_psnr"], -r["val_loss"]))
    assert run.best_epoch == best["epoch"] == load_checkpoint(run.run_dir, "best").epoch
    assert run.val["psnr"] == pytest.approx(best["val_psnr"], rel=1e-6)
    # the loss is the MSE over all pixels: the mean of the per-sample MSEs (same image size)
    assert run.test["loss"] == pytest.approx(run.test["mse"], rel=1e-5)
    # PSNR per sample is 10 log10(1/mse), convex in mse: its mean is at least 10 log10(1/mean mse)
    assert run.test["psnr"] >= 10 * math.log10(1 / run.test["mse"]) - 1e-9
    # the contractive F-FPN meets the tolerance well inside the cap
    assert all(r["val_iters"] < 15 for r in rows)
    results = json.loads((run.run_dir / "results.json").read_text())
    assert results["select"] == "val.psnr" and {"psnr", "ssim", "mse"} <= set(results["test"])
    for name in ("reconstructions.png", "convergence.png", "curves.png", "iterations.png"):
        assert (run.run_dir / name).stat().st_size > 1000, name
    assert load_config(run.run_dir / "config.toml") == run.config


def test_evaluate_checkpoint_reproduces_the_test_metrics(run) -> None:
    stats = evaluate_checkpoint(run.run_dir, device="cpu")
    assert stats["n"] == 8 and stats["epoch"] == run.best_epoch
    for key in ("loss", "psnr", "ssim", "mse", "iters"):
        assert stats[key] == pytest.approx(run.test[key], rel=1e-6), key


def test_the_selected_model_is_a_fixed_point_of_its_operator(run) -> None:
    model, task = run.model, run.config.make_task()
    test = task.load_splits(None).test
    d = test.inputs[0]
    with torch.no_grad():
        u = model(d)
        residual = max_channel_norm(model.operator(u, d) - u)  # (B,)
    assert bool(model.solution.converged.all())
    # a γ-contraction stopped at ‖u_k − u_{k−1}‖ ≤ tol is within tol of the next step too
    assert float(residual.max()) <= 5e-3
    assert model.lipschitz_bound == pytest.approx(0.99)


def test_training_through_the_command_line(tmp_path: Path, capsys) -> None:
    run = tmp_path / "cli"
    args = ["train", "ct-ellipses", "--run-dir", str(run), "--set", "train.epochs=1", "--quiet"]
    for override in [*TINY, "model.variant=ffpn", *TINY_NET["ffpn"]]:
        args += ["--set", override]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test psnr" in out
    rows = read_metrics_csv(run / "metrics.csv")
    assert rows[0]["val_psnr"] is not None and rows[0]["rescales"] is not None
    assert (run / "reconstructions.png").is_file() and (run / "convergence.png").is_file()
    assert main(["eval", str(run)]) == 0
    assert "test psnr" in capsys.readouterr().out


# -------------------------------------------------------------------------------------------------
# baselines


def test_baselines_are_chosen_on_validation_by_psnr() -> None:
    cfg = tiny("tv", "model.lambdas=[1e-4, 1e-2, 1e-1]")
    task = cfg.make_task()
    val = task.load_splits(None).val
    fbp, scores = select_fbp(task.geometry, val, samples=4)
    d, u = val.inputs[0][:4].double(), val.target[:4].double()
    direct = {f: float(psnr(fpnets.tasks.ct.FBPReconstructor(task.geometry, f)(d), u).mean()) for f in scores}
    assert scores == pytest.approx(direct) and scores[fbp.filter] == max(scores.values())
    tv, tv_scores = select_tv(task.geometry, val, samples=4, lambdas=[1e-4, 1e-2, 1e-1])
    assert set(tv_scores) == {1e-4, 1e-2, 1e-1} and tv_scores[tv.lam] == max(tv_scores.values())
    assert task.build_baseline("tv", val).lam == tv.lam
    # a λ set for the tv variant is used as it is
    assert tiny("tv", "model.lam=0.05").make_task().build_baseline("tv", val).lam == 0.05


# -------------------------------------------------------------------------------------------------
# errors


def _with(split: TensorSplit, sinograms: torch.Tensor) -> TensorSplit:
    return TensorSplit((sinograms,), split.target)


def test_sinograms_of_the_wrong_shape_are_named(tmp_path: Path) -> None:
    cfg = tiny("contractive", "train.epochs=1")
    s = cfg.make_task().load_splits(None)
    wrong = _with(s.train, s.train.inputs[0][..., :-2])  # 21 detectors instead of 23
    with pytest.raises(DataError, match=r"sinograms must be \(n, 1, 8, 23\) .* got \(24, 1, 8, 21\)"):
        train(cfg, splits=Splits(wrong, s.val, s.test), run_dir=tmp_path / "run")
    model = cfg.make_task().build_model()
    with pytest.raises(ValueError, match=r"sinograms of shape \(B, 1, 8, 23\)"):
        model(s.test.inputs[0][..., :-2])


def test_nan_in_the_data_is_named(tmp_path: Path) -> None:
    cfg = tiny("contractive", "train.epochs=1")
    s = cfg.make_task().load_splits(None)
    bad = s.val.inputs[0].clone()
    bad[3, 0, 2, 5] = float("nan")
    with pytest.raises(
        DataError, match=r"sinograms of 1 sample\(s\) hold NaN or Inf values \(first: sample 3\)"
    ):
        train(cfg, splits=Splits(s.train, _with(s.val, bad), s.test), run_dir=tmp_path / "run")
    # user pair files with NaN: one clear line naming the file
    for name, split in (("train", s.train), ("val", s.val), ("test", s.test)):
        images = split.target.numpy().copy()
        if name == "test":
            images[1, 0, 0, 0] = np.nan
        np.savez(tmp_path / f"{name}.npz", images=images, sinograms=split.inputs[0].numpy())
    files = ["data.train_file=train.npz", "data.val_file=val.npz", "data.test_file=test.npz"]
    task = tiny("contractive", *files).make_task()
    with pytest.raises(DataError, match=r"test.npz.*NaN or Inf"):
        task.load_splits(tmp_path)
    with pytest.raises(ConfigError, match=r"must be set together"):
        tiny("contractive", "data.train_file=train.npz")


def test_an_expansive_step_and_misplaced_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.relaxation must lie in \(0, 2\], got 2.5.*nonexpansive"):
        tiny("ffpn", "model.relaxation=2.5")
    with pytest.raises(ConfigError, match=r"model.gamma must lie in \(0, 1\), got 1.0"):
        tiny("contractive", "model.gamma=1.0")
    with pytest.raises(
        ConfigError, match=r"model.steps applies to the unrolled variant\(s\), not 'contractive'"
    ):
        tiny("contractive", "model.steps=4")
    with pytest.raises(ConfigError, match=r"backward.name = 'ift' does not apply to the unrolled variant"):
        tiny("unrolled", "backward.name=ift").make_task().build_model()
    with pytest.raises(ConfigError, match=r"'fbp' is an evaluation-only baseline with no parameters"):
        train(tiny("fbp"), run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"model.variant must be one of ffpn, contractive"):
        tiny("fpn")


def test_data_directory_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ct_data_dir(tmp_path) == tmp_path
    monkeypatch.setenv("FPNETS_DATA", str(tmp_path / "shared"))
    assert ct_data_dir(None) == tmp_path / "shared" / "ct"
    cfg = tiny("contractive", "data.cache=true")
    first = cfg.make_task().load_splits(tmp_path)
    (cached,) = tmp_path.glob("ct-ellipses-16-*.npz")
    again = cfg.make_task().load_splits(tmp_path)
    assert torch.equal(first.test.inputs[0], again.test.inputs[0]) and cached.is_file()


def test_the_rescale_counter_travels_through_epoch_records() -> None:
    task = tiny("ffpn").make_task()
    model = task.build_model()
    assert task.epoch_stats(model) == {"rescales": 0}
    task.restore(model, {"rescales": 3})  # what a resumed run reads from its last epoch's record
    assert model.rescales == 3 and task.epoch_stats(model) == {"rescales": 3}
    # the counter counts: a forced rescale (γ below any measured ratio) adds one
    model.gamma = 1e-6
    model.train()
    model(task.load_splits(None).train.inputs[0][:4])
    task.after_step(model)
    assert model.rescales == 4
    contractive = tiny("contractive").make_task()
    assert contractive.epoch_stats(contractive.build_model()) == {"rescales": None}
