"""The examples in docs/games.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "games.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_examples():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_example_runs(index, capsys):
    code = BLOCKS[index]
    if "openspiel" in code.lower() or "MCTSBot" in code:
        pytest.importorskip("pyspiel")
    exec(compile(code, f"{DOC.name}[python block {index}]", "exec"), {"__name__": "docs"})
