"""Tasks take ids, call one service, and own only retries and acknowledgement."""

from __future__ import annotations

import logging
import random

from celery import Task
from sqlalchemy.exc import OperationalError

from shared import queues
from shared.payments.gateway import PaymentUnavailable
from shared.services import charging, sweep, webhooks
from worker.app import app, runtime, settings
from worker.failpoints import checkpoint

log = logging.getLogger("seats.worker")


def backoff(retries: int) -> float:
    """Exponential, capped at 60 s, with full jitter so retries do not stampede."""
    return random.uniform(0, min(60.0, 2.0**retries))  # noqa: S311


def _cause(error: Exception) -> str:
    if isinstance(error, PaymentUnavailable):
        return "payment processor unavailable"
    if isinstance(error, OperationalError):
        return "database unavailable"
    return f"unexpected {type(error).__name__}"


def wake(purchase_ids: list[int]) -> None:
    for purchase_id in purchase_ids:
        charge_purchase.apply_async(args=[purchase_id], queue=queues.CHARGES)


@app.task(name=queues.CHARGE_PURCHASE, bind=True, max_retries=None)
def charge_purchase(self: Task, purchase_id: int) -> str:
    rt = runtime()
    try:
        outcome = charging.charge(
            rt.uow(),
            rt.engine,
            rt.gateway,
            purchase_id,
            checkpoint=checkpoint,
            action_ttl=settings.requires_action_ttl,
        )
    except Exception as error:
        if self.request.retries >= settings.charge_retries:
            log.error(
                "purchase %s parked after %s retries: %s", purchase_id, self.request.retries, error
            )
            wake(charging.park(rt.uow(), purchase_id, f"{_cause(error)}: {error}"))
            return "parked"
        raise self.retry(exc=error, countdown=backoff(self.request.retries)) from error
    wake(outcome.wake)
    return outcome.next.value


@app.task(name=queues.PROCESS_EVENT, bind=True, max_retries=None)
def process_event(self: Task, event_id: str) -> str:
    """Failures retry with backoff; after the last one the event stays `failed` for an operator."""
    rt = runtime()
    try:
        outcome, woken = webhooks.process_event(rt.uow(), rt.gateway, event_id)
    except Exception as error:
        if self.request.retries >= settings.charge_retries:
            log.error("event %s parked after %s retries: %s", event_id, self.request.retries, error)
            return "failed"
        raise self.retry(exc=error, countdown=backoff(self.request.retries)) from error
    wake(woken)
    return outcome


def enqueue_events(event_ids: list[str]) -> None:
    for event_id in event_ids:
        process_event.apply_async(args=[event_id], queue=queues.WEBHOOKS)


@app.task(name=queues.SWEEP)
def sweep_work() -> int:
    """Re-send what the database says is due: the broker may have lost it."""
    rt = runtime()
    due = sweep.due_purchases(rt.uow(), settings.stuck_after)
    wake(due)
    events = webhooks.unprocessed_events(rt.uow(), settings.stuck_after)
    enqueue_events(events)
    return len(due) + len(events)


@app.task(name=queues.RECONCILE)
def reconcile() -> int:
    """Store the Stripe events we never received, then handle them like any other."""
    rt = runtime()
    fresh = webhooks.backfill(rt.uow(), rt.gateway)
    enqueue_events(fresh)
    return len(fresh)
