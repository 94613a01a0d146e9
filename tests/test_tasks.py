"""The task abstraction: a toy regression task defined in this file trains through the public
trainer and CLI machinery, selects on its own metric, resumes, and writes its columns and plots."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fpnets
from fpnets.cli import main
from fpnets.layers import SpectralLinear
from fpnets.tasks import (
    TASKS,
    DataConfig,
    Metric,
    ModelConfig,
    Splits,
    Task,
    TensorLoader,
    TensorSplit,
    get_task,
    register_task,
)
from fpnets.train import (
    ConfigError,
    columns,
    evaluate_checkpoint,
    load_checkpoint,
    load_config,
    read_metrics_csv,
    train,
    train_step,
)

# ---------------------------------------------------------------------------------------------------
# the toy task: y = sin(x₁) + ½ cos(x₂) from noisy samples, an implicit model u* = ½ tanh(W u + V x)


@dataclass
class WaveData(DataConfig):
    samples: int = 320
    noise: float = 0.05
    batch_size: int = 32
    eval_batch_size: int = 64


@dataclass
class WaveModel(ModelConfig):
    variant: str = "fpn"
    width: int = 24
    choices: ClassVar[dict[str, tuple[str, ...]]] = {"variant": ("fpn", "explicit")}


class WaveOperator(nn.Module):
    """T(u; x) = ½ tanh(W u + x) with ‖W‖₂ ≤ 1: a ½-contraction in u."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.w = SpectralLinear(width, width, bias=False)

    def forward(self, u: Tensor, x: Tensor) -> Tensor:  # (B, n), (B, n) -> (B, n)
        return 0.5 * torch.tanh(self.w(u) + x)


class WaveNet(nn.Module):
    def __init__(self, width: int, implicit: bool) -> None:
        super().__init__()
        self.encoder = nn.Linear(2, width)
        self.latent = fpnets.FixedPointLayer(WaveOperator(width), fpnets.Picard(tol=1e-5, max_iter=60))
        self.readout = nn.Linear(width, 1)
        self.implicit = implicit

    @property
    def solution(self) -> fpnets.Solution | None:
        return self.latent.solution if self.implicit else None

    def forward(self, x: Tensor) -> Tensor:  # (B, 2) -> (B, 1)
        q = self.encoder(x)
        u = self.latent(q) if self.implicit else self.latent.operator(torch.zeros_like(q), q)
        return self.readout(u)


@register_task
class Wave(Task):
    name = "test-wave"
    data_config = WaveData
    model_config = WaveModel
    metrics = (Metric("mae", higher_is_better=False, label="mean |error|"),)
    loss_label = "MSE"
    select = "val.mae"

    def load_splits(self, data_dir: str | Path | None) -> Splits:
        g = torch.Generator().manual_seed(self.config.train.seed)
        n = self.config.data.samples
        x = 4 * torch.rand(n, 2, generator=g) - 2
        y = torch.sin(x[:, :1]) + 0.5 * torch.cos(x[:, 1:])
        y = y + self.config.data.noise * torch.randn(n, 1, generator=g)
        a, b = n // 2, 3 * n // 4
        return Splits(
            TensorSplit((x[:a],), y[:a]), TensorSplit((x[a:b],), y[a:b]), TensorSplit((x[b:],), y[b:])
        )

    def build_model(self) -> nn.Module:
        return WaveNet(self.config.model.width, self.config.model.variant == "fpn")

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output, target)

    def measure(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"mae": (output.detach() - target).abs().flatten(1).mean(1)}


