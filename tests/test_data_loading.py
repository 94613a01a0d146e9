"""fpnets.data: file formats, splits, error messages and downloads, on small files written here."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from fpnets.data import (
    DATASETS,
    DataError,
    DatasetNotFoundError,
    Split,
    _download,
    dataset_info,
    hold_out,
    load_splits,
    read_cifar_batch,
    read_idx,
)
from fpnets.data._download import Remote

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No FPNETS_DATA from the environment, a private cache, and no network."""
    monkeypatch.delenv("FPNETS_DATA", raising=False)
    monkeypatch.setenv("FPNETS_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(_download, "urlopen", offline)


# --------------------------------------------------------------------------------------------------
# Writers of small files in each format
# --------------------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(arr)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_idx_set(folder: Path, n_train: int = 40, n_test: int = 12, gz: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write_idx(folder / name, arr, gz)
    return arrays


def make_svhn(folder: Path, n_train: int = 30, n_test: int = 10) -> dict:
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1), dtype=np.uint8)
        y[0, 0] = 10  # make sure the digit 0 appears
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = (x, y)
    return out


def cifar_batch(n: int, rng: np.random.Generator, str_keys: bool = False) -> dict:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    if str_keys:
        return {"data": data, "labels": labels}
    return {b"batch_label": b"training batch", b"data": data, b"labels": labels, b"filenames": [b"x.png"] * n}


def make_cifar(folder: Path, n: int = 4, protocol: int = 2) -> dict:
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = cifar_batch(n, rng)
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=protocol))
    return batches


# --------------------------------------------------------------------------------------------------
# Registry and digits
# --------------------------------------------------------------------------------------------------


def test_unknown_name_lists_valid_names():
    with pytest.raises(
        ValueError, match=r"unknown data set 'imagenet'; valid names: digits, mnist, fashion-mnist"
    ):
        load_splits("imagenet")


def test_registry_infos():
    assert set(DATASETS) == {"digits", "mnist", "fashion-mnist", "svhn", "cifar10"}
    assert dataset_info("MNIST").mean == (0.1307,) and dataset_info("mnist").std == (0.3081,)
    assert dataset_info("fashion-mnist").mean == (0.2860,) and dataset_info("fashion_mnist").std == (0.3530,)
    assert dataset_info("svhn").in_channels == 3 and dataset_info("cifar10").std == (0.229, 0.224, 0.225)
    assert dataset_info("cifar10").image_size == (32, 32)


def test_digits_fixed_split():
    a = load_splits("digits")
    assert a.sizes == {"train": 1167, "val": 270, "test": 360}
    assert a.train.images.shape[1:] == (1, 8, 8) and a.train.images.dtype == torch.uint8
    assert int(a.train.images.max()) == 255 and a.info.num_classes == 10
    assert a.files == ()
    b = load_splits("digits", seed=1)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.val.labels, b.val.labels) or not torch.equal(a.val.images, b.val.images)
    # the normalisation constants are the training split's statistics
    x = a.train.images.float() / 255
    assert abs(x.mean().item() - a.info.mean[0]) < 1e-3 and abs(x.std().item() - a.info.std[0]) < 1e-3


