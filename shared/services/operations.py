"""What an operator looks at and fixes: purchases, parked work, alerts, events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError

from shared.domain.errors import Conflict, NotFound
from shared.domain.renewals import SubscriptionStatus
from shared.domain.seats import PurchaseStatus
from shared.payments.gateway import PaymentGateway, PaymentUnavailable
from shared.services import charging, monitoring, webhooks
from shared.services.queue_stats import QueueFigure, WorkerFigure, queue_figures, workers_online
from shared.services.views import take
from shared.store.db import UnitOfWork
from shared.store.models import (
    OperatorAlert,
    Organization,
    Purchase,
    Renewal,
    Subscription,
    User,
    WebhookEvent,
)

PAGE = 100
MAX_PAGE = 1000


@dataclass(frozen=True)
class PurchaseRow:
    id: int
    organization_id: int
    status: str
    amount_due: int
    currency: str
    stripe_payment_intent_id: str | None
    attempts: int
    attention: str | None
    failure_code: str | None
    created_at: datetime
    updated_at: datetime


def list_purchases(
    uow: UnitOfWork,
    status: str | None,
    parked: bool,
    organization_id: int | None = None,
    older_than: float | None = None,
    limit: int = 500,
) -> list[PurchaseRow]:
    """Newest first; filtered by status, parked, organization and age (seconds)."""
    query = select(Purchase).order_by(Purchase.id.desc()).limit(limit)
    if status:
        query = query.where(Purchase.status == status)
    if parked:
        query = query.where(Purchase.attention.is_not(None))
    if organization_id is not None:
        query = query.where(Purchase.organization_id == organization_id)
    if older_than is not None:
        query = query.where(Purchase.created_at < datetime.now(UTC) - timedelta(seconds=older_than))
    with uow:
        return [take(PurchaseRow, p) for p in uow.session.scalars(query)]


def retry_purchase(
    uow: UnitOfWork, engine: Engine, gateway: PaymentGateway, purchase_id: int
) -> str:
    """Clear the parked reason and take the purchase as far as it goes now, here."""
    with uow:
        purchase = uow.session.get(Purchase, purchase_id, with_for_update={"key_share": True})
        if purchase is None:
            raise NotFound(f"no purchase {purchase_id}", "not_found")
        purchase.attention = None
        uow.commit()
    try:
        charging.charge(uow, engine, gateway, purchase_id)
    except (PaymentUnavailable, OperationalError) as error:
        charging.park(uow, engine, purchase_id, f"retried by an operator: {error}")
        raise Conflict(
            f"purchase {purchase_id} could not be charged yet ({error}); it stays parked",
            "still_unavailable",
        ) from error
    with uow:
        return uow.session.get_one(Purchase, purchase_id).status


def replay_events(uow: UnitOfWork, gateway: PaymentGateway, event_ids: list[str]) -> dict[str, str]:
    """Handle stored events again; handlers only move state forward, so this is safe."""
    outcomes = {}
    for event_id in event_ids:
        try:
            outcomes[event_id], _ = webhooks.process_event(uow, gateway, event_id, again=True)
        except NotFound:
            raise
        except Exception as error:
            outcomes[event_id] = f"failed: {error}"
    return outcomes


def replay_failed_events(uow: UnitOfWork, gateway: PaymentGateway) -> dict[str, str]:
    """Every failed event, a page at a time; the cursor moves past those that fail again."""
    outcomes: dict[str, str] = {}
    after = None
    while page := webhooks.failed_events(uow, after, PAGE):
        outcomes.update(replay_events(uow, gateway, [event_id for _, event_id in page]))
        after = page[-1]
    return outcomes


@dataclass(frozen=True)
class AlertRow:
    id: int
    kind: str
    organization_id: int | None
    purchase_id: int | None
    stripe_object_id: str | None
    amount: int | None
    refund_id: str | None
    message: str
    created_at: datetime
    resolved_at: datetime | None


def list_alerts(
    uow: UnitOfWork, include_resolved: bool, after: int | None = None, limit: int = PAGE
) -> tuple[list[AlertRow], int | None]:
    """One page by id, and the id to pass as `after` for the next (None: this was the last)."""
    query = select(OperatorAlert).order_by(OperatorAlert.id).limit(limit + 1)
    if not include_resolved:
        query = query.where(OperatorAlert.resolved_at.is_(None))
    if after is not None:
        query = query.where(OperatorAlert.id > after)
    with uow:
        found = list(uow.session.scalars(query))
        page = found[:limit]
        rows = [take(AlertRow, a) for a in page]
        return rows, (page[-1].id if len(found) > limit else None)


def resolve_alert(uow: UnitOfWork, alert_id: int) -> None:
    with uow:
        alert = uow.session.get(OperatorAlert, alert_id, with_for_update={"key_share": True})
        if alert is None:
            raise NotFound(f"no alert {alert_id}", "not_found")
        if alert.resolved_at is not None:
            raise Conflict(f"alert {alert_id} is already resolved", "already_resolved")
        alert.resolved_at = datetime.now(UTC)
        uow.commit()


@dataclass(frozen=True)
class OrganizationRow:
    id: int
    name: str
    currency: str
    timezone: str
    stripe_customer_id: str | None
    created_at: datetime


def list_organizations(uow: UnitOfWork, limit: int = 500) -> list[OrganizationRow]:
    with uow:
        query = select(Organization).order_by(Organization.id).limit(limit)
        return [take(OrganizationRow, o) for o in uow.session.scalars(query)]


@dataclass(frozen=True)
class UserRow:
    id: int
    organization_id: int
    email: str
    role: str
    created_at: datetime


def list_users(uow: UnitOfWork, organization_id: int, limit: int = 500) -> list[UserRow]:
    with uow:
        if uow.session.get(Organization, organization_id) is None:
            raise NotFound(f"no organization {organization_id}", "not_found")
        query = (
            select(User)
            .where(User.organization_id == organization_id)
            .order_by(User.id)
            .limit(limit)
        )
        return [take(UserRow, u) for u in uow.session.scalars(query)]


@dataclass(frozen=True)
class SubscriptionRow:
    id: int
    organization_id: int
    product: str
    status: str
    interval: str
    unit_amount: int
    currency: str
    paid_seats: int
    active_seats: int
    current_period_start: date
    renews_at: date


def list_subscriptions(
    uow: UnitOfWork, organization_id: int | None, status: str | None, limit: int = 500
) -> list[SubscriptionRow]:
    query = select(Subscription).order_by(Subscription.id).limit(limit)
    if organization_id is not None:
        query = query.where(Subscription.organization_id == organization_id)
    if status is not None:
        query = query.where(Subscription.status == status)
    with uow:
        return [take(SubscriptionRow, s) for s in uow.session.scalars(query)]


@dataclass(frozen=True)
class EventRow:
    id: str
    type: str
    object_id: str | None
    source: str
    outcome: str | None
    attempts: int
    error: str | None
    received_at: datetime
    processed_at: datetime | None


def list_events(
    uow: UnitOfWork,
    outcome: str | None = None,
    kind: str | None = None,
    limit: int = PAGE,
) -> list[EventRow]:
    """Newest first; `outcome` may be `pending` for events not handled yet."""
    query = select(WebhookEvent).order_by(WebhookEvent.received_at.desc()).limit(limit)
    if outcome == "pending":
        query = query.where(WebhookEvent.outcome.is_(None))
    elif outcome is not None:
        query = query.where(WebhookEvent.outcome == outcome)
    if kind is not None:
        query = query.where(WebhookEvent.type == kind)
    with uow:
        return [take(EventRow, e) for e in uow.session.scalars(query)]


@dataclass(frozen=True)
class Status:
    """One screen for an operator: is work flowing, and what needs a person."""

    queues: list[QueueFigure]
    workers: list[WorkerFigure]
    purchases: dict[str, int]
    purchases_parked: int
    purchases_stuck: int
    oldest_unfinished_purchase_seconds: float | None
    renewals_past_due: int
    renewals_suspended: int
    renewals_parked: int
    webhooks_failed: int
    webhooks_pending: int
    alerts_open: int
    broker: str


def status(uow: UnitOfWork, broker: redis.Redis, stuck_after: float) -> Status:
    """What `seats ops status` and the /ops dashboard show; every figure is one indexed read."""
    try:
        figures, workers, reached = queue_figures(broker), workers_online(broker), "ok"
    except redis.RedisError as error:
        figures, workers, reached = [], [], f"unavailable: {error}"
    stale = datetime.now(UTC) - timedelta(seconds=stuck_after)
    unfinished = [
        PurchaseStatus.PENDING,
        PurchaseStatus.PROCESSING,
        PurchaseStatus.REQUIRES_ACTION,
    ]
    with uow:
        session = uow.session

        def count(*where: Any, of: Any = Purchase) -> int:
            return int(session.scalar(select(func.count()).select_from(of).where(*where)) or 0)

        oldest = session.scalar(
            select(func.min(Purchase.created_at)).where(Purchase.status.in_(unfinished))
        )
        return Status(
            queues=figures,
            workers=workers,
            purchases=monitoring.purchase_counts_in(session),
            purchases_parked=count(Purchase.attention.is_not(None)),
            purchases_stuck=count(
                Purchase.status.in_(unfinished[:2]),
                Purchase.updated_at < stale,
                Purchase.attention.is_(None),
            ),
            oldest_unfinished_purchase_seconds=(
                (datetime.now(UTC) - oldest).total_seconds() if oldest else None
            ),
            renewals_past_due=count(
                Subscription.status == SubscriptionStatus.PAST_DUE, of=Subscription
            ),
            renewals_suspended=count(
                Subscription.status == SubscriptionStatus.SUSPENDED, of=Subscription
            ),
            renewals_parked=count(Renewal.attention.is_not(None), of=Renewal),
            webhooks_failed=count(WebhookEvent.outcome == "failed", of=WebhookEvent),
            webhooks_pending=count(WebhookEvent.outcome.is_(None), of=WebhookEvent),
            alerts_open=count(OperatorAlert.resolved_at.is_(None), of=OperatorAlert),
            broker=reached,
        )
