"""Training learns (and a label-shuffling control does not), and the trainer's less-travelled paths:
selection on the loss, augmentation through the loop, channels-last models, Anderson on a coupled
operator."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

import fpnets
from fpnets.data import CifarAugment, Split, Splits, dataset_info
from fpnets.norms import l2_norm
from fpnets.train import load_config, train

QUICK = ["run.threads=1", "run.tensorboard=false", "run.plots=false", "run.progress=false"]


@pytest.fixture(scope="module")
def digits_splits():
    return load_config("digits").make_task().load_splits(None)


@pytest.mark.slow
def test_the_default_digits_run_learns(digits_splits, tmp_path_factory) -> None:
    """The shipped default (configs/digits.toml, its whole budget) reaches >= 95% validation accuracy."""
    result = train(
        load_config("digits", QUICK), run_dir=tmp_path_factory.mktemp("d") / "r", splits=digits_splits
    )
    assert result.val["acc"] >= 0.95, result.val
    assert result.test["acc"] >= 0.93, result.test
    assert result.history[-1]["train_loss"] < 0.25 * result.history[0]["train_loss"]


@pytest.mark.slow
def test_shuffled_labels_stay_near_chance(digits_splits, tmp_path_factory) -> None:
    """The same run with the training labels permuted cannot generalise: validation accuracy stays
    near chance (10 classes). A loop that mixed up labels and images would fail the test above; a
    loop that leaked validation labels into training would fail this one."""
    g = torch.Generator().manual_seed(123)
    train_split = digits_splits.train
    shuffled = Split(train_split.images, train_split.labels[torch.randperm(len(train_split), generator=g)])
    splits = dataclasses.replace(digits_splits, train=shuffled)
    cfg = load_config("digits", [*QUICK, "train.epochs=10"])
    result = train(cfg, run_dir=tmp_path_factory.mktemp("s") / "r", splits=splits)
    assert result.val["acc"] <= 0.25, result.val


TINY = ["data.limit=240", "data.batch_size=60", "data.eval_batch_size=120", "solver.max_iter=10", *QUICK]


def test_select_on_validation_loss(digits_splits, tmp_path: Path) -> None:
    """``train.select`` picks the epoch its criterion ranks first, and the returned model is that
    epoch's: the same deterministic run selected on the loss and on the accuracy. A high learning
    rate makes the two criteria disagree; which setting does depends on the library versions (the
    trajectory is deterministic for one installation only), so the test takes the first of a few
    seeds where the loss-selected run's history shows a disagreement, and fails if none does."""

    def run(select: str, seed: int):
        overrides = [*TINY, "train.epochs=8", f"train.select={select}", "optim.lr=5e-2", f"train.seed={seed}"]
        return train(load_config("digits", overrides), run_dir=tmp_path / f"{select}-{seed}", splits=None)

    def top_acc(history):
        return max(history, key=lambda r: (r["val_acc"], -r["val_loss"]))["epoch"]

    for seed in range(4):
        by_loss = run("val.loss", seed)
        best = min(by_loss.history, key=lambda r: r["val_loss"])
        if best["epoch"] != top_acc(by_loss.history):
            break
    else:
        pytest.fail("no seed of 0-3 makes val.loss and val.acc rank the epochs differently")
    by_acc = run("val.acc", seed)

    def metrics(result):
        return [(r["train_loss"], r["val_loss"], r["val_acc"]) for r in result.history]

    assert metrics(by_loss) == metrics(by_acc)  # same seed, same trajectory: only the selection differs
    assert by_loss.best_epoch == best["epoch"]
    assert by_loss.val["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    top = next(r for r in by_acc.history if r["epoch"] == top_acc(by_acc.history))
    assert by_acc.best_epoch == top["epoch"]
    assert by_acc.val["acc"] == pytest.approx(top["val_acc"], rel=1e-6)
    assert by_loss.best_epoch != by_acc.best_epoch, by_loss.history


def test_gradient_clipping_reaches_the_optimizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    original = nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        norm = original(params, max_norm, *args, **kwargs)
        seen.append(float(max_norm))
        return norm

    monkeypatch.setattr(nn.utils, "clip_grad_norm_", spy)
    train(load_config("digits", [*TINY, "train.epochs=1", "optim.grad_clip=0.25"]), run_dir=tmp_path / "a")
    assert seen == [0.25] * 4  # 240 samples, batches of 60
    seen.clear()
    train(load_config("digits", [*TINY, "train.epochs=1"]), run_dir=tmp_path / "b")
    assert seen == []


def _fake_cifar(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(
        torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
        torch.randint(0, 10, (n,), generator=g),
    )


def test_augmentation_runs_on_training_batches_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    original = CifarAugment.__call__

    def spy(self, x, generator=None):
        calls.append(tuple(x.shape))
        out = original(self, x, generator)
        assert not torch.equal(out, x)  # it changed the batch
        return out

    monkeypatch.setattr(CifarAugment, "__call__", spy)
    splits = Splits(_fake_cifar(40, 0), _fake_cifar(20, 1), _fake_cifar(20, 2), dataset_info("cifar10"))
    cfg = load_config(
        "cifar10-unaugmented",
        [
            "train.epochs=1",
            "data.batch_size=10",
            "data.eval_batch_size=20",
            "data.augment=cifar10",
            "solver.max_iter=2",
            *QUICK,
        ],
    )
    train(cfg, run_dir=tmp_path / "r", splits=splits)
    assert calls == [(10, 3, 32, 32)] * 4  # every training batch, no validation or test batch


def test_channels_last_model_gives_the_same_outputs() -> None:
    outs, layouts = [], []
    for flag in (True, False):
        cfg = load_config("mnist", [f"model.channels_last={str(flag).lower()}"])
        torch.manual_seed(0)
        model = cfg.make_task().build_model().eval()
        conv = model.operator.blocks[0].conv1.weight
        layouts.append(conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous())
        torch.manual_seed(1)
        outs.append(model(torch.randn(3, 1, 28, 28)))
    assert layouts == [True, False]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)


class CoupledOp(nn.Module):
    """T(u; x) = ½ BN(tanh(W u)) + x with batch statistics: every sample's image depends on the batch."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = fpnets.layers.SpectralLinear(n, n, bias=False, bound=0.5)
        self.bn = nn.BatchNorm1d(n, affine=False, momentum=None)

    def forward(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return 0.3 * self.bn(torch.tanh(self.w(u))) + x


def test_anderson_on_an_operator_that_couples_samples() -> None:
    torch.manual_seed(0)
    op = CoupledOp(6).double().train()
    x = torch.randn(10, 6, dtype=torch.float64)
    z0 = torch.zeros_like(x)
    assert fpnets.couples_samples(op)
    sols = {}
    for name, solver in {
        "anderson": fpnets.Anderson(tol=1e-10, max_iter=200, m=4, norm=l2_norm),
        "picard": fpnets.Picard(tol=1e-10, max_iter=2000, norm=l2_norm),
    }.items():
        sol = fpnets.fixed_point(op, z0, x, solver=solver, coupled=True, warn=False)
        assert bool(sol.converged.all()), name
        with torch.no_grad():
            residual = l2_norm(op(sol.value, x) - sol.value)  # the whole batch through T at once
        assert float(residual.max()) < 1e-8, name
        sols[name] = sol
    torch.testing.assert_close(sols["anderson"].value, sols["picard"].value, rtol=0, atol=1e-8)
    assert int(sols["anderson"].iterations.max()) < int(sols["picard"].iterations.max())
