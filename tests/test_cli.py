"""The ``fpnets`` command line: train, eval, config, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fpnets.cli import main
from fpnets.train import load_checkpoint, read_metrics_csv

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--set",
    "data.limit=240",
    "--set",
    "data.batch_size=60",
    "--set",
    "solver.max_iter=10",
    "--set",
    "run.tensorboard=false",
    "--threads",
    "1",
]


def _accuracies(out: str) -> dict[str, str]:
    return dict(re.findall(r"\b(val|test) acc (\d+\.\d+)%", out))


def test_train_then_eval(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--set", "train.epochs=2", "--device", "cpu", *TINY]) == 0
    out = capsys.readouterr().out
    assert "training digits-fpn" in out and "parameters" in out
    assert re.search(r"epoch 1/2  train loss \d\.\d+ acc [\d.]+%  val loss", out)
    accs = _accuracies(out)
    assert set(accs) == {"val", "test"}
    for name in ("config.toml", "metrics.csv", "curves.png", "iterations.png", "results.json"):
        assert (run / name).is_file(), name
    assert len(read_metrics_csv(run / "metrics.csv")) == 2
    assert load_checkpoint(run, "best").meta["config"]["run"]["threads"] == 1

    assert main(["eval", str(run)]) == 0
    assert _accuracies(capsys.readouterr().out)["test"] == accs["test"]
    assert main(["eval", str(run / "checkpoints" / "best.json"), "--split", "val", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert f"{100 * stats['acc']:.2f}" == accs["val"] and stats["split"] == "val"


def test_quiet_prints_only_the_result(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        "digits",
        "--run-dir",
        str(run),
        "--set",
        "train.epochs=1",
        "--quiet",
        "--dtype",
        "float64",
    ]
    assert main([*args, *TINY]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("best epoch 1 of 1: val acc") and lines[1].startswith("test acc")
    assert lines[2] == f"run directory: {run}" and len(lines) == 3
    assert captured.err == ""
    assert load_checkpoint(run, "last").model["readout.fc.weight"].dtype == torch.float64


def test_resume_without_a_run_takes_the_latest(tmp_path: Path, capsys) -> None:
    root = ["--set", f'run.root="{tmp_path}"']
    assert main(["train", *root, "--set", "train.epochs=1", "--quiet", *TINY]) == 0
    (run,) = tmp_path.iterdir()
    assert re.fullmatch(r"digits-fpn-\d{8}-\d{6}", run.name)
    capsys.readouterr()
    assert main(["train", "--resume", *root, "--set", "train.epochs=2", *TINY]) == 0
    out = capsys.readouterr().out
    assert "resuming digits-fpn" in out and "from epoch 1" in out and "epoch 1/2" not in out
    assert [r["epoch"] for r in read_metrics_csv(run / "metrics.csv")] == [1, 2]
    assert list(tmp_path.iterdir()) == [run]


def _fails(args: list[str], capsys, match: str) -> str:
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fpnets: error: ") and "Traceback" not in err
    assert re.search(match, err), err
    return err


def test_unknown_key_is_a_one_line_error(capsys) -> None:
    _fails(
        ["train", "--set", "train.epoch=1"], capsys, r"unknown key 'epoch' in \[train\]; valid keys: epochs"
    )


def test_wrong_type_is_a_one_line_error(capsys) -> None:
    _fails(["train", "--set", "optim.lr=fast"], capsys, r'optim.lr must be a number, got "fast"')


def test_unknown_config_is_a_one_line_error(capsys) -> None:
    _fails(
        ["train", "imagenet"], capsys, r"'imagenet' is neither a file nor a bundled config; bundled: cifar10"
    )


def test_missing_data_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "data"
    empty.mkdir()
    args = ["train", "mnist", "--data-dir", str(empty), "--set", "data.download=false"]
    args += ["--set", f'run.root="{tmp_path / "runs"}"']
    _fails(args, capsys, r"mnist: data files not found .* train-images-idx3-ubyte")
    assert not (tmp_path / "runs").exists()  # no empty run directory left behind


def test_bad_model_option_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    args = ["train", "--set", "model.options={depth = 3}", "--set", f'run.root="{tmp_path}"']
    _fails(args, capsys, r"unknown option\(s\) 'depth' for arch 'digits'")
    assert not list(tmp_path.iterdir())


def test_nothing_to_resume_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    _fails(["train", "--resume", "--set", f'run.root="{tmp_path}"'], capsys, r"no run of 'digits-fpn'")
    _fails(["train", "--resume", str(tmp_path / "gone")], capsys, r"no checkpoint|not a run directory")


def test_eval_of_nothing_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    _fails(["eval", str(tmp_path)], capsys, r"no checkpoint in")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(capsys) -> None:
    _fails(["train", "--device", "cuda"], capsys, r"CUDA is not available; use --device cpu")


def test_config_command(capsys) -> None:
    assert main(["config", "svhn", "--set", "model.variant=jacobian"]) == 0
    out = capsys.readouterr().out
    assert 'name = "ift"' in out and "max_iter = 200" in out
    assert main(["config", "--list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == sorted(names)
    assert {"cifar10", "cifar10-unaugmented", "digits", "fashion-mnist", "mnist", "svhn"} <= set(names)


def test_no_command_prints_help(capsys) -> None:
    assert main([]) == 2
    assert "usage: fpnets" in capsys.readouterr().out


def test_argparse_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--device", "tpu"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["train", "--threads", "-1"])


def test_python_dash_m(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "fpnets", "train", "--set", "train.epoch=1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("fpnets: error: override 'train.epoch=1': unknown key")