CONFIG = """
[task]
name = "test-wave"

[data]
samples = 320

[model]
width = 24

[optim]
lr = 1e-2

[train]
epochs = 6

[run]
threads = 1
tensorboard = false
progress = false
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "wave.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("cfg") / "wave.toml"
    path.write_text(CONFIG)
    cfg = load_config(path)
    return train(cfg, run_dir=tmp_path_factory.mktemp("wave") / "run", progress=False)


def test_toy_task_trains_and_selects_on_its_own_metric(reference) -> None:
    history = reference.history
    assert [r["epoch"] for r in history] == list(range(1, 7))
    best = min(history, key=lambda r: (r["val_mae"], r["val_loss"]))
    assert reference.best_epoch == best["epoch"]
    assert reference.val["mae"] == pytest.approx(best["val_mae"], rel=1e-6)
    # it learns: the selected model is far better than predicting the mean
    splits = reference.config.make_task().load_splits(None)
    baseline = (splits.val.target - splits.train.target.mean()).abs().mean().item()
    assert reference.val["mae"] < 0.5 * baseline
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert all(1 <= r["train_iters"] <= 60 for r in history)


def test_toy_task_writes_its_columns_and_plots(reference) -> None:
    run = reference.run_dir
    rows = read_metrics_csv(run / "metrics.csv")
    assert list(rows[0]) == list(columns(Wave))
    assert "train_mae" in rows[0] and "val_mae" in rows[0] and "train_acc" not in rows[0]
    for name in ("curves.png", "iterations.png", "results.json", "config.toml"):
        assert (run / name).is_file(), name
    stats = evaluate_checkpoint(run, device="cpu")
    assert stats["mae"] == pytest.approx(reference.test["mae"], rel=1e-6) and stats["n"] == 80


class Crash(Exception):
    pass


def test_toy_task_resumes_after_an_interruption(reference, config_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"

    def crash(info: dict) -> None:
        if info["step"] == 30:  # 5 steps per epoch: in the middle of epoch 6
            raise Crash

    with pytest.raises(Crash):
        train(load_config(config_file), run_dir=run, progress=False, on_step_end=crash)
    assert load_checkpoint(run, "last").epoch == 5
    resumed = train(load_config(config_file), resume=run, progress=False)
    assert resumed.best_epoch == reference.best_epoch and resumed.test == reference.test
    a, b = load_checkpoint(reference.run_dir, "best").model, load_checkpoint(run, "best").model
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_toy_task_through_the_command_line(config_file: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "cli"
    args = [
        "train",
        str(config_file),
        "--run-dir",
        str(run),
        "--set",
        "train.epochs=2",
        "--set",
        "train.select=val.loss",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2  train loss" in out and " mae " in out and "acc" not in out
    assert "test mae" in out
    rows = read_metrics_csv(run / "metrics.csv")
    best = min(rows, key=lambda r: r["val_loss"])
    assert load_checkpoint(run, "best").epoch == best["epoch"]
    assert main(["eval", str(run)]) == 0
    assert "test mae" in capsys.readouterr().out


def test_task_sections_are_typed_by_the_task(config_file: Path) -> None:
    cfg = load_config(config_file, ["data.noise=0.1", "model.width=8"])
    assert isinstance(cfg.data, WaveData) and cfg.data.noise == 0.1 and cfg.model.width == 8
    assert cfg.run_name == "test-wave-fpn" and cfg.select == "val.mae"
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'augment' in \[data\]; valid keys: batch_size, eval_batch_size, samples, noise",
    ):
        load_config(config_file, ["data.augment=none"])
    with pytest.raises(ConfigError, match=r"train.select must be one of val.loss, val.mae, got 'val.acc'"):
        load_config(config_file, ["train.select=val.acc"])
    with pytest.raises(ConfigError, match=r"model.variant must be one of fpn, explicit, got 'jacobian'"):
        load_config(config_file, ["model.variant=jacobian"])
    with pytest.raises(
        ConfigError, match=r"task.name: unknown task 'nope'; valid tasks: .*classification.*test-wave"
    ):
        load_config(config_file, ["task.name=nope"])


def test_registry_and_metric_rules() -> None:
    assert get_task("test-wave") is Wave and TASKS["test-wave"] is Wave
    assert get_task("classification").metric("acc").higher_is_better
    with pytest.raises(ValueError, match=r"Metric name 'n' must be an identifier other than iters and n"):
        Metric("n", higher_is_better=False)

    class Bad(Task):
        name = "bad"
        metrics = (Metric("loss", higher_is_better=False),)

    with pytest.raises(ValueError, match=r"'loss' is measured by the trainer"):
        register_task(Bad)
    with pytest.raises(ValueError, match=r"cannot import task 'no_such_module:X'"):
        get_task("no_such_module:X")


def test_tensor_loader_shards_and_resumes() -> None:
    split = TensorSplit((torch.arange(10).float().unsqueeze(1),), torch.arange(10))
    with pytest.raises(ValueError, match=r"input 0 has 3 samples but the target has 10"):
        TensorSplit((torch.zeros(3, 1),), torch.arange(10))
    parts = [TensorLoader(split, 3, shuffle=True, seed=1, rank=r, world_size=2) for r in (0, 1)]
    seen = []
    for loader in parts:
        loader.set_epoch(4)
        seen += [int(v) for _, y in loader for v in y]
    assert sorted(seen) == list(range(10))  # 10 samples, 2 ranks: each sample once
    full = TensorLoader(split, 3, shuffle=True, seed=1)
    full.set_epoch(2)
    batches = [y.tolist() for _, y in full]
    assert [y.tolist() for _, y in full.iter_from(2)] == batches[2:]
    full.set_epoch(3)
    assert [y.tolist() for _, y in full] != batches  # reshuffled per epoch


# ---------------------------------------------------------------------------------------------------
# the public training step


def test_train_step_clips_the_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x, y = 100 * torch.randn(8, 4), torch.randn(8, 1)
    calls = []
    out = train_step(model, x, y, F.mse_loss, opt, grad_clip=0.5, after_step=lambda: calls.append(1))
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters(), strict=True)])
    assert torch.linalg.vector_norm(step).item() == pytest.approx(
        0.5, rel=1e-5
    )  # SGD step = clipped gradient
    assert calls == [1] and out.loss.requires_grad is False and out.loss.item() > 1


def test_train_step_adds_the_penalty() -> None:
    model = nn.Linear(3, 1, bias=False)
    nn.init.ones_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.zeros(2, 3), torch.zeros(2, 1)  # zero loss: the step is the penalty's alone
    out = train_step(
        model, x, y, F.mse_loss, opt, penalty=lambda: model.weight.square().sum(), penalty_weight=2.0
    )
    assert out.penalty is not None and out.penalty.item() == pytest.approx(3.0)
    torch.testing.assert_close(model.weight.detach(), torch.full((1, 3), 1 - 0.1 * 2 * 2.0))


def test_fixed_point_layer_takes_several_injected_inputs() -> None:
    torch.manual_seed(0)

    class Op(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = SpectralLinear(5, 5, bound=0.5, bias=False)

        def forward(self, u: Tensor, x: Tensor, s: Tensor) -> Tensor:  # s: (B, 1) a noise level
            return torch.tanh(self.w(u) + x) * torch.sigmoid(s)

    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    s = torch.randn(4, 1, dtype=torch.float64, requires_grad=True)
    layer = fpnets.FixedPointLayer(Op().double(), fpnets.Picard(tol=1e-12, max_iter=200), fpnets.IFT())
    u = layer(x, s)
    assert float((layer.operator(u, x, s) - u).detach().abs().max()) < 1e-10
    _, gs = torch.autograd.grad(u.sum(), (x, s))
    # the implicit derivative in s at the fixed point: du/ds = (I − ∂T/∂u)⁻¹ ∂T/∂s, by finite differences
    eps = 1e-6
    with torch.no_grad():
        up = layer(x, s + eps)
        um = layer(x, s - eps)
    fd = ((up - um).sum(1) / (2 * eps)).unsqueeze(1)
    torch.testing.assert_close(gs, fd, rtol=1e-5, atol=1e-8)
    with pytest.raises(TypeError, match=r"needs at least one injected input"):
        layer()


def test_jacobian_penalty_through_the_trainer(config_file: Path, tmp_path: Path) -> None:
    cfg = load_config(
        "digits",
        ["data.limit=120", "data.batch_size=60", "train.epochs=1", "solver.max_iter=5", "run.plots=false",
         "run.tensorboard=false", "run.threads=1", "train.jacobian_weight=0.5", "train.jacobian_probes=2"],
    )  # fmt: skip
    result = train(cfg, run_dir=tmp_path / "r", progress=False)
    assert math.isfinite(result.history[0]["train_loss"])
    cfg = load_config(config_file, ["train.jacobian_weight=0.1"])
    with pytest.raises(
        ConfigError,
        match=r"train.jacobian_weight needs a model with a jacobian_penalty\(\) method; WaveNet has none",
    ):
        train(cfg, run_dir=tmp_path / "w", progress=False)


def test_a_model_without_parameters_is_not_trained(config_file: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Wave, "build_model", lambda self: nn.Identity())
    with pytest.raises(ConfigError, match=r"the test-wave model Identity has no trainable parameters"):
        train(load_config(config_file), run_dir=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # nothing written