# --------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_round_trip(tmp_path, gz, name):
    arrays = make_idx_set(tmp_path / "d", gz=gz)
    s = load_splits(name, tmp_path / "d", val_size=10, seed=3, download=False, verify=False)
    assert s.sizes == {"train": 30, "val": 10, "test": 12}
    tr, va = hold_out(40, 10, 3)
    x, y = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    assert torch.equal(s.train.images[:, 0], torch.from_numpy(x[tr]))
    assert torch.equal(s.val.images[:, 0], torch.from_numpy(x[va]))
    assert torch.equal(s.train.labels, torch.from_numpy(y[tr]).long())
    assert torch.equal(s.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(s.test.labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert s.test.labels.dtype == torch.int64 and s.info.name == name
    assert len(s.files) == 4 and all(f.is_file() for f in s.files)


def test_split_sizes_disjoint_and_seeded(tmp_path):
    make_idx_set(tmp_path, n_train=50)
    a = load_splits("mnist", tmp_path, val_size=15, seed=0, verify=False)
    b = load_splits("mnist", tmp_path, val_size=15, seed=0, verify=False)
    c = load_splits("mnist", tmp_path, val_size=15, seed=1, verify=False)
    tr, va = hold_out(50, 15, 0)
    assert len(set(tr) & set(va)) == 0 and sorted([*tr, *va]) == list(range(50))
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.equal(a.test.images, c.test.images)
    # train and validation together are the official training set, each image once
    rows = {bytes(r) for r in torch.cat([a.train.images, a.val.images]).numpy()}
    assert len(rows) == 50
    empty = load_splits("mnist", tmp_path, val_size=0, verify=False)
    assert len(empty.val) == 0 and empty.val.images.shape == (0, 1, 28, 28) and len(empty.train) == 50


def test_default_val_size_and_bad_arguments(tmp_path):
    make_idx_set(tmp_path, n_train=40)
    with pytest.raises(ValueError, match=r"val_size=5000 must be smaller than the 40 training samples"):
        load_splits("mnist", tmp_path, verify=False)
    with pytest.raises(ValueError, match=r"val_size must be an integer >= 0"):
        load_splits("mnist", tmp_path, val_size=-1, verify=False)
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0"):
        load_splits("mnist", tmp_path, val_size=5, seed=1.5, verify=False)


def test_folder_layouts(tmp_path, monkeypatch):
    make_idx_set(tmp_path / "root" / "fashion-mnist")
    make_idx_set(tmp_path / "tv" / "MNIST" / "raw", gz=False)
    assert len(load_splits("fashion-mnist", tmp_path / "root", val_size=5, verify=False).test) == 12
    assert len(load_splits("mnist", tmp_path / "tv", val_size=5, verify=False).test) == 12
    monkeypatch.setenv("FPNETS_DATA", str(tmp_path / "root"))
    assert len(load_splits("fashion-mnist", val_size=5, verify=False).train) == 35
    # the dotted spelling (train-images.idx3-ubyte) of some distributions is accepted
    dotted = tmp_path / "dotted"
    make_idx_set(dotted, gz=False)
    for f in IDX_FILES:
        (dotted / f).rename(dotted / f.replace("-idx", ".idx"))
    assert len(load_splits("mnist", dotted, val_size=5, verify=False).train) == 35


def test_missing_files_message(tmp_path):
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), gz=True)
    with pytest.raises(DatasetNotFoundError, match=r"mnist: data files not found \(download=False\)") as info:
        load_splits("mnist", tmp_path, download=False)
    msg = str(info.value)
    for f in IDX_FILES:
        assert f + ".gz" in msg
    assert "FPNETS_DATA" in msg and "--data-dir" in msg
    assert (
        str(tmp_path) in msg and str(tmp_path / "mnist") in msg and str(tmp_path / "cache" / "mnist") in msg
    )
    assert f"Found only train-images-idx3-ubyte in {tmp_path / 'mnist'}" in msg
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DataError)


def test_offline_download_error_says_where_to_put_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"downloading them into .* failed") as info:
        load_splits("svhn")  # no data_dir, download=None: tries, and the network is off
    msg = str(info.value)
    assert "train_32x32.mat, test_32x32.mat" in msg and "network disabled in tests" in msg
    assert "FPNETS_DATA" in msg and "data_dir=" in msg and "--data-dir" in msg and "svhn/" in msg
    assert "http://ufldl.stanford.edu/housenumbers/" in msg
    assert not (tmp_path / "cache").exists()  # a failed download leaves no empty folder behind


