"""Tasks take ids, call one service, and own only retries and acknowledgement."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime

import redis
from celery import Task
from sqlalchemy.exc import OperationalError

from shared import queues
from shared.payments.gateway import PaymentUnavailable
from shared.services import charging, queue_stats, renewals, sweep, webhooks
from worker import telemetry
from worker.app import app, runtime, settings
from worker.failpoints import checkpoint

log = logging.getLogger("seats.worker")

send = queues.Dispatcher(app.send_task)


def backoff(retries: int) -> float:
    """Exponential, capped at 60 s, with full jitter so retries do not stampede."""
    return random.uniform(0, min(60.0, 2.0**retries))  # noqa: S311


def _cause(error: Exception) -> str:
    if isinstance(error, webhooks.CardOnItsWay):
        return "a card still on its way to Stripe"
    if isinstance(error, PaymentUnavailable):
        return "payment processor unavailable"
    if isinstance(error, OperationalError):
        return "database unavailable"
    return f"unexpected {type(error).__name__}"


def retry_or_give_up(task: Task, error: Exception, give_up: Callable[[str], str]) -> str:
    """Retry with backoff; after `SEATS_CHARGE_RETRIES` retries, hand the cause to `give_up`
    (park the purchase, leave the event `failed`), so nothing loops forever."""
    if task.request.retries >= settings.charge_retries:
        cause = f"{_cause(error)}: {error}"
        waiting = isinstance(error, webhooks.CardOnItsWay)  # the sweep goes on: no fault
        log.log(
            logging.WARNING if waiting else logging.ERROR,
            "%s%r gave up after %s retries: %s",
            task.name,
            task.request.args,
            task.request.retries,
            cause,
        )
        return give_up(cause)
    raise task.retry(exc=error, countdown=backoff(task.request.retries)) from error


@app.task(name=queues.CHARGE_PURCHASE, bind=True, max_retries=None)
def charge_purchase(self: Task, purchase_id: int) -> str:
    rt = runtime()

    def park(cause: str) -> str:
        send.charge(*charging.park(rt.uow(), rt.engine, purchase_id, cause))
        return "parked"

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
        return retry_or_give_up(self, error, park)
    send.charge(*outcome.wake)
    return outcome.next.value


@app.task(name=queues.PROCESS_EVENT, bind=True, max_retries=None)
def process_event(self: Task, event_id: str) -> str:
    """After the last retry the event stays `failed` for an operator (`seats webhooks replay`),
    or waiting for the sweep while a card is still on its way to Stripe."""
    rt = runtime()
    try:
        outcome, woken = webhooks.process_event(rt.uow(), rt.gateway, event_id)
    except Exception as error:
        waits = isinstance(error, webhooks.CardOnItsWay)
        return retry_or_give_up(self, error, lambda cause: "waiting" if waits else "failed")
    send.charge(*woken)
    return outcome


@app.task(name=queues.DRAIN_EVENTS, bind=True, max_retries=None)
def drain_events(self: Task) -> str:
    """Stored events, a batch at a time. The mark that a drain is on its way is cleared
    before looking, so an event stored from here on sends a drain of its own."""
    rt = runtime()
    # unreachable, the mark expires by itself; the next event after that sends a drain
    with contextlib.suppress(redis.RedisError):
        telemetry.client().delete(queues.DRAIN_ARMED)
    try:
        drained = webhooks.drain(
            rt.uow(),
            rt.gateway,
            settings.webhook_batch,
            when_full=lambda: send.drain_events(more=True),
        )
    except Exception as error:
        # events not taken yet wait for the retried drain; those taken and not finished
        # (the outcomes' write failed) are sent again by the sweep once unclaimed for long
        return retry_or_give_up(self, error, lambda cause: "left for the sweep")
    send.charge(*drained.woken)
    send.process_event(*drained.left)
    return f"{drained.taken} events"


@app.task(name=queues.REFUND, bind=True, max_retries=None)
def refund(self: Task, alert_id: int) -> str:
    """An automatic refund decided earlier; left pending for the sweep if Stripe stays away."""
    rt = runtime()
    try:
        charging.refund(rt.uow(), rt.gateway, alert_id)
    except Exception as error:
        return retry_or_give_up(self, error, lambda cause: "pending")
    return "done"


def dunning() -> renewals.Dunning:
    return renewals.Dunning(settings.dunning_days, settings.off_session)


@app.task(name=queues.RENEW, bind=True, max_retries=None)
def renew(self: Task, renewal_id: int, force: bool = False) -> str:
    """One renewal; a plan waiting on a purchase is picked up again by the next scan."""
    rt = runtime()

    def park(cause: str) -> str:
        renewals.park(rt.uow(), renewal_id, cause)
        return "parked"

    try:
        step = renewals.renew(
            rt.uow(),
            rt.engine,
            rt.gateway,
            renewal_id,
            dunning=dunning(),
            force=force,
            checkpoint=checkpoint,
        )
    except Exception as error:
        return retry_or_give_up(self, error, park)
    return step.value


@app.task(name=queues.RENEWAL_SCAN)
def renewal_scan() -> int:
    """Find what is due in the database and send one task per renewal, batch by batch."""
    rt = runtime()
    sent = 0
    for batch in renewals.scan(rt.uow(), now=datetime.now(UTC), stuck_after=settings.stuck_after):
        send.renew(*batch)
        sent += len(batch)
    return sent


@app.task(name=queues.SWEEP)
def sweep_work() -> int:
    """Re-send what the database says is due: the broker may have lost it. Nothing goes to
    a queue that is behind (its oldest message older than `SEATS_STUCK_AFTER`)."""
    rt = runtime()
    try:
        late = queue_stats.behind(
            queue_stats.queue_figures(telemetry.client()), settings.stuck_after
        )
    except redis.RedisError:
        late = set()  # the sends below will fail the same way, and say so
    due = [] if queues.CHARGES in late else sweep.due_purchases(rt.uow(), settings.stuck_after)
    send.charge(*due)
    events = (
        []
        if queues.WEBHOOKS in late
        else webhooks.unprocessed_events(rt.uow(), settings.stuck_after, settings.charge_retries)
    )
    send.process_event(*events)
    refunds = (
        [] if queues.DEFAULT in late else sweep.pending_refunds(rt.uow(), settings.stuck_after)
    )
    send.refund(*refunds)
    if late:
        log.info("sweep: nothing sent to %s, behind", ", ".join(sorted(late)))
    return len(due) + len(events) + len(refunds)


@app.task(name=queues.RECONCILE)
def reconcile() -> int:
    """Store the Stripe events we never received, then handle them like any other."""
    rt = runtime()
    fresh = webhooks.backfill(rt.uow(), rt.gateway)
    if fresh:  # stored like webhooks: a drain takes them, in batches
        send.drain_events(more=True)
    return len(fresh)
