"""The training loop on a cut-down digits problem: outputs, model selection, resume, data parallel."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fpnets.tasks.classification import ClassificationTask
from fpnets.train import (
    ConfigError,
    columns,
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

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.limit=240",
    "data.batch_size=60",
    "data.eval_batch_size=120",
    "solver.max_iter=10",
    "train.epochs=3",
    "run.threads=1",
    "run.tensorboard=false",
]
TIMING = ("samples_per_s", "epoch_s")


def tiny(*extra: str):
    return load_config("digits", [*TINY, *extra])


@pytest.fixture(scope="module")
def splits():
    return tiny().make_task().load_splits(None)


@pytest.fixture(scope="module")
def reference(splits, tmp_path_factory):
    """An uninterrupted 3-epoch run."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = train(tiny(), run_dir=run_dir, splits=splits, progress=False)
    return result


def _untimed(history):
    return [{k: v for k, v in rec.items() if k not in TIMING} for rec in history]


def _assert_same_checkpoint(a: Path, b: Path, tag: str = "last") -> None:
    ca, cb = load_checkpoint(a, tag), load_checkpoint(b, tag)
    assert ca.epoch == cb.epoch and ca.meta["step"] == cb.meta["step"]
    assert ca.model.keys() == cb.model.keys()
    for key in ca.model:
        assert torch.equal(ca.model[key], cb.model[key]), f"{tag} model tensor {key} differs"
    optim_a = {k: v for k, v in ca.tensors.items() if k.startswith("optim.")}
    optim_b = {k: v for k, v in cb.tensors.items() if k.startswith("optim.")}
    assert optim_a.keys() == optim_b.keys()
    for key in optim_a:
        assert torch.equal(optim_a[key], optim_b[key]), f"{tag} optimizer tensor {key} differs"
    assert _untimed(ca.meta["history"]) == _untimed(cb.meta["history"])
    assert ca.meta["best"] == cb.meta["best"]


