"""The package's layering, read from the import statements, and the docs' links to repository files."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "fpnets"


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by ``path`` (relative imports resolved against its package)."""
    rel = path.relative_to(ROOT / "src").with_suffix("")
    parts = list(rel.parts)
    package = parts[:-1]  # a module's package; for __init__.py, the package itself
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            names.append(mod)
            names += [f"{mod}.{a.name}" for a in node.names]
    return names


def _files(sub: str) -> list[Path]:
    target = PKG / sub
    return sorted(target.rglob("*.py")) if target.is_dir() else [target]


def _violations(files: list[Path], forbidden: re.Pattern[str]) -> list[str]:
    return [f"{p.relative_to(ROOT)} imports {m}" for p in files for m in _imports(p) if forbidden.match(m)]


def test_trainer_imports_no_task_internals() -> None:
    """train/ knows tasks only through fpnets.tasks' public interface (never a task's module, nor the
    image-classification data or models)."""
    bad = re.compile(r"^fpnets\.(tasks\.(?!_base\b|Task\b|Metric\b|get_task\b)[a-z]\w*|data\b|models\b)")
    assert _violations(_files("train"), bad) == []


def test_tasks_import_no_private_trainer_module() -> None:
    bad = re.compile(r"^fpnets\.train\._")
    assert _violations(_files("tasks"), bad) == []


def test_core_knows_no_tasks_trainer_or_operators() -> None:
    core = [
        *_files("_solve.py"),
        *_files("_fixed_point.py"),
        *_files("solvers"),
        *_files("backward"),
        *_files("layers"),
    ]
    bad = re.compile(r"^fpnets\.(tasks|train|operators|models|data|cli)\b")
    assert _violations(core, bad) == []


def test_operators_know_no_networks() -> None:
    bad = re.compile(r"^fpnets\.(tasks|train|models|layers|data|cli|_fixed_point)\b")
    assert _violations(_files("operators"), bad) == []


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _doc_links() -> list[tuple[Path, str]]:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    out = []
    for doc in docs:
        for target in LINK.findall(doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            out.append((doc, target))
    return out


def test_docs_link_only_files_in_the_repository() -> None:
    """Every relative link of README.md and docs/*.md names a file or folder that exists and that git
    tracks (an ignored run folder would exist here but not in a clone)."""
    links = _doc_links()
    assert links
    missing, untracked = [], []
    tracked = None
    if (ROOT / ".git").exists():
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False)
        if out.returncode == 0:
            tracked = set(out.stdout.splitlines())
    for doc, target in links:
        path = (doc.parent / target).resolve()
        if not path.exists():
            missing.append(f"{doc.relative_to(ROOT)} -> {target}")
            continue
        if tracked is not None:
            rel = path.relative_to(ROOT).as_posix()
            ok = (
                rel in tracked
                if path.is_file()
                else any(t.startswith(rel.rstrip("/") + "/") for t in tracked)
            )
            if not ok:
                untracked.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert missing == [], "links to missing files"
    assert untracked == [], "links to files git does not track"


def test_the_cli_without_the_training_extras_says_what_to_install(tmp_path: Path) -> None:
    """A bare `pip install fpnets` has no safetensors: `fpnets train` prints one line naming the extra."""
    code = (
        "import sys; sys.modules['safetensors'] = None; sys.modules['safetensors.torch'] = None\n"
        "from fpnets.cli import main\n"
        f"sys.exit(main(['train', '--set', 'run.root=\"{tmp_path}\"', '--set', 'train.epochs=1']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.fullmatch(
        r"fpnets: error: `fpnets train` needs the optional module 'safetensors': pip install 'fpnets\[train\]'",
        lines[0],
    )


@pytest.mark.parametrize("module", ["fpnets", "fpnets.train", "fpnets.tasks", "fpnets.cli"])
def test_core_imports_need_only_torch_and_numpy(module: str) -> None:
    """Importing the library (not running the trainer) needs none of the optional extras."""
    blocked = ["safetensors", "tqdm", "matplotlib", "sklearn", "scipy", "h5py", "tensorboard"]
    code = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked) + f"import {module}\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
