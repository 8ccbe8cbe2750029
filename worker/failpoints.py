"""Crash rehearsal: stop a worker at a named step so a test can kill it there.

Off unless SEATS_FAILPOINT names a step. The worker then writes the step to
SEATS_FAILPOINT_FILE and waits to be killed, so tests prove that a crash at
that exact point loses nothing and charges once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def checkpoint(name: str) -> None:
    if os.environ.get("SEATS_FAILPOINT") != name:
        return
    marker = os.environ.get("SEATS_FAILPOINT_FILE")
    if marker:
        Path(marker).write_text(name)
    while True:
        time.sleep(60)
