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


@pytest.mark.parametrize(
    "argv",
    [
        [str(BIN / "celery"), "-A", "worker.app", "worker", "--pool", "solo"],
        [str(BIN / "celery"), "-A", "worker.app", "beat", "--schedule", os.devnull],
        [str(BIN / "gunicorn"), "--bind", "127.0.0.1:0", "web:create_app()"],
    ],
    ids=["worker", "beat", "web"],
)
def test_without_database_url_production_entry_points_stop_and_name_it(argv: list[str]) -> None:
    if "gunicorn" in argv[0]:
        argv = [*argv[:2], f"127.0.0.1:{free_port()}", *argv[3:]]
    result = run(argv, unset=("DATABASE_URL",))
    assert result.returncode != 0
    assert "DATABASE_URL is not set" in result.stdout + result.stderr
    assert "pgserver" not in result.stdout + result.stderr
