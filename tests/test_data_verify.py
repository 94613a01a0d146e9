"""Local data files against the official checksums: mismatches, files of another data set, missing
files in an explicit data_dir, the per-process digest cache, and the real files when present."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import urllib.error
from pathlib import Path

import pytest

from fpnets.data import (
    DATASETS,
    ChecksumError,
    DataError,
    DatasetNotFoundError,
    _datasets,
    _download,
    _verify,
    load_splits,
)
from fpnets.data._verify import KnownFile
from test_data_loading import IDX_FILES, make_cifar, make_idx_set, make_svhn

from conftest import SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No FPNETS_DATA, a private cache, no network, and a fresh digest cache."""
    monkeypatch.delenv("FPNETS_DATA", raising=False)
    monkeypatch.setenv("FPNETS_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(_download, "urlopen", offline)
    _verify.clear_cache()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _content_sha(path: Path) -> str:
    data = path.read_bytes()
    return _sha(gzip.decompress(data) if path.name.endswith(".gz") else data)


def _official(monkeypatch, folder: Path, gz: bool = True) -> None:
    """Make the files in ``folder`` MNIST's official ones: their content digests in the registry."""
    sums = {f: (_content_sha(folder / (f + ".gz" if gz else f)),) for f in IDX_FILES}
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], content_sums=sums))
    for f, (digest,) in sums.items():
        monkeypatch.setitem(_verify.KNOWN_FILES, digest, KnownFile("mnist", "MNIST", f))


def test_mismatch_names_every_file_and_how_to_skip(tmp_path):
    make_idx_set(tmp_path / "d")
    with pytest.raises(ChecksumError) as info:
        load_splits("mnist", tmp_path / "d", val_size=5)
    msg = str(info.value)
    for f in IDX_FILES:
        assert f"{tmp_path / 'd' / f}.gz: checksum does not match the official MNIST {f} (SHA-256 " in msg
    assert "verify=False" in msg and "data.verify = false" in msg
    assert "download=True" not in msg  # not a file of the download cache
    assert isinstance(info.value, DataError)
    # the user's own files load with the check switched off
    assert load_splits("mnist", tmp_path / "d", val_size=5, verify=False).sizes["test"] == 12


@pytest.mark.parametrize("gz", [True, False])
def test_official_content_passes_compressed_recompressed_or_unpacked(tmp_path, monkeypatch, gz):
    make_idx_set(tmp_path / "d", gz=gz)
    _official(monkeypatch, tmp_path / "d", gz=gz)
    assert load_splits("mnist", tmp_path / "d", val_size=5).sizes == {"train": 35, "val": 5, "test": 12}
    if gz:  # compressed again with other settings: other .gz bytes, same content
        path = tmp_path / "d" / "train-images-idx3-ubyte.gz"
        recompressed = gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=12345)
        assert recompressed != path.read_bytes()
        path.write_bytes(recompressed)
        assert len(load_splits("mnist", tmp_path / "d", val_size=5).train) == 35


def test_official_compressed_digest_passes(tmp_path, monkeypatch):
    make_idx_set(tmp_path / "d")
    remotes = tuple(
        dataclasses.replace(r, sha256=_sha((tmp_path / "d" / r.filename).read_bytes()), size=None)
        for r in DATASETS["mnist"].remotes
    )
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], remotes=remotes))
    calls = []
    real = _verify.content_digests
    monkeypatch.setattr(_verify, "content_digests", lambda p: calls.append(p) or real(p))
    assert len(load_splits("mnist", tmp_path / "d", val_size=5).test) == 12
    assert calls == []  # the .gz digest matched: nothing was decompressed to verify it


def test_file_of_another_data_set_is_named(tmp_path, monkeypatch):
    make_idx_set(tmp_path / "d")
    images = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    labels = tmp_path / "d" / "t10k-labels-idx1-ubyte.gz"
    known = {
        _sha(images.read_bytes()): KnownFile("fashion-mnist", "Fashion-MNIST", "train-images-idx3-ubyte.gz"),
        _content_sha(labels): KnownFile("fashion-mnist", "Fashion-MNIST", "t10k-labels-idx1-ubyte"),
    }
    for digest, file in known.items():
        monkeypatch.setitem(_verify.KNOWN_FILES, digest, file)
    with pytest.raises(ChecksumError) as info:
        load_splits("mnist", tmp_path / "d", val_size=5)
    msg = str(info.value)
    assert (
        f"{images}: this is Fashion-MNIST's train-images-idx3-ubyte.gz, not MNIST's train-images-idx3-ubyte; "
        "point data_dir at the MNIST files, or load this folder as 'fashion-mnist'" in msg
    )
    assert (
        f"{labels}: this is Fashion-MNIST's t10k-labels-idx1-ubyte, not MNIST's t10k-labels-idx1-ubyte" in msg
    )
    assert f"{tmp_path / 'd' / 'train-labels-idx1-ubyte.gz'}: checksum does not match" in msg


