"""Tasks take ids, call one service, and own only retries and acknowledgement."""

from __future__ import annotations

import logging
import random

from celery import Task
from sqlalchemy.exc import OperationalError

from shared import charging, queues, sweep
from shared.payments import PaymentUnavailable
from worker.app import app, runtime, settings
from worker.failpoints import checkpoint

log = logging.getLogger("seats.worker")


def backoff(retries: int) -> float:
    """Exponential, capped at 60 s, with full jitter so retries do not stampede."""
    return random.uniform(0, min(60.0, 2.0**retries))  # noqa: S311


def wake(purchase_ids: list[int]) -> None:
    for purchase_id in purchase_ids:
        charge_purchase.apply_async(args=[purchase_id], queue=queues.CHARGES)


@app.task(name=queues.CHARGE_PURCHASE, bind=True, max_retries=None)
def charge_purchase(self: Task, purchase_id: int) -> str:
    rt = runtime()
    try:
        outcome = charging.charge(
            rt.uow(), rt.engine, rt.gateway, purchase_id, checkpoint=checkpoint
        )
    except (PaymentUnavailable, OperationalError) as error:
        if self.request.retries >= settings.charge_retries:
            log.error("purchase %s parked after %s retries: %s", purchase_id, self.request.retries, error)
            charging.park(rt.uow(), purchase_id, f"payment processor unavailable: {error}")
            return "parked"
        raise self.retry(exc=error, countdown=backoff(self.request.retries)) from error
    wake(outcome.wake)
    return outcome.next.value


@app.task(name=queues.SWEEP)
def sweep_purchases() -> int:
    due = sweep.due_purchases(runtime().uow(), settings.stuck_after)
    wake(due)
    return len(due)
