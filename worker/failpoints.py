"""Crash rehearsal: stop a worker at a named step so a test can kill it there.

Armed only in test mode and only when asked twice: `SEATS_FAILPOINT` names the
step and `SEATS_ENABLE_FAILPOINTS=1` says it is meant, with a test Stripe key.
A worker that arms one says so at start; anywhere else the variable is ignored
with a warning, so one set by mistake never hangs a production worker. The
armed worker writes the step to `SEATS_FAILPOINT_FILE` and waits to be killed,
so tests prove that a crash at that exact point loses nothing and charges once.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from shared.config import Settings

log = logging.getLogger("seats.failpoints")

_armed: str | None = None


def arm(settings: Settings, env: dict[str, str] | None = None) -> str | None:
    """Decide once, at worker start, whether a failpoint is armed; return its name."""
    global _armed
    env = dict(os.environ) if env is None else env
    name = env.get("SEATS_FAILPOINT") or None
    _armed = None
    if name is None:
        return None
    if not settings.stripe_test_mode or env.get("SEATS_ENABLE_FAILPOINTS") != "1":
        log.warning(
            "SEATS_FAILPOINT=%s is ignored: failpoints need a test Stripe key and "
            "SEATS_ENABLE_FAILPOINTS=1",
            name,
        )
        return None
    log.warning("failpoint armed: this worker stops for good at step %r (tests only)", name)
    _armed = name
    return name


def checkpoint(name: str) -> None:
    if _armed != name:
        return
    marker = os.environ.get("SEATS_FAILPOINT_FILE")
    if marker:
        Path(marker).write_text(name)
    while True:
        time.sleep(60)
