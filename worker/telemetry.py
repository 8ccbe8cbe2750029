"""What each worker tells operators: a heartbeat while it runs, and how long tasks take.

Both go to Redis (see shared/services/queue_stats.py), read at scrape time by every web
process, so the figures are the same whichever gunicorn worker answers the scrape.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import redis
from celery import Task
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from shared import log_lines, queues
from shared.services import queue_stats

log = logging.getLogger("seats.worker")

_started: dict[str, tuple[float, float | None]] = {}
_stop = threading.Event()
_client: redis.Redis | None = None


def client() -> redis.Redis:
    global _client
    if _client is None:
        from worker.app import settings

        _client = redis.Redis.from_url(
            settings.redis_url or queues.LOCAL_REDIS, socket_timeout=2, socket_connect_timeout=2
        )
    return _client


@worker_ready.connect
def _heartbeat(sender: Any = None, **_: object) -> None:
    hostname = str(getattr(sender, "hostname", None) or os.uname().nodename)
    try:
        consumed = sorted(sender.app.amqp.queues.consume_from)
    except AttributeError:
        consumed = []

    def run() -> None:
        while not _stop.is_set():
            try:
                queue_stats.beat(client(), hostname, os.getpid(), consumed)
            except redis.RedisError as error:
                log.warning("heartbeat not sent: %s", error)
            _stop.wait(queue_stats.HEARTBEAT_SECONDS)
        try:
            queue_stats.gone(client(), hostname)
        except redis.RedisError:
            return

    threading.Thread(target=run, name="seats-heartbeat", daemon=True).start()


@worker_shutdown.connect
def _stop_heartbeat(**_: object) -> None:
    _stop.set()
    timings.write()


@worker_process_shutdown.connect
def _last_timings(**_: object) -> None:
    """A prefork child's (the threads pool's are the worker's own, written above)."""
    timings.write()


class Timings:
    """Task timings kept in the process and written to Redis together once a second (a
    round trip per task cost a worker about a quarter of a task that does nothing). A write
    that fails is kept for the next one; the last second is written as the worker stops."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)  # a prefork child starts its own

    def reset(self) -> None:
        self.lock = threading.Lock()
        self.totals: queue_stats.Totals = {}
        self.writer: threading.Thread | None = None
        self.failing = False

    def start(self) -> None:
        """The writer of this process, started by its first task (called holding the lock)."""
        if self.writer is None:
            self.writer = threading.Thread(target=self._write_every_second, daemon=True)
            self.writer.start()

    def write(self) -> None:
        with self.lock:
            totals, self.totals = self.totals, {}
        try:
            queue_stats.record(client(), totals)
        except redis.RedisError as error:
            if not self.failing:  # once per outage, not every second
                log.warning("task timings not recorded yet: %s", error)
            self.failing = True
            if not _maybe_written(error):
                with self.lock:
                    queue_stats.merge(self.totals, totals)
        else:
            self.failing = False

    def _write_every_second(self) -> None:
        while True:
            time.sleep(WRITE_SECONDS)
            self.write()


def _maybe_written(error: redis.RedisError) -> bool:
    """Sent whole, but no answer in time: Redis may have applied the write, which is then
    let go rather than counted twice (redis-py says "reading"; a connection never made or a
    write cut short applied nothing: kept for the next)."""
    return isinstance(error, redis.TimeoutError) and "reading" in str(error)


WRITE_SECONDS = 1.0
timings = Timings()


SUBJECTS = {
    queues.CHARGE_PURCHASE: "purchase_id",
    queues.PROCESS_EVENT: "event_id",
    queues.REFUND: "alert_id",
    queues.RENEW: "renewal_id",
}
"""Which id a task's first argument is, for its log lines."""


@task_prerun.connect
def _task_started(
    task_id: str = "", task: Task | None = None, args: Any = None, **_: object
) -> None:
    sent = getattr(task.request, queues.SENT_AT, None) if task is not None else None
    _started[task_id] = (time.time(), float(sent) if isinstance(sent, int | float) else None)
    subject = SUBJECTS.get(task.name if task else "")
    log_lines.bind(
        task_id=task_id,
        task=task.name if task else None,
        **({subject: args[0]} if subject and args else {}),
    )


@task_postrun.connect
def _task_finished(task_id: str = "", task: Task | None = None, **_: object) -> None:
    started = _started.pop(task_id, None)
    log_lines.unbind("task_id", "task", *SUBJECTS.values())
    if started is None or task is None:
        return
    began, sent = started
    with timings.lock:
        timings.start()
        queue_stats.tally(timings.totals, "task_seconds", task.name, time.time() - began)
        if sent is not None:
            wait = max(0.0, began - sent)
            queue_stats.tally(timings.totals, "queue_wait_seconds", task.name, wait)
