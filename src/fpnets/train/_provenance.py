"""Where and from what a run was made: the source commit, the command line and the machine.

Recorded in run.json so that every number taken from a run folder carries the commit, the command
and the hardware it came from (and the load average at the start: timings from a busy machine are
not timings). Nothing here raises: a value that cannot be found is None.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["cpu_model", "git_state", "machine", "provenance"]


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(source: str | Path | None = None) -> dict[str, Any] | None:
    """The commit of the checkout that tracks the file ``source`` (default: this package's
    ``__init__.py``).

    Returns ``{"commit": sha, "dirty": bool}`` (dirty: tracked files differ from the commit), or None
    when the file is not tracked by git, e.g. a package installed into site-packages (a checkout
    that merely contains the virtual environment does not count: the file itself must be tracked).
    """
    path = Path(source) if source is not None else Path(__file__).resolve().parent.parent / "__init__.py"
    folder = path.parent
    if _git(["ls-files", "--error-unmatch", path.name], folder) is None:
        return None
    commit = _git(["rev-parse", "HEAD"], folder)
    if commit is None:
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], folder)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo, else ``platform.processor()``), or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine() -> dict[str, Any]:
    """CPU model, core count, torch threads, GPU name (if CUDA is available) and the 1-minute load."""
    try:
        load = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        load = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": gpu,
        "load_average_1min": load,
        "platform": platform.platform(),
    }


def provenance() -> dict[str, Any]:
    """``{"git": git_state(), "command": sys.argv, "machine": machine()}`` for run.json."""
    return {"git": git_state(), "command": list(sys.argv), "machine": machine()}
