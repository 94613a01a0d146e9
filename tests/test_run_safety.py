"""Runs lose nothing: a failure at any file write of a run (ENOSPC, a crash) is resumed to exactly
the uninterrupted run's results and best weights; bad checkpoints, full disks, locked runs and
resume mistakes give one clear error."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fpnets.cli import main
from fpnets.train import (
    CheckpointError,
    ConfigError,
    RunLock,
    WriteError,
    evaluate_checkpoint,
    load_checkpoint,
    load_config,
    train,
)
from fpnets.train import _checkpoint as ck

SMALL = [
    "data.limit=120",
    "data.batch_size=60",
    "data.eval_batch_size=120",
    "solver.max_iter=6",
    "train.epochs=3",
    "optim.lr=2e-2",
    "run.threads=1",
    "run.tensorboard=false",
    "run.progress=false",
]


def small(*extra: str):
    return load_config("digits", [*SMALL, *extra])


@pytest.fixture(scope="module")
def splits():
    return small().make_task().load_splits(None)


@pytest.fixture(scope="module")
def reference(splits, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    published: list[str] = []
    original = ck._publish

    def counting(tmp: Path, final: Path) -> None:
        published.append(final.name)
        original(tmp, final)

    ck._publish = counting  # type: ignore[assignment]
    try:
        result = train(small(), run_dir=run, splits=splits)
    finally:
        ck._publish = original  # type: ignore[assignment]
    return result, published


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _same_best(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a, "best").model, load_checkpoint(b, "best").model
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_reference_run_writes_every_kind_of_file(reference) -> None:
    result, published = reference
    # the run's best epoch is not its last, so a stale best would show
    assert result.best_epoch in (1, 2, 3)
    names = {n.split(".")[-2] if n.startswith("ckpt-") else n for n in published}
    assert {"model", "state", "last.json", "best.json", "metrics.csv", "results.json", "run.json"} <= names


def test_a_failure_at_every_write_is_resumed_to_the_same_results(reference, splits, tmp_path: Path) -> None:
    """ENOSPC at the k-th file write (k = 1 … every write of the run: before, between and after the
    tensor files and manifests of every checkpoint), then ``--resume`` and ``eval``: the same
    results.json and the same best weights as the uninterrupted run."""
    result, published = reference
    expected = _results(result.run_dir)
    original = ck._publish
    for k in range(1, len(published) + 1):
        run = tmp_path / f"run{k}"
        count = [0]

        def failing(tmp: Path, final: Path, k: int = k, count: list[int] = count) -> None:
            count[0] += 1
            if count[0] == k:
                raise OSError(errno.ENOSPC, "No space left on device")
            original(tmp, final)

        ck._publish = failing  # type: ignore[assignment]
        try:
            with pytest.raises(
                WriteError, match=r"No space left on device; the files written before are intact"
            ):
                train(small(), run_dir=run, splits=splits)
        finally:
            ck._publish = original  # type: ignore[assignment]
        if not (run / "checkpoints" / "last.json").exists():
            assert k <= published.index("last.json") + 1  # failed before the first checkpoint was whole
            with pytest.raises(CheckpointError, match=r"no checkpoint in"):
                train(small(), resume=run, splits=splits)
            continue
        train(small(), resume=run, splits=splits)
        assert _results(run) == expected, f"write {k} ({published[k - 1]})"
        assert _same_best(result.run_dir, run), f"write {k} ({published[k - 1]})"
        stats = evaluate_checkpoint(run, splits=splits, device="cpu")
        assert stats["acc"] == expected["test"]["acc"] and stats["epoch"] == expected["best_epoch"]


def test_a_stale_best_after_a_crash_between_last_and_best_is_repointed(
    reference, splits, tmp_path: Path
) -> None:
    """The issue's case: the process dies right after last.json of the epoch that becomes best."""
    result, _ = reference
    best = result.best_epoch
    run = tmp_path / "run"
    original = ck.atomic_write_text

    class Killed(BaseException):
        pass

    def dying(path, text):
        original(path, text)
        if Path(path).name == "last.json" and json.loads(text)["epoch"] == best:
            raise Killed  # not an Exception: like a kill, nothing of the trainer's runs after it

    ck.atomic_write_text = dying  # type: ignore[assignment]
    try:
        with pytest.raises(Killed):
            train(small(), run_dir=run, splits=splits)
    finally:
        ck.atomic_write_text = original  # type: ignore[assignment]
    assert load_checkpoint(run, "last").meta["best"]["epoch"] == best
    if best > 1:
        assert load_checkpoint(run, "best").epoch < best  # stale
    train(small(), resume=run, splits=splits)
    assert _results(run) == _results(result.run_dir) and _same_best(result.run_dir, run)
    assert evaluate_checkpoint(run, splits=splits)["epoch"] == best


