"""The web's sender of wake-up calls: the shared Dispatcher over a Celery client.

Each thread keeps one producer, its broker connection and one Redis client for every
publish: kombu would otherwise set up a connection per message, and even with one it
builds a new Redis client per message (its `conn_or_acquire`; redis-py issue 3624),
together a fifth of a busy web process.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from shared import queues


class Publisher:
    """`send_task` with one long-lived producer per thread (gthread workers share the app)."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery
        self.local = threading.local()

    def __call__(self, name: str, **options: Any) -> None:
        producer = getattr(self.local, "producer", None)
        if producer is None:
            producer = self.celery.amqp.Producer(self.celery.connection_for_write())
            reuse_client(producer.channel)
            self.local.producer = producer
        try:
            # nothing declared: Celery sends to the default exchange, named by the queue
            # (kombu's declaring, even of a queue it knows, was a fifth of each publish)
            self.celery.send_task(name, producer=producer, declare=[], **options)
        except Exception:
            self.local.producer = None  # a broken connection: the next publish makes a new one
            producer.connection.release()
            raise


def reuse_client(channel: Any) -> None:
    """Make a kombu Redis channel put every message through one client of its pool (a
    redis-py client is safe to share; this channel only publishes). A channel kombu
    makes anew after a broken connection goes back to its own way: slower, not wrong."""
    create = getattr(channel, "_create_client", None)
    if create is None:  # not Redis (memory transport in tests): nothing to save
        return
    client = create()
    channel.conn_or_acquire = lambda given=None: contextlib.nullcontext(given or client)


def drain_gate(client: redis.Redis) -> Callable[[], bool]:
    """Marks a drain as on its way unless one already is (the worker clears the mark when
    the drain starts, before it looks for events)."""
    return lambda: bool(client.set(queues.DRAIN_ARMED, 1, nx=True, ex=queues.DRAIN_ARMED_SECONDS))


def dispatcher(redis_url: str | None, client: redis.Redis) -> queues.Dispatcher:
    celery = Celery("seats-web")
    celery.conf.update(queues.celery_settings(redis_url))
    # A "task-sent" event doubles the broker writes of every request; Flower and
    # the exporter still see each task from the moment a worker takes it.
    celery.conf.task_send_sent_event = False
    return queues.Dispatcher(Publisher(celery), drain_gate(client))
