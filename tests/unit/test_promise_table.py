"""The promise table (tests/README.md) names only tests that exist."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_every_test_the_promise_table_names_exists() -> None:
    text = (TESTS / "README.md").read_text()
    sources = {path: path.read_text() for path in TESTS.rglob("test_*.py")}
    named = re.findall(r"`([a-z]+/test_[a-z0-9_]+\.py)(?:::([a-z0-9_]+))?`", text)
    assert len(named) > 40
    last: Path | None = None
    for file, name in named:
        last = TESTS / file
        assert last in sources, file
        assert not name or f"def {name}(" in sources[last], f"{file}::{name}"
    for name in re.findall(r"`::([a-z0-9_]+)`", text):  # short forms after a full one
        assert any(f"def {name}(" in source for source in sources.values()), name