def test_run_directory_contents(reference) -> None:
    run = reference.run_dir
    for name in ("config.toml", "run.json", "metrics.csv", "curves.png", "iterations.png", "results.json"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.json").is_file() and (run / "checkpoints" / "best.json").is_file()
    assert config_from_dict(tomllib.loads((run / "config.toml").read_text())) == reference.config
    rows = read_metrics_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert list(rows[0]) == list(columns(ClassificationTask))
    for row in rows:
        assert 0 <= row["train_acc"] <= 1 and 0 <= row["val_acc"] <= 1
        assert 1 <= row["train_iters"] <= 10 and row["samples_per_s"] > 0 and row["lr"] == 2e-3


def test_model_selected_on_validation_and_tested_once(reference) -> None:
    history = reference.history
    best = max(history, key=lambda r: (r["val_acc"], -r["val_loss"]))
    assert reference.best_epoch == best["epoch"]
    assert reference.val["acc"] == pytest.approx(best["val_acc"], abs=1e-12)
    assert reference.val["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert 0 <= reference.test["acc"] <= 1 and reference.test["n"] == 240
    results = json.loads((reference.run_dir / "results.json").read_text())
    assert results["best_epoch"] == reference.best_epoch and results["test"]["acc"] == reference.test["acc"]
    assert load_checkpoint(reference.run_dir, "best").epoch == reference.best_epoch
    assert not reference.model.training


def test_eval_reproduces_the_final_accuracy(reference, splits) -> None:
    stats = evaluate_checkpoint(reference.run_dir, splits=splits, device="cpu")
    assert stats["acc"] == reference.test["acc"] and stats["loss"] == pytest.approx(reference.test["loss"])
    val = evaluate_checkpoint(reference.run_dir / "checkpoints" / "best.json", split="val", splits=splits)
    assert val["acc"] == reference.val["acc"] and val["epoch"] == reference.best_epoch
    with pytest.raises(ConfigError, match=r"split must be train, val or test"):
        evaluate_checkpoint(reference.run_dir, split="dev", splits=splits)


class Crash(Exception):
    pass


def _crash_after(step: int):
    def hook(info):
        if info["step"] == step:
            raise Crash(f"simulated crash after step {step}")

    return hook


def test_resume_reaches_the_same_weights(reference, splits, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(Crash):  # 4 steps per epoch: dies in the middle of epoch 2
        train(tiny(), run_dir=run, splits=splits, progress=False, on_step_end=_crash_after(6))
    assert load_checkpoint(run, "last").epoch == 1
    result = train(tiny(), resume=run, splits=splits, progress=False)
    _assert_same_checkpoint(reference.run_dir, run, "last")
    _assert_same_checkpoint(reference.run_dir, run, "best")
    assert _untimed(result.history) == _untimed(reference.history)
    assert result.test == reference.test and result.best_epoch == reference.best_epoch
    assert [r["epoch"] for r in read_metrics_csv(run / "metrics.csv")] == [1, 2, 3]


def test_mid_epoch_resume_reaches_the_same_weights(reference, splits, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(Crash):  # checkpoints after steps 3 and 6 (inside epochs 1 and 2)
        train(
            tiny("train.checkpoint_every=3"),
            run_dir=run,
            splits=splits,
            progress=False,
            on_step_end=_crash_after(7),
        )
    last = load_checkpoint(run, "last")
    assert (last.meta["epoch"], last.meta["batch"], last.meta["step"]) == (1, 2, 6)
    result = train(tiny("train.checkpoint_every=3"), resume=run, splits=splits, progress=False)
    _assert_same_checkpoint(reference.run_dir, run, "last")
    assert _untimed(result.history) == _untimed(reference.history)


def test_resume_extends_a_finished_run(reference, splits, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny("train.epochs=2"), run_dir=run, splits=splits, progress=False)
    result = train(tiny(), resume=run, splits=splits, progress=False)
    assert len(result.history) == 3
    _assert_same_checkpoint(reference.run_dir, run, "last")


def test_resume_refuses_a_different_config(reference, splits) -> None:
    with pytest.raises(
        ConfigError, match=r"cannot resume .* with a different config \(optim.lr\).*without CONFIG reuses"
    ):
        train(tiny("optim.lr=0.1"), resume=reference.run_dir, splits=splits, progress=False)


def test_new_run_refuses_an_existing_run(reference, splits) -> None:
    with pytest.raises(ConfigError, match=r"already holds a run; resume it with --resume"):
        train(tiny(), run_dir=reference.run_dir, splits=splits, progress=False)


def test_early_stopping_on_validation(splits, tmp_path: Path) -> None:
    # with a learning rate this small, validation accuracy soon stops improving
    result = train(
        tiny("optim.lr=1e-12", "train.patience=1", "train.epochs=5"),
        run_dir=tmp_path / "run",
        splits=splits,
        progress=False,
    )
    assert result.stopped_early and len(result.history) == result.best_epoch + 1 < 5
    assert result.best_epoch == max(result.history, key=lambda r: (r["val_acc"], -r["val_loss"]))["epoch"]
    assert load_checkpoint(tmp_path / "run", "last").meta["stopped_early"] is True


def test_explicit_variant_has_no_iterations(splits, tmp_path: Path) -> None:
    result = train(
        tiny("model.variant=explicit", "train.epochs=1", "optim.scheduler=step", "optim.step_size=1"),
        run_dir=tmp_path / "run",
        splits=splits,
        progress=False,
    )
    assert result.history[0]["train_iters"] is None and result.val["iters"] is None
    assert (tmp_path / "run" / "curves.png").is_file() and not (tmp_path / "run" / "iterations.png").exists()
    assert load_checkpoint(tmp_path / "run", "last").meta["scheduler"]["last_epoch"] == 1


def test_jacobian_variant_and_float64(splits, tmp_path: Path) -> None:
    result = train(
        tiny("model.variant=jacobian", "train.epochs=1", "run.dtype=float64", "run.plots=false"),
        run_dir=tmp_path / "run",
        splits=splits,
        progress=False,
    )
    assert all(p.dtype == torch.float64 for p in result.model.parameters())
    assert math.isfinite(result.history[0]["train_loss"]) and not (tmp_path / "run" / "curves.png").exists()
    ckpt = load_checkpoint(tmp_path / "run", "last")
    assert ckpt.model["readout.fc.weight"].dtype == torch.float64


def test_process_settings_are_restored(splits, tmp_path: Path) -> None:
    fill = torch.utils.deterministic
    threads, det, filling = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), True
    fill.fill_uninitialized_memory = filling
    seen = {}

    def look(info):
        seen["det"] = torch.are_deterministic_algorithms_enabled()
        seen["threads"] = torch.get_num_threads()
        seen["fill"] = fill.fill_uninitialized_memory  # the NaN-filling debug aid costs 8 % of a step

    train(tiny("train.epochs=1"), run_dir=tmp_path / "run", splits=splits, progress=False, on_epoch_end=look)
    assert seen == {"det": True, "threads": 1, "fill": False}
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, det)
    assert fill.fill_uninitialized_memory is filling


def test_progress_bar_does_not_print_to_stdout(splits, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # tqdm draws only on a terminal
    train(tiny("train.epochs=1", "run.plots=false"), run_dir=tmp_path / "run", splits=splits, progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "epoch 1/1" in err


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


KILLED_RUN = """
import sys, time
from fpnets.train import load_config, train
cfg = load_config("digits", sys.argv[2:])

def slow_after_first_epoch(info):
    if info["epoch"] >= 1:
        time.sleep(0.5)  # leaves time to kill the process; does not change any number

train(cfg, run_dir=sys.argv[1], progress=False, on_step_end=slow_after_first_epoch)
"""


def test_sigkill_then_cli_resume(reference, tmp_path: Path, capsys) -> None:
    from fpnets.cli import main

    run = tmp_path / "run"
    script = tmp_path / "killed.py"
    script.write_text(KILLED_RUN)
    proc = subprocess.Popen([sys.executable, str(script), str(run), *TINY], env=_env())
    try:
        deadline = time.monotonic() + 60
        while not (run / "checkpoints" / "last.json").exists():
            assert proc.poll() is None, "the training process ended early"
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(run, "last").epoch == 1
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"test acc {100 * reference.test['acc']:.2f}%" in out
    _assert_same_checkpoint(reference.run_dir, run, "last")
    _assert_same_checkpoint(reference.run_dir, run, "best")


DDP_WORKER = """
import os, sys, torch
from safetensors.torch import save_file
from fpnets.data import Split, Splits, dataset_info
from fpnets.train import load_config, train

out = sys.argv[1]
rank = os.environ["RANK"]
cfg = load_config("digits", sys.argv[2:])
result = train(cfg, run_dir=f"{out}/digits", progress=False)
state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
save_file(state, f"{out}/digits-rank{rank}.safetensors")
# one write per line (print writes the text and the newline separately, so two ranks' lines
# could interleave on the shared pipe)
sys.stdout.write(f"rank {rank} digits val {result.val['acc']} test {result.test['acc']}\\n")
sys.stdout.flush()

# The CIFAR-10 (unaugmented) network has encoder parameters that never get a gradient.
g = torch.Generator().manual_seed(0)
def split(n):
    return Split(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                 torch.randint(0, 10, (n,), generator=g))
splits = Splits(split(40), split(10), split(10), dataset_info("cifar10"))
cfg = load_config("cifar10-unaugmented", ["train.epochs=1", "data.batch_size=10", "solver.max_iter=3",
                                          "run.threads=1", "run.plots=false", "run.tensorboard=false"])
result = train(cfg, run_dir=f"{out}/cifar", splits=splits, progress=False)
save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, f"{out}/cifar-rank{rank}.safetensors")
"""


def test_data_parallel_two_processes(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(DDP_WORKER))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(script),
        str(tmp_path),
        *TINY,
        "train.epochs=2",
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "warn" not in proc.stderr.lower(), proc.stderr[-3000:]
    for name in ("digits", "cifar"):
        a = load_file(str(tmp_path / f"{name}-rank0.safetensors"))
        b = load_file(str(tmp_path / f"{name}-rank1.safetensors"))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs between the ranks"
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank"))
    assert len(lines) == 2 and lines[0].split(" ", 2)[2] == lines[1].split(" ", 2)[2]
    rows = read_metrics_csv(tmp_path / "digits" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    ckpt = load_checkpoint(tmp_path / "digits", "last")
    assert ckpt.meta["world_size"] == 2 and len(ckpt.meta["rng"]) == 2
    rank0 = load_file(str(tmp_path / "digits-rank0.safetensors"))
    best = load_checkpoint(tmp_path / "digits", "best").model
    assert all(torch.equal(best[k], rank0[k]) for k in best)


def test_tensorboard_when_available(splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    calls: list[tuple] = []

    class FakeWriter:
        def __init__(self, log_dir: str) -> None:
            calls.append(("init", log_dir))

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            calls.append((tag, step))

        def flush(self) -> None:
            pass

        def close(self) -> None:
            calls.append(("close",))

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    train(
        tiny("train.epochs=2", "run.tensorboard=true", "run.plots=false"),
        run_dir=tmp_path / "r",
        splits=splits,
        progress=False,
    )
    assert calls[0] == ("init", str(tmp_path / "r" / "tensorboard")) and calls[-1] == ("close",)
    tags = {c for c in calls if len(c) == 2 and c[0] != "init"}
    assert {("loss/train", 1), ("acc/val", 2), ("iters/train", 2), ("run/lr", 1)} <= tags


def test_runs_without_tqdm(splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    train(tiny("train.epochs=1", "run.plots=false"), run_dir=tmp_path / "r", splits=splits, progress=True)
    assert capsys.readouterr() == ("", "")


def test_final_validation_reuses_the_selected_epochs_numbers(reference, splits, monkeypatch) -> None:
    # the result's val is the best epoch's own validation, not a second pass over the split: it
    # equals a fresh evaluation of the best checkpoint, and a run validates once per epoch
    fresh = evaluate_checkpoint(reference.run_dir, split="val", splits=splits, device="cpu")
    assert {k: fresh[k] for k in reference.val} == reference.val
    best = reference.history[reference.best_epoch - 1]
    assert reference.val["acc"] == best["val_acc"] and reference.val["loss"] == best["val_loss"]
    import fpnets.train._loop as loop

    calls = []
    real = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    train(tiny("train.epochs=2"), run_dir=reference.run_dir.parent / "twice", splits=splits, progress=False)
    assert len(calls) == 2 + 1  # validation after each epoch, then the test split once
