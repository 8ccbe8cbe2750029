"""Production entry points refuse to start on settings meant for a laptop."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from shared.cli.embedded import free_port
from shared.cli.supervisor import without_failpoints
from shared.config import Settings
from worker import failpoints

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


LIVE = {"STRIPE_API_KEY": "sk_live_notreal", "STRIPE_WEBHOOK_SECRET": "whsec_x"}


@pytest.mark.parametrize(
    ("entry", "given", "named"),
    [
        ("web", {"STRIPE_WEBHOOK_SECRET": "whsec_x"}, "STRIPE_API_KEY"),
        ("web", {"STRIPE_API_KEY": "sk_test_x"}, "STRIPE_WEBHOOK_SECRET"),
        ("web", LIVE, "SECRET_KEY"),
        ("worker", {"STRIPE_WEBHOOK_SECRET": "whsec_x"}, "STRIPE_API_KEY"),
        ("worker", {"STRIPE_API_KEY": "sk_test_x"}, "STRIPE_WEBHOOK_SECRET"),
        ("worker", LIVE, "SECRET_KEY"),
    ],
)
def test_without_stripe_secrets_production_refuses_to_start(
    entry: str, given: dict[str, str], named: str, tmp_path: Path
) -> None:
    """No fallback to the stand-in's test key: a misconfigured production stops at once
    instead of retrying and parking every purchase."""
    argv = [part.format(tmp=tmp_path, port=free_port()) for part in ENTRY_POINTS[entry]]
    unset = ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "SECRET_KEY", "STRIPE_API_BASE")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(DATABASE_URL=os.environ.get("DATABASE_URL", "postgresql://x@127.0.0.1/x"), **given)
    result = subprocess.run(
        argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert f"{named} is not set" in result.stdout + result.stderr or (
        f"{named} not set" in result.stdout + result.stderr
    )


def test_seats_up_refuses_a_live_key_without_secret_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    env.update(LIVE, SEATS_HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "up", "--port", str(free_port())],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "SECRET_KEY is not set" in result.stderr


def live(**extra: str) -> Settings:
    return replace(Settings.from_env({}), stripe_api_key="sk_live_x", **extra)


@pytest.mark.parametrize(
    ("settings", "env", "armed"),
    [
        (
            replace(Settings.from_env({}), stripe_api_key="sk_test_x"),
            {"SEATS_FAILPOINT": "a"},
            None,
        ),
        (live(), {"SEATS_FAILPOINT": "a", "SEATS_ENABLE_FAILPOINTS": "1"}, None),
        (
            replace(Settings.from_env({}), stripe_api_key="sk_test_x"),
            {"SEATS_FAILPOINT": "a", "SEATS_ENABLE_FAILPOINTS": "1"},
            "a",
        ),
    ],
    ids=["test key, not enabled", "live key, enabled", "test key, enabled"],
)
def test_failpoints_arm_only_in_test_mode_when_enabled_and_say_so(
    settings: Settings,
    env: dict[str, str],
    armed: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="seats.failpoints"):
        assert failpoints.arm(settings, env) == armed
    assert "SEATS_FAILPOINT" in caplog.text or "failpoint armed" in caplog.text
    if armed is None:
        failpoints.checkpoint("a")  # returns at once: nothing is armed
    failpoints.arm(settings, {})


def test_seats_up_forwards_failpoints_only_when_asked() -> None:
    asked = {
        "SEATS_FAILPOINT": "x",
        "SEATS_FAILPOINT_FILE": "/tmp/f",
        "SEATS_ENABLE_FAILPOINTS": "1",
    }
    assert without_failpoints(asked) == asked
    assert without_failpoints({"SEATS_FAILPOINT": "x", "PATH": "/bin"}) == {"PATH": "/bin"}
