"""Checkpoints: round trip without pickle, atomic writes, garbage collection, corruption detection."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fpnets.train import CheckpointError, load_checkpoint, save_checkpoint
from fpnets.train import _checkpoint as ck


def _model_and_optimizer(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.9), weight_decay=1e-4)
    model(torch.randn(5, 4)).square().sum().backward()
    opt.step()
    return model, opt


def _save(directory: Path, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, tags=("last",)) -> Path:
    tensors, plain = ck.split_optimizer_state(opt.state_dict())
    rng_t, rng_p = ck.rng_state()
    return save_checkpoint(
        directory,
        model=model.state_dict(),
        tensors={**tensors, **rng_t},
        meta={"epoch": epoch, "step": 10 * epoch, "optimizer": plain, "rng": rng_p, "note": [1, 2.5, None]},
        tags=tags,
    )


def test_round_trip(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer()
    _save(tmp_path, model, opt, 1, tags=("last", "best"))
    ckpt = load_checkpoint(tmp_path, "last")
    assert ckpt.epoch == 1 and ckpt.meta["note"] == [1, 2.5, None]
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.model[key], value), key
    _, opt2 = _model_and_optimizer(seed=1)
    restored = ck.join_optimizer_state(ckpt.tensors, ckpt.meta["optimizer"], opt2.state_dict())
    opt2.load_state_dict(restored)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"] and b["param_groups"][0]["betas"] == (0.8, 0.9)
    for pid, entry in a["state"].items():
        for key, value in entry.items():
            assert torch.equal(b["state"][pid][key], value), (pid, key)
    # no pickle anywhere: only safetensors and JSON files
    assert {p.suffix for p in tmp_path.iterdir()} == {".safetensors", ".json"}
    assert load_checkpoint(tmp_path, "best").meta == ckpt.meta


def test_rng_states_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    tensors, plain = ck.rng_state()
    json_plain = json.loads(json.dumps(plain))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ck.set_rng_state(tensors, json_plain)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_crash_while_writing_the_manifest_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, opt = _model_and_optimizer()
    _save(tmp_path, model, opt, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("last.json"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, model, opt, 2)
    monkeypatch.undo()
    ckpt = load_checkpoint(tmp_path, "last")
    assert ckpt.epoch == 1
    for key, value in before.items():
        assert torch.equal(ckpt.model[key], value)
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was removed
    _save(tmp_path, model, opt, 2)  # the next save collects the orphaned epoch-2 files
    assert load_checkpoint(tmp_path, "last").epoch == 2
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_crash_while_writing_tensors_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, opt = _model_and_optimizer()
    _save(tmp_path, model, opt, 1)

    def half_write(tensors, path):
        Path(path).write_bytes(b"\x00" * 17)  # a torn write...
        raise KeyboardInterrupt  # ...then the process dies

    monkeypatch.setattr(ck, "save_file", half_write)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, model, opt, 2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path, "last").epoch == 1
    assert not list(tmp_path.glob("ckpt-0002*")) and not list(tmp_path.glob(".*.tmp"))


def test_garbage_collection_keeps_last_and_best(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer()
    _save(tmp_path, model, opt, 1, tags=("last", "best"))
    _save(tmp_path, model, opt, 2)
    _save(tmp_path, model, opt, 3)
    names = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert [n[:9] for n in names] == ["ckpt-0001", "ckpt-0001", "ckpt-0003", "ckpt-0003"]
    assert load_checkpoint(tmp_path, "best").epoch == 1 and load_checkpoint(tmp_path, "last").epoch == 3


def test_corrupted_file_is_detected(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer()
    _save(tmp_path, model, opt, 1)
    target = next(tmp_path.glob("*.model.safetensors"))
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupted \(SHA-256 mismatch\)"):
        load_checkpoint(tmp_path, "last")
    target.unlink()
    with pytest.raises(CheckpointError, match=r"is incomplete: .*model.safetensors is missing"):
        load_checkpoint(tmp_path, "last")


def test_load_survives_a_concurrent_save(tmp_path: Path, monkeypatch) -> None:
    """A live run saves (and deletes the files the old manifest named) between our reading the
    manifest and its files: the load reads the new manifest instead of failing (the race a reader
    of a training run's folder hits)."""
    model, opt = _model_and_optimizer()
    _save(tmp_path, model, opt, 1)
    real = ck.read_manifest
    saves = iter([2])

    def read_then_save(path):
        meta = real(path)
        epoch = next(saves, None)
        if epoch is not None:
            _save(tmp_path, model, opt, epoch)  # removes ckpt-0001-* (no manifest names them)
        return meta

    monkeypatch.setattr(ck, "read_manifest", read_then_save)
    ckpt = load_checkpoint(tmp_path, "last")
    assert ckpt.epoch == 2 and not list(tmp_path.glob("ckpt-0001-*"))
    # a run that saves on every read: a bounded number of tries, then a clear error
    saves = iter(range(3, 100))
    with pytest.raises(CheckpointError, match=r"changed 20 times while it was being read"):
        load_checkpoint(tmp_path, "last")


def test_load_while_another_thread_saves(tmp_path: Path) -> None:
    import threading

    model, opt = _model_and_optimizer()
    _save(tmp_path, model, opt, 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        epoch = 2
        try:
            while not stop.is_set():
                _save(tmp_path, model, opt, epoch)
                epoch += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        epochs = [load_checkpoint(tmp_path, "last").epoch for _ in range(200)]
    finally:
        stop.set()
        thread.join()
    assert not errors and epochs == sorted(epochs) and epochs[-1] > 1


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(CheckpointError, match=r"is not an fpnets checkpoint"):
        load_checkpoint(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"is not valid JSON"):
        load_checkpoint(tmp_path / "y.json")
    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_checkpoint(tmp_path / "z.json")
    with pytest.raises(CheckpointError, match=r"no checkpoint in"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"is not a run directory, a checkpoint manifest"):
        load_checkpoint(tmp_path / "nothing")


def test_manifest_lookup(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer()
    ckdir = tmp_path / "checkpoints"
    _save(ckdir, model, opt, 1)
    with pytest.raises(
        CheckpointError, match=r"has a last.json but no best.json: the best checkpoint is missing"
    ):
        ck.manifest_path(tmp_path)  # never the last weights in the best's place
    _save(ckdir, model, opt, 2, tags=("last", "best"))
    assert ck.manifest_path(tmp_path) == ckdir / "best.json"
    assert ck.manifest_path(ckdir, "last") == ckdir / "last.json"
    tensor_file = next(ckdir.glob("*.model.safetensors"))
    assert ck.manifest_path(tensor_file).name in ("last.json", "best.json")
    with pytest.raises(CheckpointError, match=r"no manifest in"):
        ck.manifest_path(ckdir / "ckpt-9999-00000000.model.safetensors")


def test_bad_tags(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer()
    with pytest.raises(ValueError, match=r"checkpoint tags must be among last, best"):
        _save(tmp_path, model, opt, 1, tags=("final",))