def _corrupt_cases():
    good_img = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    good_lab = idx_bytes(np.zeros(3, np.uint8))
    return {
        "bad magic": (good_img[:3] + b"\x01" + good_img[4:], good_lab, r"bad magic number 0x00000801"),
        "truncated": (good_img[:-5], good_lab, r"truncated: the header says 3 x 28 x 28 = 2352 bytes"),
        "extra bytes": (good_img + b"\0", good_lab, r"size mismatch: .* the file holds 2353"),
        "short header": (good_img[:10], good_lab, r"truncated IDX header, 10 bytes"),
        "label range": (
            good_img,
            idx_bytes(np.array([0, 10, 2], np.uint8)),
            r"label out of range: .* found 10",
        ),
        "count": (
            good_img,
            idx_bytes(np.zeros(4, np.uint8)),
            r"4 labels, but train-images-idx3-ubyte holds 3",
        ),
        "shape": (idx_bytes(np.zeros((3, 27, 28), np.uint8)), good_lab, r"wrong array shape \(3, 27, 28\)"),
    }


@pytest.mark.parametrize("case", sorted(_corrupt_cases()))
def test_corrupt_idx_files(tmp_path, case):
    make_idx_set(tmp_path, n_train=3, gz=False)
    images, labels, pattern = _corrupt_cases()[case]
    (tmp_path / "train-images-idx3-ubyte").write_bytes(images)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(labels)
    with pytest.raises(DataError, match=pattern) as info:
        load_splits("mnist", tmp_path, val_size=1, verify=False)
    assert "train-" in str(info.value)


def test_bad_gzip(tmp_path):
    make_idx_set(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: bad gzip stream"):
        load_splits("mnist", tmp_path, val_size=5, verify=False)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: named .gz but not a gzip file"):
        read_idx(path, ndim=3)


# --------------------------------------------------------------------------------------------------
# SVHN
# --------------------------------------------------------------------------------------------------


def test_svhn_round_trip(tmp_path):
    mats = make_svhn(tmp_path / "svhn")
    s = load_splits("svhn", tmp_path, val_size=5, seed=0, verify=False)
    assert s.sizes == {"train": 25, "val": 5, "test": 10}
    x, y = mats["test"]
    assert s.test.images.shape == (10, 3, 32, 32)
    assert torch.equal(s.test.images, torch.from_numpy(x).permute(3, 2, 0, 1))  # [n, c, h, w] = X[h, w, c, n]
    expected = torch.from_numpy(y[:, 0].astype(np.int64)) % 10  # label 10 is the digit 0
    assert torch.equal(s.test.labels, expected) and int(s.test.labels.max()) <= 9
    tr, _ = hold_out(30, 5, 0)
    assert torch.equal(s.train.images, torch.from_numpy(mats["train"][0]).permute(3, 2, 0, 1)[tr])


def test_svhn_corrupt(tmp_path):
    from scipy.io import savemat

    make_svhn(tmp_path)
    test = tmp_path / "test_32x32.mat"
    savemat(test, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [3]], np.uint8)})
    with pytest.raises(
        DataError, match=r"test_32x32.mat: label out of range: expected integers in 1..10, found 0"
    ):
        load_splits("svhn", tmp_path, val_size=5, verify=False)
    savemat(test, {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.array([[1], [3]], np.uint8)})
    with pytest.raises(DataError, match=r"test_32x32.mat: wrong array shape: X is \(28, 28, 3, 2\)"):
        load_splits("svhn", tmp_path, val_size=5, verify=False)
    savemat(test, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [3], [4]], np.uint8)})
    with pytest.raises(DataError, match=r"wrong array shape: y is \(3, 1\), expected \(2, 1\)"):
        load_splits("svhn", tmp_path, val_size=5, verify=False)
    test.write_bytes(b"garbage" * 30)
    with pytest.raises(DataError, match=r"test_32x32.mat: not a readable MATLAB file"):
        load_splits("svhn", tmp_path, val_size=5, verify=False)


# --------------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_round_trip(tmp_path, protocol):
    batches = make_cifar(tmp_path / "cifar-10-batches-py", n=4, protocol=protocol)
    s = load_splits("cifar10", tmp_path, val_size=4, seed=0, verify=False)
    assert s.sizes == {"train": 16, "val": 4, "test": 4}
    train = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)])
    tr, va = hold_out(20, 4, 0)
    assert torch.equal(s.train.images, torch.from_numpy(train[tr]))
    assert torch.equal(s.val.labels, torch.from_numpy(labels[va]))
    assert torch.equal(s.test.images.reshape(4, -1), torch.from_numpy(batches["test_batch"][b"data"]))
    # the R plane comes first: the 1024 first bytes are channel 0
    assert torch.equal(
        s.test.images[:, 0].reshape(4, -1), torch.from_numpy(batches["test_batch"][b"data"][:, :1024])
    )


