"""The Celery application. Celery's command line needs it at module level."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from celery import Celery
from celery.signals import beat_init, setup_logging, worker_init, worker_process_init

from shared import log_lines, queues
from shared.bootstrap import (
    ConfigurationError,
    Runtime,
    build,
    require_database,
    require_production,
)
from shared.config import Settings
from worker import failpoints

settings = Settings.from_env()

app = Celery("seats")
app.conf.update(queues.celery_settings(settings.redis_url, settings.task_events))
app.conf.beat_schedule = {
    "sweep": {"task": queues.SWEEP, "schedule": settings.sweep_interval},
    "reconcile": {"task": queues.RECONCILE, "schedule": settings.reconcile_interval},
    # every few minutes: a plan is due the moment its day starts in its own time zone
    "renewals": {"task": queues.RENEWAL_SCAN, "schedule": settings.renewal_scan_interval},
}
app.conf.include = ["worker.tasks", "worker.telemetry"]

_runtime: Runtime | None = None


def _refuse(check: Callable[[Settings], object]) -> None:
    """Stop at once, naming the variable, rather than fail on the first task."""
    try:
        check(settings)
    except ConfigurationError as error:
        print(f"seats: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@setup_logging.connect
def _json_logs(**_: object) -> None:
    """Our structured lines instead of Celery's own format (README "Operating it")."""
    log_lines.configure("worker")


@worker_init.connect
def _check_worker(**_: object) -> None:
    _refuse(require_production)
    failpoints.arm(settings)


@beat_init.connect
def _check_beat(**_: object) -> None:
    """Beat only sends wake-up calls; it needs no Stripe setting."""
    _refuse(require_database)


_building = threading.Lock()


def runtime() -> Runtime:
    """Built on first use in each process (a database pool must not cross a fork), once
    even when a thread pool's threads ask at the same time; its database pool has a
    connection for every thread (`SEATS_WORKER_CONCURRENCY`) and the sweeps."""
    global _runtime
    if _runtime is None:
        with _building:
            if _runtime is None:
                _runtime = build(settings, pool_size=settings.worker_concurrency + 2)
    return _runtime


@worker_process_init.connect
def _fresh_runtime(**_: object) -> None:
    global _runtime
    _runtime = None