def test_a_missing_best_is_an_error_not_the_last_weights(reference, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference[0].run_dir, run)
    (run / "checkpoints" / "best.json").unlink()
    with pytest.raises(CheckpointError, match=r"has a last.json but no best.json"):
        evaluate_checkpoint(run)


def _edit_manifest(run: Path, tag: str, change) -> None:
    path = run / "checkpoints" / f"{tag}.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: m.pop("epoch"), r"has no 'epoch' entry"),
        (lambda m: m.update(epoch="3"), r"'epoch' must be an integer, got \"3\""),
        (lambda m: m.pop("config"), r"holds no config"),
        (lambda m: m.pop("optimizer"), r"holds no optimizer state; it cannot be resumed"),
    ],
)
def test_hand_edited_checkpoints_give_clear_errors(reference, splits, tmp_path: Path, change, match) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference[0].run_dir, run)
    _edit_manifest(run, "last", change)
    with pytest.raises((CheckpointError, ConfigError), match=match):
        train(small("train.epochs=4"), resume=run, splits=splits)


def _rewrite_tensors(run: Path, role: str, edit) -> None:
    """Change a checkpoint's tensor file and fix its hash in the manifests (a consistent forgery)."""
    from safetensors.torch import load_file, save_file

    manifest = json.loads((run / "checkpoints" / "last.json").read_text())
    name = manifest["files"][role]["name"]
    path = run / "checkpoints" / name
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))
    for tag in ("last", "best"):
        _edit_manifest(
            run,
            tag,
            lambda m: (
                m["files"][role].update(sha256=ck._sha256(path), bytes=path.stat().st_size)
                if m["files"][role]["name"] == name
                else None
            ),
        )


@pytest.mark.parametrize(
    ("role", "edit", "match"),
    [
        ("model", lambda t: t.update({k: v[:1] for k, v in list(t.items()) if v.dim() == 4}), r"does not fit the model"),
        ("model", lambda t: t.update({k: v * float("nan") for k, v in list(t.items()) if v.dim() == 4}), r"holds NaN or Inf weights"),
        ("state", lambda t: t.update({k: v[..., :1].contiguous() for k, v in list(t.items()) if k.endswith("exp_avg") and v.dim() == 4}), r"optimizer state 'exp_avg' of parameter \d+ has shape"),
    ],
)  # fmt: skip
def test_inconsistent_tensors_give_clear_errors(reference, splits, tmp_path: Path, role, edit, match) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference[0].run_dir, run)
    _rewrite_tensors(run, role, edit)
    with pytest.raises(CheckpointError, match=match):
        train(small("train.epochs=4"), resume=run, splits=splits)


def test_a_locked_run_refuses_a_second_writer(reference, splits, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference[0].run_dir, run)
    code = (
        "import sys, time\nfrom fpnets.train import RunLock\n"
        f"RunLock({str(run)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            ConfigError, match=rf"is in use: another process \(pid {holder.pid}\) is training in it"
        ):
            train(small("train.epochs=4"), resume=run, splits=splits)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    # the lock dies with its process (kill -9 included): the run resumes
    result = train(small("train.epochs=4"), resume=run, splits=splits)
    assert len(result.history) == 4
    lock = RunLock(run).acquire()  # released after training
    lock.release()