def test_cifar_str_keys(tmp_path):
    path = tmp_path / "b"
    path.write_bytes(pickle.dumps(cifar_batch(3, np.random.default_rng(0), str_keys=True)))
    images, labels = read_cifar_batch(path)
    assert images.shape == (3, 3, 32, 32) and labels.dtype == np.int64


def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str`` in a pickle: SHORT_BINSTRING or BINSTRING."""
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def _py2_int(v: int) -> bytes:
    return b"J" + struct.pack("<i", v)


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled as Python 2's cPickle wrote the official files (protocol 2, str strings)."""
    s, i = _py2_str, _py2_int
    n, m = data.shape
    dtype = b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
    dtype += b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
    array += b"(" + i(1) + i(n) + i(m) + b"\x86" + dtype + b"\x89" + s(data.tobytes()) + b"tb"
    items = s(b"data") + array + s(b"labels") + b"](" + b"".join(i(v) for v in labels) + b"e"
    return b"\x80\x02}(" + items + b"u."


def test_cifar_python2_pickle(tmp_path):
    data = (np.arange(2 * 3072) % 251).astype(np.uint8).reshape(2, 3072)
    path = tmp_path / "data_batch_1"
    path.write_bytes(py2_cifar_pickle(data, [3, 7]))
    images, labels = read_cifar_batch(path)
    assert np.array_equal(images.reshape(2, -1), data) and labels.tolist() == [3, 7]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_refuses_arbitrary_globals(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(
        DataError, match=r"data_batch_1: refused to unpickle \(forbidden global (posix|nt)\.system"
    ):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({b"data": io.BytesIO(b""), b"labels": []}))
    with pytest.raises(DataError, match=r"forbidden global _io.BytesIO"):
        read_cifar_batch(path)


def test_cifar_corrupt(tmp_path):
    make_cifar(tmp_path, n=3)
    path = tmp_path / "test_batch"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"test_batch: corrupt or truncated pickle"):
        load_splits("cifar10", tmp_path, val_size=1, verify=False)
    path.write_bytes(pickle.dumps({b"data": np.zeros((3, 3000), np.uint8), b"labels": [0, 1, 2]}))
    with pytest.raises(DataError, match=r"test_batch: wrong array shape \(3, 3000\), expected \(N, 3072\)"):
        load_splits("cifar10", tmp_path, val_size=1, verify=False)
    path.write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 11, 2]}))
    with pytest.raises(
        DataError, match=r"test_batch: label out of range: expected integers in 0..9, found 11"
    ):
        load_splits("cifar10", tmp_path, val_size=1, verify=False)
    path.write_bytes(pickle.dumps({b"labels": [0]}))
    with pytest.raises(DataError, match=r"test_batch: no 'data' entry in the batch"):
        load_splits("cifar10", tmp_path, val_size=1, verify=False)
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataError, match=r"test_batch: expected a pickled dict, got list"):
        load_splits("cifar10", tmp_path, val_size=1, verify=False)


# --------------------------------------------------------------------------------------------------
# Downloads (from file:// URLs written here; the network stays off)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def file_urls(monkeypatch):
    """Let urlopen through again, for file:// URLs only."""
    import urllib.request

    def only_files(request, *args, **kwargs):
        url = request.full_url if hasattr(request, "full_url") else request
        if not url.startswith("file:"):
            raise urllib.error.URLError("network disabled in tests")
        return urllib.request.urlopen(request, *args, **kwargs)

    monkeypatch.setattr(_download, "urlopen", only_files)


