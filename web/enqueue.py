"""Sending wake-up calls to the workers; the database row is already committed."""

from __future__ import annotations

import logging

from celery import Celery

from shared import queues

log = logging.getLogger("seats.web")


class Enqueuer:
    def __init__(self, redis_url: str | None) -> None:
        self.celery = Celery("seats-web")
        self.celery.conf.update(queues.celery_settings(redis_url))
        # A "task-sent" event doubles the broker writes of every request; Flower
        # and the exporter still see each task from the moment a worker takes it.
        self.celery.conf.task_send_sent_event = False

    def _send(self, name: str, queue: str, *args: object) -> None:
        """A lost message loses nothing: the sweep re-sends what the database says is due."""
        try:
            self.celery.send_task(name, args=list(args), queue=queue)
        except Exception:
            log.warning("could not enqueue %s%r; the sweep will pick it up", name, args)

    def charge(self, purchase_id: int) -> None:
        self._send(queues.CHARGE_PURCHASE, queues.CHARGES, purchase_id)

    def process_event(self, event_id: str) -> None:
        self._send(queues.PROCESS_EVENT, queues.WEBHOOKS, event_id)
