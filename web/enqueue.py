"""The web's sender of wake-up calls: the shared Dispatcher over a Celery client."""

from __future__ import annotations

from celery import Celery

from shared import queues


def dispatcher(redis_url: str | None) -> queues.Dispatcher:
    celery = Celery("seats-web")
    celery.conf.update(queues.celery_settings(redis_url))
    # A "task-sent" event doubles the broker writes of every request; Flower and
    # the exporter still see each task from the moment a worker takes it.
    celery.conf.task_send_sent_event = False
    return queues.Dispatcher(celery.send_task)