def test_resume_keeps_history_and_refuses_what_would_rewrite_it(reference, splits, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference[0].run_dir, run)
    info = json.loads((run / "run.json").read_text())
    with pytest.raises(ConfigError, match=r"cannot resume .* with a different config \(run.dtype\)"):
        train(small("train.epochs=4", "run.dtype=float64"), resume=run, splits=splits)
    train(small("train.epochs=4"), resume=run, splits=splits)
    after = json.loads((run / "run.json").read_text())
    assert after["started_at"] == info["started_at"] and after["resumed"][0]["from_epoch"] == 3
    # provenance of the first session and of the resume: commit, command line, machine
    for record in (info, after["resumed"][0]):
        assert {"git", "command", "machine"} <= set(record)
        assert record["machine"]["cores"] >= 1
    assert after["resumed"][0]["git"] == info["git"]


def test_cli_resume_mistakes(reference, tmp_path: Path, capsys) -> None:
    run = reference[0].run_dir
    assert main(["train", "--resume", str(run), "--run-dir", str(tmp_path / "other")]) == 2
    assert "name different runs" in capsys.readouterr().err
    # a bare --resume takes the newest run; if it has no checkpoint, it says so instead of an older one
    root = tmp_path / "root"
    (root / "digits-fpn-20260101-000000" / "checkpoints").mkdir(parents=True)
    (root / "digits-fpn-20260101-000000" / "checkpoints" / "last.json").write_text("{}")
    (root / "digits-fpn-20270101-000000").mkdir()
    assert main(["train", "--resume", "--set", f'run.root="{root}"']) == 2
    err = capsys.readouterr().err
    assert "the newest run of 'digits-fpn'" in err and "20270101" in err and "has no checkpoint" in err


def test_disk_full_and_unwritable_roots_give_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def full(tmp: Path, final: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "_publish", full)
    assert main(["train", "--set", f'run.root="{tmp_path}"', *[f"--set={s}" for s in SMALL]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device; the files written before are intact" in err[0]
    monkeypatch.undo()

    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    assert main(["train", "--set", f'run.root="{tmp_path}/ro"', *[f"--set={s}" for s in SMALL]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "permission denied; choose a writable place with --set run.root=DIR" in err[0]


def test_zero_epochs_writes_no_nan_and_no_phantom_checkpoint(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--run-dir",
                str(run),
                *[f"--set={s}" for s in SMALL],
                "--set=train.epochs=0",
                "--quiet",
            ]
        )
        == 0
    )
    text = (run / "results.json").read_text()
    assert "NaN" not in text
    results = json.loads(text)
    assert results["best_epoch"] == 0 and results["checkpoint"] is None and results["test"]["acc"] is None
    assert main(["eval", str(run)]) == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_binary_config_file_is_named(tmp_path: Path, capsys) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(bytes(range(256)))
    assert main(["config", str(path)]) == 2
    assert f"{path}: not a UTF-8 text file" in capsys.readouterr().err


def test_solver_given_as_empty_table_is_an_error() -> None:
    from fpnets.models import build_model

    with pytest.raises(ValueError, match=r"an empty solver mapping names no solver"):
        build_model("digits", "fpn", solver={})


def test_interrupted_process_leaves_no_temp_files(tmp_path: Path) -> None:
    """A kill -9 in the middle of training: only whole files remain, and the run resumes."""
    run = tmp_path / "run"
    code = (
        "from fpnets.train import load_config, train\n"
        f"cfg = load_config('digits', {[*SMALL, 'train.epochs=200']!r})\n"
        f"train(cfg, run_dir={str(run)!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(600):
            if (run / "checkpoints" / "last.json").exists() and load_checkpoint(run, "last").epoch >= 2:
                break
            if proc.poll() is not None:
                break
            import time

            time.sleep(0.1)
        os.kill(proc.pid, 9)
    finally:
        proc.wait()
    epoch = load_checkpoint(run, "last").epoch
    assert epoch >= 2
    result = train(small(f"train.epochs={epoch + 1}"), resume=run)
    assert len(result.history) == epoch + 1
