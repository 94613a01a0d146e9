"""run.json provenance: the source commit (clean or dirty), the command line and the machine."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fpnets.train._provenance import git_state, machine, provenance

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    out = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@needs_git
def test_git_state_reports_the_commit_and_whether_tracked_files_changed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    pkg = repo / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    init = pkg / "__init__.py"
    assert git_state(init) == {"commit": head, "dirty": False}
    init.write_text("x = 2\n")
    assert git_state(init) == {"commit": head, "dirty": True}
    (repo / "untracked.txt").write_text("new\n")  # untracked files do not make the source dirty
    _git(repo, "checkout", "-q", "--", "pkg/__init__.py")
    assert git_state(init) == {"commit": head, "dirty": False}


@needs_git
def test_git_state_is_none_for_an_untracked_package_inside_a_checkout(tmp_path: Path) -> None:
    # e.g. a non-editable install in a virtual environment that lives inside the repository
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("r\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    site = repo / ".venv" / "site-packages" / "pkg"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("")
    assert git_state(site / "__init__.py") is None
    assert git_state(tmp_path / "nowhere" / "__init__.py") is None


@needs_git
def test_this_package_and_the_benchmarks_report_the_same_checkout() -> None:
    # run.json (the package's file) and the benchmark JSONs (benchmarks/common.py) share git_state
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("benchmarks_common", root / "benchmarks" / "common.py")
    assert spec is not None and spec.loader is not None
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    state = git_state(root / "src" / "fpnets" / "__init__.py")
    if state is None:
        pytest.skip("not a git checkout")
    expected = state["commit"] + ("+dirty" if state["dirty"] else "")
    assert common.commit(short=False) == expected
    assert common.commit().split("+")[0] == state["commit"][:7]


def test_machine_and_command_are_recorded() -> None:
    info = provenance()
    assert set(info) == {"git", "command", "machine"}
    assert isinstance(info["command"], list) and info["command"]
    m = machine()
    assert m["cores"] == os.cpu_count() and m["threads"] >= 1
    assert m["load_average_1min"] is None or m["load_average_1min"] >= 0
