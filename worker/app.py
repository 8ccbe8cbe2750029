"""The Celery application. Celery's command line needs it at module level."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from shared import queues
from shared.bootstrap import Runtime, build
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
