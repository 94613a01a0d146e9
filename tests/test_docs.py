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
