"""The Celery application. Celery's command line needs it at module level."""

from __future__ import annotations

import sys

from celery import Celery
from celery.signals import beat_init, worker_init, worker_process_init

from shared import queues
from shared.bootstrap import ConfigurationError, Runtime, build, require_database
from shared.config import Settings

settings = Settings.from_env()

app = Celery("seats")
app.conf.update(queues.celery_settings(settings.redis_url))
app.conf.beat_schedule = {
    "sweep": {"task": queues.SWEEP, "schedule": settings.sweep_interval},
    "reconcile": {"task": queues.RECONCILE, "schedule": settings.reconcile_interval},
}
app.conf.include = ["worker.tasks"]

_runtime: Runtime | None = None


@worker_init.connect
@beat_init.connect
def _refuse_without_database(**_: object) -> None:
    """Stop at once, naming the variable, rather than fail on the first task."""
    try:
        require_database(settings)
    except ConfigurationError as error:
        print(f"seats: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def runtime() -> Runtime:
    """Built on first use in each process: a database pool must not cross a fork."""
    global _runtime
    if _runtime is None:
        _runtime = build(settings, pool_size=2)
    return _runtime


@worker_process_init.connect
def _fresh_runtime(**_: object) -> None:
    global _runtime
    _runtime = None
