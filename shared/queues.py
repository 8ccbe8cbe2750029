"""Names the web and the worker agree on (queues, task names) and the one way to send work.

Plain strings and a callable: no Celery import here, so the web and the worker
each hand in their own app's `send_task`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

CHARGES = "charges"
RENEWALS = "renewals"
WEBHOOKS = "webhooks"
DEFAULT = "default"
ALL = (CHARGES, RENEWALS, WEBHOOKS, DEFAULT)
"""Every queue a worker consumes by default (`-Q charges,renewals,webhooks,default`). Renewals
have their own, so a batch of 10,000 never delays a customer's purchase on `charges`."""

CHARGE_PURCHASE = "seats.charge_purchase"
PROCESS_EVENT = "seats.process_event"
DRAIN_EVENTS = "seats.drain_events"
REFUND = "seats.refund"
RENEW = "seats.renew"
SWEEP = "seats.sweep"
RECONCILE = "seats.reconcile"
RENEWAL_SCAN = "seats.renewal_scan"

ROUTES = {
    CHARGE_PURCHASE: CHARGES,
    PROCESS_EVENT: WEBHOOKS,
    DRAIN_EVENTS: WEBHOOKS,
    REFUND: DEFAULT,
    RENEW: RENEWALS,
    SWEEP: DEFAULT,
    RECONCILE: DEFAULT,
    RENEWAL_SCAN: DEFAULT,
}

log = logging.getLogger("seats.queues")

SENT_AT = "seats_sent_at"
"""A message header: the Unix time it was sent."""
WORKER_KEYS = "seats:worker:"
"""Each worker process keeps `seats:worker:<hostname>` alive in Redis while it runs."""
DRAIN_ARMED = "seats:webhooks:drain"
"""Set while a drain message is on its way: events stored meanwhile ride on it."""
DRAIN_ARMED_SECONDS = 5
"""How long that mark may outlive a drain that never started (a killed worker)."""
METRIC_KEYS = "seats:metrics:"
"""Task histograms the workers keep in Redis, so every web process reads the same figures."""


@dataclass(frozen=True)
class Dispatcher:
    """Wake-up calls for work already committed to the database.

    A message that cannot be sent loses nothing: the sweep re-sends what the
    database says is due, so a broker outage is logged, never raised.
    """

    send_task: Callable[..., object]
    arm_drain: Callable[[], bool] = lambda: True
    """True when no drain is on its way (and marks one as on its way)."""

    def _send(self, name: str, *args: object) -> None:
        listed = list(args)
        try:
            self.send_task(
                name,
                args=listed,
                queue=ROUTES[name],
                # when it was sent: operators see each queue's oldest message age, and the
                # worker measures how long a task waited
                headers={SENT_AT: time.time()},
                # what Celery would write for Flower, without its safe (and slow) repr: ids
                argsrepr=repr(listed),
                kwargsrepr="{}",
            )
        except Exception:
            log.warning("could not enqueue %s%r; the sweep will pick it up", name, args)

    def charge(self, *purchase_ids: int) -> None:
        for purchase_id in purchase_ids:
            self._send(CHARGE_PURCHASE, purchase_id)

    def process_event(self, *event_ids: str) -> None:
        for event_id in event_ids:
            self._send(PROCESS_EVENT, event_id)

    def drain_events(self, more: bool = False) -> None:
        """Stored events to handle: one drain for all those stored while one is on its way
        (it takes them all, in batches), instead of a message per event. `more`: a drain
        took a full batch; another goes at once, for another thread to take."""
        try:
            armed = more or self.arm_drain()
        except Exception:
            log.warning("could not mark a drain as on its way; sending one anyway")
            armed = True
        if armed:
            self._send(DRAIN_EVENTS)

    def refund(self, *alert_ids: int) -> None:
        for alert_id in alert_ids:
            self._send(REFUND, alert_id)

    def renew(self, *renewal_ids: int, force: bool = False) -> None:
        for renewal_id in renewal_ids:
            self._send(RENEW, renewal_id, force)


LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def celery_settings(redis_url: str | None, task_events: bool = False) -> dict[str, object]:
    """Broker settings for both the sender (web) and the consumer (worker).

    Late acks with reject-on-lost so a killed worker's task comes back; prefetch 1
    so a slow charge never holds others; the visibility timeout outlives any
    countdown we use; separate queues so webhooks never starve charges.
    """
    url = redis_url or LOCAL_REDIS
    return {
        "broker_url": url,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": DEFAULT,
        "task_routes": {name: {"queue": queue} for name, queue in ROUTES.items()},
        "broker_transport_options": {"visibility_timeout": 3600},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.5,
        },
        # off by default: they cost the worker about a fifth of its time per webhook, and
        # Flower switches them on in the workers when it connects (SEATS_TASK_EVENTS=1
        # keeps them on for other monitors)
        "worker_send_task_events": task_events,
        "task_send_sent_event": task_events,
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
    }
