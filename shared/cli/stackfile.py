"""What `seats up` started, written down for the commands run beside it.

`seats up` writes `SEATS_HOME/run/stack.json` (mode 0600: it holds the webhook
secret) with the URLs of what it started and removes it on exit. Every `seats`
command, `seats flower` and the bench scripts read it for the settings the
environment leaves unset; the environment always wins. A file whose `seats up`
is gone (a crash, a power cut) is ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from shared.cli.embedded import home

SETTINGS = (
    "DATABASE_URL",
    "REDIS_URL",
    "STRIPE_API_KEY",
    "STRIPE_API_BASE",
    "STRIPE_WEBHOOK_SECRET",
    "STRIPE_PUBLISHABLE_KEY",
    "STRIPE_JS_URL",
    "PORT",
)


def path() -> Path:
    return home() / "run" / "stack.json"


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write(values: Mapping[str, str], web_url: str) -> None:
    """Atomically, readable by this user only."""
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = {"pid": os.getpid(), "web": web_url, **{k: values[k] for k in SETTINGS if k in values}}
    temporary = target.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(body, handle)
    os.replace(temporary, target)


def remove() -> None:
    target = path()
    try:
        if json.loads(target.read_text()).get("pid") == os.getpid():
            target.unlink()
    except (OSError, ValueError):
        return


def running() -> dict[str, object] | None:
    """The running `seats up`'s record, or None (no file, or its process is gone)."""
    try:
        record = json.loads(path().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not _alive(record.get("pid")):
        return None
    return record


def environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment, completed from the running `seats up` where it says nothing."""
    env = dict(os.environ if env is None else env)
    record = running() or {}
    for name in SETTINGS:
        value = record.get(name)
        if not env.get(name) and isinstance(value, str) and value:
            env[name] = value
    return env
