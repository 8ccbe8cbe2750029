"""Production entry points refuse to start on settings meant for a laptop."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.cli.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(
    argv: list[str], unset: tuple[str, ...], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


ENTRY_POINTS = {
    "worker": [str(BIN / "celery"), "-A", "worker.app", "worker", "--pool", "solo"],
    # never /dev/null as a schedule: beat replaces a file it cannot open as a shelf
    "beat": [str(BIN / "celery"), "-A", "worker.app", "beat", "--schedule", "{tmp}/schedule"],
    "web": [str(BIN / "gunicorn"), "--bind", "127.0.0.1:{port}", "web:create_app()"],
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_without_database_url_production_entry_points_stop_and_name_it(
    entry: str, tmp_path: Path
) -> None:
    argv = [part.format(tmp=tmp_path, port=free_port()) for part in ENTRY_POINTS[entry]]
    result = run(argv, unset=("DATABASE_URL",))
    assert result.returncode != 0
    assert "DATABASE_URL is not set" in result.stdout + result.stderr
    assert "pgserver" not in result.stdout + result.stderr