def test_swapped_files_are_named(tmp_path, monkeypatch):
    make_idx_set(tmp_path / "d", gz=False)
    _official(monkeypatch, tmp_path / "d", gz=False)
    a, b = tmp_path / "d" / "train-labels-idx1-ubyte", tmp_path / "d" / "t10k-labels-idx1-ubyte"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    with pytest.raises(ChecksumError, match=r"this is MNIST's t10k-labels-idx1-ubyte, not its train-labels"):
        load_splits("mnist", tmp_path / "d", val_size=5)


def test_svhn_and_cifar_files_are_verified(tmp_path):
    make_svhn(tmp_path / "svhn")
    with pytest.raises(ChecksumError, match=r"train_32x32.mat: checksum does not match the official SVHN"):
        load_splits("svhn", tmp_path, val_size=5)
    make_cifar(tmp_path / "cifar-10-batches-py")
    with pytest.raises(ChecksumError, match=r"data_batch_1: checksum does not match the official CIFAR-10"):
        load_splits("cifar10", tmp_path, val_size=2)
    assert len(load_splits("cifar10", tmp_path, val_size=2, verify=False).test) == 4


def test_bad_gzip_is_reported_by_the_check(tmp_path):
    make_idx_set(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: bad gzip stream"):
        load_splits("mnist", tmp_path, val_size=5)


def test_each_file_is_hashed_once_per_process(tmp_path, monkeypatch):
    make_idx_set(tmp_path / "d")
    _official(monkeypatch, tmp_path / "d")
    hashed: list[int] = []
    real = _verify._hex_digests
    monkeypatch.setattr(_verify, "_hex_digests", lambda chunks: hashed.append(1) or real(chunks))
    load_splits("mnist", tmp_path / "d", val_size=5)
    first = len(hashed)
    assert first == 8  # each file's bytes, then its decompressed content (the .gz bytes are not official)
    load_splits("mnist", tmp_path / "d", val_size=5, seed=1)
    assert len(hashed) == first  # cached by path, size and modification time
    path = tmp_path / "d" / "t10k-labels-idx1-ubyte.gz"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the file changed
    load_splits("mnist", tmp_path / "d", val_size=5)
    assert len(hashed) == first + 2


def test_explicit_data_dir_missing_a_file_never_falls_back(tmp_path):
    make_idx_set(tmp_path / "cache" / "mnist")  # a complete set in the cache
    make_idx_set(tmp_path / "mine")
    (tmp_path / "mine" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_splits("mnist", tmp_path / "mine", val_size=5, verify=False)
    msg = str(info.value)
    assert f"not in data_dir {tmp_path / 'mine'}" in msg
    assert f"Missing from {tmp_path / 'mine'}: t10k-labels-idx1-ubyte." in msg
    assert f"The download cache {tmp_path / 'cache' / 'mnist'} is not used when data_dir is given" in msg
    # without data_dir the cache is used
    assert len(load_splits("mnist", val_size=5, verify=False).test) == 12


def test_verify_must_be_a_bool(tmp_path):
    make_idx_set(tmp_path)
    with pytest.raises(TypeError, match=r"verify must be True or False, got 'no'"):
        load_splits("mnist", tmp_path, val_size=5, verify="no")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# The real files (skipped where ../shared/data is absent)
# --------------------------------------------------------------------------------------------------

needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "fashion-mnist").is_dir(),
    reason="no shared MNIST / Fashion-MNIST files on this machine",
)


@needs_shared
def test_real_mnist_files_verify():
    splits = load_splits("mnist", SHARED_DATA / "mnist", download=False)
    assert splits.sizes == {"train": 55000, "val": 5000, "test": 10000}
    spec = DATASETS["fashion-mnist"]
    _datasets.verify_files(spec, _datasets.locate(spec, SHARED_DATA / "fashion-mnist", False))


@needs_shared
def test_real_fashion_mnist_given_as_mnist_is_named():
    with pytest.raises(ChecksumError) as info:
        load_splits("mnist", SHARED_DATA / "fashion-mnist", download=False)
    msg = str(info.value)
    for f in IDX_FILES:
        assert f"{SHARED_DATA / 'fashion-mnist' / f}.gz: this is Fashion-MNIST's {f}, not MNIST's {f}" in msg
