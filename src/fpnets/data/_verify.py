"""Checksums of local data files against the official ones, computed once per process.

A data file is accepted when one of its digests — SHA-256 or MD5 of the bytes on disk or, for a
gzip file, of its decompressed content — is one of the official digests of the file it stands for.
The decompressed digest lets a re-compressed copy (``gzip -9 -n``, a Debian package) or an
uncompressed one pass. A file that fails is looked up in :data:`KNOWN_FILES`, every official file
of every data set, so that a file of another data set (Fashion-MNIST's images given as MNIST's) is
named as such. Digests are cached by (path, size, modification time), so loading the same files
again in a process costs nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ._download import CHUNK, VERIFIED_MARKER
from ._formats import GZIP_MAGIC, read_maybe_gzip
from ._types import ChecksumError


@dataclass(frozen=True)
class KnownFile:
    """An official file of a data set, identified by one of its digests.

    Attributes:
        dataset: the registry name of its data set (``"fashion-mnist"``).
        title: the data set's usual spelling (``"Fashion-MNIST"``).
        name: the file's name (``"train-images-idx3-ubyte.gz"``; without ``.gz`` for the digest of
            the decompressed content).
    """

    dataset: str
    title: str
    name: str


KNOWN_FILES: dict[str, KnownFile] = {}
"""Hex digest (SHA-256 or MD5) -> the official file it belongs to; filled by the data-set registry."""

_Key = tuple[str, int, int]
_FILE_DIGESTS: dict[_Key, frozenset[str]] = {}
_CONTENT_DIGESTS: dict[_Key, frozenset[str]] = {}


def _key(path: Path) -> _Key:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _hex_digests(chunks: Iterable[bytes]) -> frozenset[str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    for chunk in chunks:
        sha.update(chunk)
        md5.update(chunk)
    return frozenset((sha.hexdigest(), md5.hexdigest()))


def _read_chunks(path: Path) -> Iterable[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def file_digests(path: Path) -> frozenset[str]:
    """{SHA-256, MD5} (hex) of the bytes of ``path``, cached by path, size and modification time."""
    key = _key(path)
    if key not in _FILE_DIGESTS:
        _FILE_DIGESTS[key] = _hex_digests(_read_chunks(path))
    return _FILE_DIGESTS[key]


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with the gzip magic bytes or is named ``.gz``."""
    with path.open("rb") as f:
        return f.read(2) == GZIP_MAGIC or path.name.endswith(".gz")


def content_digests(path: Path) -> frozenset[str]:
    """{SHA-256, MD5} of the decompressed content of a gzip file (cached like :func:`file_digests`).

    Raises:
        DataError: the file is named ``.gz`` but is not gzip, or its stream is corrupt.
    """
    key = _key(path)
    if key not in _CONTENT_DIGESTS:
        data = read_maybe_gzip(path)
        _CONTENT_DIGESTS[key] = _hex_digests([data])
    return _CONTENT_DIGESTS[key]


def clear_cache() -> None:
    """Forget the digests computed so far (they are otherwise kept for the whole process)."""
    _FILE_DIGESTS.clear()
    _CONTENT_DIGESTS.clear()


def archive_verified(path: Path, archive_digests: Iterable[str]) -> bool:
    """Whether ``path`` sits in a folder that an archive with one of ``archive_digests`` was verified
    and extracted into (the marker file the downloader writes there holds the archive's digest)."""
    marker = path.parent / VERIFIED_MARKER
    if not marker.is_file():
        return False
    return marker.read_text().strip() in set(archive_digests)


def check_file(path: Path, expected: frozenset[str]) -> frozenset[str] | None:
    """None when a digest of ``path`` (or of its decompressed content) is in ``expected``.

    Otherwise returns every digest computed (for :func:`identify`).
    """
    digests = file_digests(path)
    if digests & expected:
        return None
    if is_gzip(path):
        digests = digests | content_digests(path)
        if digests & expected:
            return None
    return digests


def identify(digests: Iterable[str]) -> KnownFile | None:
    """The official file one of ``digests`` belongs to, if any."""
    for d in digests:
        if d in KNOWN_FILES:
            return KNOWN_FILES[d]
    return None


def mismatch_message(path: Path, dataset: str, title: str, name: str, digests: frozenset[str]) -> str:
    """One line saying what is wrong with ``path``, which should be ``title``'s file ``name``."""
    other = identify(digests)
    if other is not None:
        if other.dataset == dataset:
            return (
                f"{path}: this is {title}'s {other.name}, not its {name}; the files are swapped or misnamed"
            )
        return (
            f"{path}: this is {other.title}'s {other.name}, not {title}'s {name}; point data_dir at "
            f"the {title} files, or load this folder as '{other.dataset}'"
        )
    sha = next(d for d in file_digests(path) if len(d) == 64)
    return (
        f"{path}: checksum does not match the official {title} {name} (SHA-256 {sha}); "
        "the file is damaged, truncated, or not the official release"
    )


def raise_mismatches(lines: list[str], *, in_cache: bool) -> None:
    """Raise :class:`ChecksumError` listing ``lines``, with how to proceed."""
    hint = (
        "If these are your own files (another release or a modified copy), skip the check with "
        "load_splits(..., verify=False) (data.verify = false in a training config)."
    )
    if in_cache:
        hint += " A damaged file in the download cache is replaced with load_splits(..., download=True)."
    raise ChecksumError("\n".join([*lines, hint]))
