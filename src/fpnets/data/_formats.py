"""Readers for the file formats of the supported data sets, strict about what they accept.

Every reader returns numpy arrays and raises :class:`~fpnets.data.DataError` naming the file and
what is wrong with it (bad magic number, size that disagrees with the header, bad gzip stream,
wrong array shape or dtype, label out of range, a pickle that asks for a forbidden global).
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ._types import DataError

GZIP_MAGIC = b"\x1f\x8b"
IDX_UBYTE = 0x08
"""IDX type code of unsigned bytes, the only element type the MNIST-style files use."""


def read_maybe_gzip(path: Path) -> bytes:
    """The bytes of ``path``, decompressed when the file starts with the gzip magic bytes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: bad gzip stream, the file is corrupt or truncated ({exc})") from exc
    if path.name.endswith(".gz"):
        raise DataError(f"{path}: named .gz but not a gzip file (it does not start with the bytes 1f 8b)")
    return raw


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with ``ndim`` dimensions (gzip-compressed or raw).

    The IDX format: 2 zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
    then one big-endian uint32 per dimension, then the data in C order. Images are IDX3
    (magic 0x00000803 = 2051), labels IDX1 (magic 0x00000801 = 2049).

    Returns:
        a uint8 array shaped as the header says.
    """
    raw = read_maybe_gzip(path)
    expected_magic = (IDX_UBYTE << 8) | ndim
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file, {len(raw)} bytes, shorter than the 4-byte magic number")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path}: bad magic number 0x{magic:08x}; an IDX{ndim} file of unsigned bytes starts with "
            f"0x{expected_magic:08x} ({expected_magic}). Is this the right file, or a corrupt download?"
        )
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header, {len(raw)} bytes, expected at least {header}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(raw) - header
    if actual != expected:
        what = "truncated" if actual < expected else "size mismatch"
        raise DataError(
            f"{path}: {what}: the header says {' x '.join(map(str, dims))} = {expected} bytes of data, "
            f"the file holds {actual}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy()


def check_labels(path: Path, labels: np.ndarray, count: int, num_classes: int, low: int = 0) -> np.ndarray:
    """``labels`` as int64 (count,) after checking length and range low..low+num_classes-1."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != count:
        raise DataError(f"{path}: {labels.shape} labels for {count} images; expected ({count},)")
    if labels.size and (
        labels.dtype.kind not in "iub" or labels.min() < low or labels.max() >= low + num_classes
    ):
        if labels.dtype.kind in "iub":
            found = f"found {labels[(labels < low) | (labels >= low + num_classes)].flat[0].item()}"
        else:
            found = f"found dtype {labels.dtype}"
        raise DataError(
            f"{path}: label out of range: expected integers in {low}..{low + num_classes - 1}, {found}"
        )
    return labels.astype(np.int64)


def check_images(path: Path, images: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Check that ``images`` is uint8 with per-image shape ``shape``."""
    if images.dtype != np.uint8:
        raise DataError(f"{path}: images have dtype {images.dtype}, expected uint8")
    if images.ndim != len(shape) + 1 or tuple(images.shape[1:]) != tuple(shape):
        raise DataError(
            f"{path}: wrong array shape {tuple(images.shape)}, expected (N, {', '.join(map(str, shape))})"
        )
    return images


# --------------------------------------------------------------------------------------------------
# SVHN: MATLAB files train_32x32.mat / test_32x32.mat
# --------------------------------------------------------------------------------------------------


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN cropped-digits file: X (32, 32, 3, N) uint8 and y (N, 1) with 10 meaning digit 0.

    Returns:
        images (N, 3, 32, 32) uint8 and labels (N,) int64 in 0..9.
    """
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # pragma: no cover - scipy ships with fpnets[train]
        raise ImportError("reading SVHN needs scipy: pip install fpnets[train]") from exc
    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except Exception as exc:  # scipy raises many kinds (ValueError, MatReadError, OSError, ...)
        raise DataError(f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from exc
    for key in ("X", "y"):
        if key not in mat:
            raise DataError(f"{path}: no variable {key!r} in the MATLAB file (found {sorted(mat)})")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8:
        raise DataError(f"{path}: X has dtype {x.dtype}, expected uint8")
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: wrong array shape: X is {x.shape}, expected (32, 32, 3, N)")
    n = x.shape[3]
    if y.size != n or (y.ndim == 2 and y.shape[1] != 1) or y.ndim > 2:
        raise DataError(f"{path}: wrong array shape: y is {y.shape}, expected ({n}, 1) to match X")
    labels = check_labels(path, y.reshape(-1), n, num_classes=10, low=1)
    labels[labels == 10] = 0
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return images, labels


# --------------------------------------------------------------------------------------------------
# CIFAR-10: pickled batches of the "python version"
# --------------------------------------------------------------------------------------------------


def _latin1_encode(obj: str, encoding: str = "utf-8") -> bytes:
    """How Python 3 pickles bytes with protocol < 3; only the latin-1 codec is let through."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise ForbiddenGlobal(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, "latin-1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a pickled dict of numpy arrays, lists, ints and strings refers to.

    The objects are taken from numpy itself (how it pickles its arrays today), and accepted under
    both the numpy < 2 (``numpy.core``) and numpy >= 2 (``numpy._core``) module names.
    """
    reconstruct = np.empty(0).__reduce__()[0]  # multiarray._reconstruct (protocols 0-4)
    frombuffer = np.empty(1).__reduce_ex__(5)[0]  # numeric._frombuffer (protocol 5)
    scalar = np.float64(0).__reduce__()[0]  # multiarray.scalar (numpy scalars)
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{core}.multiarray", "scalar")] = scalar
        table[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return table


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list of :class:`RestrictedUnpickler`."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, strings, numbers and numpy arrays.

    Any other global (a class or a function the pickle asks for) raises
    :class:`ForbiddenGlobal` (a :class:`pickle.UnpicklingError`), so loading a file cannot run code it carries.
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _allowed_globals()
        obj = RestrictedUnpickler._allowed.get((module, name))
        if obj is None:
            raise ForbiddenGlobal(
                f"forbidden global {module}.{name}: only numpy arrays, dicts, lists and scalars are allowed"
            )
        return obj


def restricted_loads(data: bytes) -> Any:
    """``pickle.loads`` through :class:`RestrictedUnpickler` (bytes strings of Python 2 stay bytes)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: a pickled dict with b"data" (N, 3072) uint8 and b"labels".

    Returns:
        images (N, 3, 32, 32) uint8 (the 3072 bytes are the R, G and B planes, row-major) and
        labels (N,) int64 in 0..9.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    try:
        batch = restricted_loads(raw)
    except ForbiddenGlobal as exc:
        raise DataError(f"{path}: refused to unpickle ({exc})") from exc
    except Exception as exc:  # truncated or garbage pickles raise EOFError, ValueError, KeyError, ...
        raise DataError(f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    data = _get(batch, "data", path)
    labels = _get(batch, "labels", path)
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: 'data' is a {type(data).__name__}, expected a numpy array")
    data = check_images(path, data, (3072,))
    labels = check_labels(path, np.asarray(labels), data.shape[0], num_classes=10)
    return data.reshape(-1, 3, 32, 32).copy(), labels


def _get(batch: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"{path}: no {key!r} entry in the batch (keys: {sorted(map(repr, batch))})")
