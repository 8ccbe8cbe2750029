"""The web's sender of wake-up calls: the shared Dispatcher over a Celery client.

Each thread keeps one producer and its broker connection for every publish: kombu
would otherwise set up a Redis client per message, a fifth of a busy web process.
"""

from __future__ import annotations

import threading
from typing import Any

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
            self.local.producer = producer
        try:
            self.celery.send_task(name, producer=producer, **options)
        except Exception:
            self.local.producer = None  # a broken connection: the next publish makes a new one
            producer.connection.release()
            raise


def dispatcher(redis_url: str | None) -> queues.Dispatcher:
    celery = Celery("seats-web")
    celery.conf.update(queues.celery_settings(redis_url))
    # A "task-sent" event doubles the broker writes of every request; Flower and
    # the exporter still see each task from the moment a worker takes it.
    celery.conf.task_send_sent_event = False
    return queues.Dispatcher(Publisher(celery))
