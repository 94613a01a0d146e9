"""Run directories: naming, finding the newest run, and what may change when a run is resumed."""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._checkpoint import CheckpointError
from ._config import Config, config_from_dict
from ._engine import ConfigError, diff_keys

RESUMABLE_CHANGES = (
    "train.epochs",
    "train.patience",
    "train.checkpoint_every",
    "run.root",
    "run.device",
    "run.threads",
    "run.progress",
    "run.tensorboard",
    "run.plots",
)
"""Config keys that may differ between a run and its resumption (how long and where it runs, not
what it computes: a different dtype, seed or model would change the results already recorded)."""


def new_run_dir(config: Config, root: str | Path | None = None) -> Path:
    """``<root>/<run name>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... appended if taken), created."""
    root = Path(config.run.root if root is None else root)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / f"{config.run_name}-{stamp}"
    path, k = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            k += 1
            path = base.with_name(f"{base.name}-{k}")
        except PermissionError:
            raise ConfigError(
                f"cannot create the run directory under {str(root)!r}: permission denied; "
                "choose a writable place with --set run.root=DIR or --run-dir DIR"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"cannot create the run directory {str(path)!r}: {exc.strerror or exc}; "
                "choose another place with --set run.root=DIR or --run-dir DIR"
            ) from None


def latest_run(config: Config, root: str | Path | None = None) -> Path:
    """The newest run directory of ``config`` (same run name) under ``root``.

    The newest is taken whether or not it holds a checkpoint: a newest run that has none raises,
    rather than an older run being resumed in its place.
    """
    root = Path(config.run.root if root is None else root)
    pattern = re.compile(rf"^{re.escape(config.run_name)}-(\d{{8}}-\d{{6}})(?:-(\d+))?$")
    found = []
    if root.is_dir():
        for path in root.iterdir():
            m = pattern.match(path.name)
            if m and path.is_dir():
                found.append((m.group(1), int(m.group(2) or 1), path))
    if not found:
        raise CheckpointError(f"no run of {config.run_name!r} under {str(root)!r}; give the run directory")
    newest = max(found)[2]
    if not (newest / "checkpoints" / "last.json").is_file():
        raise CheckpointError(
            f"the newest run of {config.run_name!r}, {str(newest)!r}, has no checkpoint (it stopped before "
            "its first epoch ended); start a new run, or give the run directory to resume explicitly"
        )
    return newest


def check_resumable(stored: Any, config: Config, where: Path) -> None:
    """Raise unless ``config`` differs from a run's stored config only in resumable keys."""
    if not isinstance(stored, Mapping):
        raise CheckpointError(f"checkpoint of {str(where)!r} holds no config")
    config_from_dict(stored)  # the stored config must still be valid
    diff = [k for k in diff_keys(stored, config.to_dict()) if k not in RESUMABLE_CHANGES]
    if diff:
        raise ConfigError(
            f"cannot resume {str(where)!r} with a different config ({', '.join(diff)}); "
            f"only {', '.join(RESUMABLE_CHANGES)} may change "
            f"(`fpnets train --resume {where}` without CONFIG reuses the run's own config)"
        )


class RunLock:
    """An exclusive lock on a run directory while a process trains in it (``<run>/.lock``).

    The lock is an advisory ``flock`` on the file: it disappears with the process that holds it,
    even after ``kill -9``, so a stale lock file never blocks a resume. Where ``fcntl`` does not
    exist (Windows) runs are not locked.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        import os

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            finally:
                os.close(fd)
            raise ConfigError(
                f"{str(self.path.parent)!r} is in use: another process (pid {holder}) is training in it; "
                "wait for it to end or stop it before resuming this run"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import os

            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
