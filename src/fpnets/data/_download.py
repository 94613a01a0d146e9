"""Downloads into the fpnets cache, verified by checksum and written atomically.

A download goes to a temporary file in the destination folder, is hashed while it streams, and
is moved into place with :func:`os.replace` only when its size and checksum match; a failed or
interrupted download never leaves a file under the final name.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.request import Request, urlopen

from ._types import DataError

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
VERIFIED_MARKER = ".fpnets-verified"
"""Written next to files extracted from an archive; holds the SHA-256 of the verified archive."""


class DownloadError(DataError):
    """Every mirror of a file failed with a network error (no connection, HTTP error, timeout)."""


@dataclass(frozen=True)
class Remote:
    """One file to download.

    Attributes:
        filename: name of the file in the cache folder.
        urls: mirrors, tried in order.
        sha256: expected SHA-256 (hex) of the downloaded file, or None when only ``md5`` is known.
        md5: expected MD5 (hex), checked when given (for files with no published SHA-256).
        size: expected size in bytes, or None.
        members: for an archive, the member paths to extract (the archive is deleted afterwards);
            empty for a plain file.
        extract_to: subfolder of the cache folder that receives the members' basenames.
    """

    filename: str
    urls: tuple[str, ...]
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    members: tuple[str, ...] = ()
    extract_to: str = ""

    def __post_init__(self) -> None:
        if self.sha256 is None and self.md5 is None:
            raise ValueError(f"Remote {self.filename!r}: give sha256 or md5")

    @property
    def outputs(self) -> tuple[str, ...]:
        """Names (relative to the cache folder) of the files this remote provides."""
        if not self.members:
            return (self.filename,)
        return tuple(str(Path(self.extract_to) / Path(m).name) for m in self.members)


def cache_root() -> Path:
    """``$FPNETS_CACHE``, else ``$XDG_CACHE_HOME/fpnets``, else ``~/.cache/fpnets``."""
    if os.environ.get("FPNETS_CACHE"):
        return Path(os.environ["FPNETS_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fpnets"
    return Path.home() / ".cache" / "fpnets"


def file_digests(path: Path) -> tuple[str, str, int]:
    """(sha256, md5, size in bytes) of a file."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), md5.hexdigest(), size


def check_digests(remote: Remote, sha256: str, md5: str, size: int) -> str | None:
    """None when the digests match ``remote``, else a sentence saying what differs."""
    if remote.size is not None and size != remote.size:
        return f"size {size} bytes, expected {remote.size}"
    if remote.sha256 is not None and sha256 != remote.sha256:
        return f"SHA-256 {sha256}, expected {remote.sha256}"
    if remote.md5 is not None and md5 != remote.md5:
        return f"MD5 {md5}, expected {remote.md5}"
    return None


def is_present(remote: Remote, folder: Path, *, verify: bool) -> bool:
    """Whether the files ``remote`` provides are in ``folder`` (and, with ``verify``, match their checksum)."""
    if not all((folder / out).is_file() for out in remote.outputs):
        return False
    if not verify:
        return True
    if remote.members:
        marker = folder / remote.extract_to / VERIFIED_MARKER
        expected = remote.sha256 or remote.md5
        return marker.is_file() and marker.read_text().strip() == expected
    return check_digests(remote, *file_digests(folder / remote.filename)) is None


def ensure(remote: Remote, folder: Path, *, verify: bool = False, timeout: float = 60.0) -> None:
    """Make the files of ``remote`` present in ``folder``, downloading (and extracting) when needed.

    Raises:
        DownloadError: every mirror failed with a network error.
        DataError: a download arrived with the wrong checksum, or its archive is corrupt.
    """
    if is_present(remote, folder, verify=verify):
        return
    if not remote.members:
        download(remote, folder, timeout=timeout)
        return
    # An archive goes to a private folder, so that processes fetching at the same time (the ranks
    # of a distributed job) never extract or delete one another's copy.
    created = _missing_dirs(folder)
    folder.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=".download.", dir=folder))
    try:
        archive = download(remote, private, timeout=timeout)
        target = folder / remote.extract_to
        extract(archive, remote.members, target)
        (target / VERIFIED_MARKER).write_text((remote.sha256 or remote.md5 or "") + "\n")
    finally:
        shutil.rmtree(private, ignore_errors=True)
        _remove_if_empty(created)


def download(remote: Remote, folder: Path, *, timeout: float = 60.0) -> Path:
    """Download ``remote`` into ``folder`` from the first mirror that works; returns the path."""
    created = _missing_dirs(folder)
    folder.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    mismatch: str | None = None
    for url in remote.urls:
        try:
            return _download_one(url, remote, folder, timeout)
        except _ChecksumMismatch as exc:
            mismatch = str(exc)
            failures.append(f"{url}: {exc}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
    _remove_if_empty(created)  # leave no empty folder behind a failed download
    if mismatch is not None:
        raise DataError(
            f"checksum mismatch for downloaded file {remote.filename}: "
            + "; ".join(failures)
            + ". The file was discarded; the server may serve a changed or damaged file."
        )
    raise DownloadError(f"could not download {remote.filename}: " + "; ".join(failures))


def _missing_dirs(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or removed by another process meanwhile): keep the rest
            return


class _ChecksumMismatch(Exception):
    pass


def _download_one(url: str, remote: Remote, folder: Path, timeout: float) -> Path:
    logger.info("downloading %s into %s", url, folder)
    request = Request(url, headers={"User-Agent": "fpnets"})
    fd, tmp_name = tempfile.mkstemp(prefix=f".{remote.filename}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
        with os.fdopen(fd, "wb") as out, urlopen(request, timeout=timeout) as response:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                sha.update(chunk)
                md5.update(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        problem = check_digests(remote, sha.hexdigest(), md5.hexdigest(), size)
        if problem is not None:
            raise _ChecksumMismatch(problem)
        final = folder / remote.filename
        os.replace(tmp, final)
        return final
    finally:
        tmp.unlink(missing_ok=True)


def extract(archive: Path, members: tuple[str, ...], target: Path) -> None:
    """Extract the regular-file ``members`` of a tar archive into ``target`` under their basenames.

    Only the named members are read, and each is written under its basename, so a crafted archive
    cannot write outside ``target``.
    """
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for name in members:
                try:
                    info = tar.getmember(name)
                except KeyError:
                    raise DataError(f"{archive}: archive has no member {name!r}") from None
                if not info.isfile():
                    raise DataError(f"{archive}: member {name!r} is not a regular file")
                src = tar.extractfile(info)
                assert src is not None  # a regular file always has a stream
                fd, tmp_name = tempfile.mkstemp(prefix=".extract.", suffix=".part", dir=target)
                tmp = Path(tmp_name)
                try:
                    with os.fdopen(fd, "wb") as out:
                        while chunk := src.read(CHUNK):
                            out.write(chunk)
                    os.replace(tmp, target / Path(name).name)
                finally:
                    tmp.unlink(missing_ok=True)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from exc