def _serve_idx(tmp_path: Path, monkeypatch, *, wrong: str | None = None) -> dict:
    """Official-looking .gz files under tmp_path/server, with the registry pointing at them."""
    server = tmp_path / "server"
    arrays = make_idx_set(server, gz=True)
    remotes = []
    for f in IDX_FILES:
        data = (server / (f + ".gz")).read_bytes()
        sha = hashlib.sha256(data).hexdigest() if f != wrong else "0" * 64
        remotes.append(
            Remote(f + ".gz", ("file:///nonexistent/" + f + ".gz", (server / f).as_uri() + ".gz"), sha256=sha)
        )
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], remotes=tuple(remotes)))
    return arrays


def test_download_into_cache(tmp_path, monkeypatch, file_urls):
    arrays = _serve_idx(tmp_path, monkeypatch)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        DatasetNotFoundError, match=r"(?s)not in data_dir .*empty.*download cache .* is not used"
    ):
        load_splits("mnist", empty, val_size=5)  # an explicit data_dir never falls back to the cache
    s = load_splits("mnist", val_size=5)  # download=None: files missing, so downloaded (and verified)
    cache = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f + ".gz" for f in IDX_FILES)  # no .part left
    assert all(f.parent == cache for f in s.files)
    assert torch.equal(s.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    # download=True re-verifies the cache and replaces a damaged file
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"damaged")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: bad gzip|named .gz but not a gzip file"):
        load_splits("mnist", val_size=5, download=False)
    s = load_splits("mnist", val_size=5, download=True)
    assert torch.equal(s.test.labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())


def test_download_checksum_mismatch(tmp_path, monkeypatch, file_urls):
    _serve_idx(tmp_path, monkeypatch, wrong="train-labels-idx1-ubyte")
    with pytest.raises(
        DataError,
        match=r"checksum mismatch for downloaded file train-labels-idx1-ubyte.gz: .*SHA-256 [0-9a-f]{64}, expected 0{64}",
    ):
        load_splits("mnist", val_size=5)
    cache = tmp_path / "cache" / "mnist"
    assert not (cache / "train-labels-idx1-ubyte.gz").exists()
    assert not any(p.name.endswith(".part") for p in cache.iterdir())


def test_download_md5_and_size(tmp_path, file_urls):
    src = tmp_path / "f.bin"
    src.write_bytes(b"hello")
    good = Remote("f.bin", (src.as_uri(),), md5=hashlib.md5(b"hello").hexdigest(), size=5)
    _download.ensure(good, tmp_path / "out")
    assert (tmp_path / "out" / "f.bin").read_bytes() == b"hello"
    with pytest.raises(DataError, match=r"f.bin: .*size 5 bytes, expected 6"):
        _download.download(dataclasses.replace(good, size=6), tmp_path / "out2")
    with pytest.raises(DataError, match=r"f.bin: .*MD5 [0-9a-f]{32}, expected f{32}"):
        _download.download(dataclasses.replace(good, md5="f" * 32), tmp_path / "out2")


def test_download_cifar_archive(tmp_path, monkeypatch, file_urls):
    batches = make_cifar(tmp_path / "src" / "cifar-10-batches-py", n=2)
    archive = tmp_path / "server" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    remote = dataclasses.replace(
        DATASETS["cifar10"].remotes[0],
        urls=(archive.as_uri(),),
        sha256=hashlib.sha256(archive.read_bytes()).hexdigest(),
        size=None,
    )
    monkeypatch.setitem(DATASETS, "cifar10", dataclasses.replace(DATASETS["cifar10"], remotes=(remote,)))
    s = load_splits("cifar10", val_size=2, download=True)
    assert torch.equal(s.test.images.reshape(2, -1), torch.from_numpy(batches["test_batch"][b"data"]))
    cache = tmp_path / "cache" / "cifar10"
    assert [p.name for p in cache.iterdir()] == ["cifar-10-batches-py"]  # archive and temp folder removed
    assert (cache / "cifar-10-batches-py" / ".fpnets-verified").read_text().strip() == remote.sha256
    assert len(load_splits("cifar10", val_size=2, download=True).train) == 8  # verified cache, no download


def test_split_validates_types():
    with pytest.raises(TypeError, match=r"Split.images must be a uint8 tensor"):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"2 images but 3 labels"):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
