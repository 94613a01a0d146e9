"""The Python examples in README.md and docs/core.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


@pytest.mark.parametrize("doc", ["README.md", "docs/core.md"])
def test_python_examples_run(doc: str, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = BLOCK.findall((ROOT / doc).read_text())
    assert blocks, f"no python example in {doc}"
    for code in blocks:
        exec(compile(code, doc, "exec"), {"__name__": "__doc_example__"})
    assert "converged" in capsys.readouterr().out


def test_the_task_example_trains(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/tasks.md: the regression task defined in the doc trains through the trainer."""
    import sys
    import types

    (code,) = BLOCK.findall((ROOT / "docs" / "tasks.md").read_text())
    module = types.ModuleType("doc_tasks_example")  # dataclasses look their module up
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "docs/tasks.md", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    best, val_mae, test_mae = capsys.readouterr().out.split()
    assert 1 <= int(best) <= 3 and 0 <= float(val_mae) < 0.6 and float(test_mae) >= 0
