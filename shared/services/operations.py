"""What an operator looks at and fixes: purchases, parked work, alerts, events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import ColumnElement, Engine, func, or_, select
from sqlalchemy.exc import OperationalError

from shared.domain.errors import Conflict, NotFound
from shared.domain.renewals import SubscriptionStatus
from shared.domain.seats import PurchaseStatus
from shared.payments.gateway import PaymentGateway, PaymentUnavailable
from shared.services import charging, monitoring, webhooks
from shared.services.operators import ActionRow, actions_on
from shared.services.queue_stats import QueueFigure, WorkerFigure, queue_figures, workers_online
from shared.services.views import PurchaseLineView, take
from shared.store.db import UnitOfWork
from shared.store.models import (
    OperatorAlert,
    Organization,
    Purchase,
    Renewal,
    SeatChange,
    Subscription,
    User,
    WebhookEvent,
)

PAGE = 100
MAX_PAGE = 1000
OLDEST_SECONDS = 100 * 366 * 86400

Wake = Callable[..., None]
"""Given the ids of purchases that a retry or a replay freed a plan for: a sender of their
charge messages (the web's dispatcher). Without one (the command line has no broker client),
the sweep sends them within seconds."""


def _nobody(*purchase_ids: int) -> None:
    """No sender: the sweep wakes them."""


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
    if older_than is not None:  # past a century every purchase is younger: no overflow
        age = timedelta(seconds=min(older_than, OLDEST_SECONDS))
        query = query.where(Purchase.created_at < datetime.now(UTC) - age)
    with uow:
        return [take(PurchaseRow, p) for p in uow.session.scalars(query)]


def retry_purchase(
    uow: UnitOfWork,
    engine: Engine,
    gateway: PaymentGateway,
    purchase_id: int,
    *,
    parked_only: bool = False,
    wake: Wake = _nobody,
) -> str:
    """Clear the parked reason and take the purchase as far as it goes now, here.

    With `parked_only` (the operator pages' button) a purchase that is no longer parked is
    left alone (`409 not_parked`, naming its status): a second click, or a retry made
    meanwhile by someone else, charges nothing more. The purchases waiting behind it for a
    plan it let go of are given to `wake`, as a worker's charge would send them."""
    with uow:
        purchase = uow.session.get(Purchase, purchase_id, with_for_update={"key_share": True})
        if purchase is None:
            raise NotFound(f"no purchase {purchase_id}", "not_found")
        if parked_only and purchase.attention is None:
            raise Conflict(
                f"purchase {purchase_id} is not parked (it is {purchase.status}); nothing to retry",
                "not_parked",
                status=purchase.status,
            )
        purchase.attention = None
        uow.commit()
    try:
        charged = charging.charge(uow, engine, gateway, purchase_id)
    except (PaymentUnavailable, OperationalError) as error:
        wake(*charging.park(uow, engine, purchase_id, f"retried by an operator: {error}"))
        raise Conflict(
            f"purchase {purchase_id} could not be charged yet ({error}); it stays parked",
            "still_unavailable",
        ) from error
    wake(*charged.wake)
    with uow:
        return uow.session.get_one(Purchase, purchase_id).status


def replay_events(
    uow: UnitOfWork, gateway: PaymentGateway, event_ids: list[str], wake: Wake = _nobody
) -> dict[str, str]:
    """Handle stored events again; handlers only move state forward, so this is safe."""
    outcomes = {}
    for event_id in event_ids:
        try:
            outcomes[event_id], woken = webhooks.process_event(uow, gateway, event_id, again=True)
        except NotFound:
            raise
        except webhooks.CardOnItsWay:
            outcomes[event_id] = _met_a_card_on_its_way(uow, event_id)
        except Exception as error:
            outcomes[event_id] = f"failed: {error}"
        else:
            wake(*woken)
    return outcomes


def _met_a_card_on_its_way(uow: UnitOfWork, event_id: str) -> str:
    """A failed event now waits for the sweep; a done one keeps its outcome (found by review:
    both were told "failed, stored outcome unchanged")."""
    with uow.single() as reading:
        stored = reading.session.scalar(
            select(WebhookEvent.outcome).where(WebhookEvent.id == event_id)
        )
    if stored is None:
        return (
            "waiting: a card a purchase paid with is on its way to Stripe; handled once it landed"
        )
    return "failed: a card a purchase paid with is on its way to Stripe; replay it once it landed"


def replay_failed_events(
    uow: UnitOfWork, gateway: PaymentGateway, wake: Wake = _nobody
) -> dict[str, str]:
    """Every failed event, a page at a time; the cursor moves past those that fail again."""
    outcomes: dict[str, str] = {}
    after = None
    while page := webhooks.failed_events(uow, after, PAGE):
        outcomes.update(replay_events(uow, gateway, [event_id for _, event_id in page], wake))
        after = page[-1]
    return outcomes


@dataclass(frozen=True)
class AlertRow:
    id: int
    kind: str
    event_id: str | None
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
    """Newest first; `outcome` may be `pending` for events not handled yet, oldest first
    (the one `SeatsWebhookWaiting` is about leads, whatever the limit)."""
    received = WebhookEvent.received_at
    query = select(WebhookEvent).order_by(received.desc(), WebhookEvent.id).limit(limit)
    if outcome == "pending":
        query = query.where(WebhookEvent.outcome.is_(None)).order_by(None).order_by(received)
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


# -- one thing in full, for the operator pages ---------------------------------------------


@dataclass(frozen=True)
class SeatChangeRow:
    """One line of a plan's seat audit: who or what changed which count, and why."""

    id: int
    subscription_id: int
    created_at: datetime
    reason: str
    paid_before: int
    paid_after: int
    active_before: int
    active_after: int
    actor_user_id: int | None
    actor_email: str | None
    purchase_id: int | None


def _seat_changes(session: Any, *where: Any) -> list[SeatChangeRow]:
    query = (
        select(SeatChange, User.email)
        .outerjoin(User, User.id == SeatChange.actor_user_id)
        .where(*where)
        .order_by(SeatChange.id)
    )
    return [
        take(SeatChangeRow, change, actor_email=email) for change, email in session.execute(query)
    ]


@dataclass(frozen=True)
class PurchaseDetail:
    """A purchase and everything that happened to it: its attempts and PaymentIntent, its
    failure or parked reason, the seat changes it made, the Stripe events about its intent,
    the alerts it raised, the purchases that paid it again, and what operators did to it."""

    id: int
    organization_id: int
    organization: str
    buyer_id: int
    buyer_email: str
    status: str
    currency: str
    confirmed_amount: int
    amount_due: int
    payment_method_id: str
    new_card: bool
    stripe_payment_intent_id: str | None
    attempts: int
    attention: str | None
    failure_code: str | None
    failure_message: str | None
    card_sync_pending: bool
    action_required_at: datetime | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    retry_of_id: int | None
    retried_by: list[int]
    items: list[PurchaseLineView]
    seat_changes: list[SeatChangeRow]
    events: list[EventRow]
    alerts: list[AlertRow]
    actions: list[ActionRow]


def get_purchase(uow: UnitOfWork, purchase_id: int) -> PurchaseDetail:
    with uow:
        session = uow.session
        purchase = session.get(Purchase, purchase_id)
        if purchase is None:
            raise NotFound(f"no purchase {purchase_id}", "not_found")
        organization = session.get_one(Organization, purchase.organization_id)
        buyer = session.get_one(User, purchase.user_id)
        plans = [item.subscription_id for item in purchase.items]
        alerts = list(
            session.scalars(
                select(OperatorAlert)
                .where(OperatorAlert.purchase_id == purchase_id)
                .order_by(OperatorAlert.id)
            )
        )
        about: list[ColumnElement[bool]] = []
        if purchase.stripe_payment_intent_id:
            about.append(WebhookEvent.object_id == purchase.stripe_payment_intent_id)
        raised = [alert.event_id for alert in alerts if alert.event_id]
        if raised:  # a refund's or a dispute's event names the charge, not the intent
            about.append(WebhookEvent.id.in_(raised))
        events = (
            list(
                session.scalars(
                    select(WebhookEvent).where(or_(*about)).order_by(WebhookEvent.received_at)
                )
            )
            if about
            else []
        )
        return take(
            PurchaseDetail,
            purchase,
            organization=organization.name,
            buyer_id=buyer.id,
            buyer_email=buyer.email,
            retried_by=list(
                session.scalars(
                    select(Purchase.id)
                    .where(Purchase.retry_of_id == purchase_id)
                    .order_by(Purchase.id)
                )
            ),
            items=[PurchaseLineView.of(item) for item in purchase.items],
            seat_changes=_seat_changes(
                session,
                SeatChange.subscription_id.in_(plans),
                SeatChange.purchase_id == purchase_id,
            ),
            events=[take(EventRow, event) for event in events],
            alerts=[take(AlertRow, alert) for alert in alerts],
            actions=actions_on(session, f"purchase:{purchase_id}"),
        )


@dataclass(frozen=True)
class EventDetail:
    """A stored Stripe event with its payload, the alerts it raised and its replays."""

    id: str
    type: str
    object_id: str | None
    source: str
    outcome: str | None
    attempts: int
    error: str | None
    received_at: datetime
    processed_at: datetime | None
    payload: dict[str, Any]
    alerts: list[AlertRow]
    actions: list[ActionRow]


def get_event(uow: UnitOfWork, event_id: str) -> EventDetail:
    with uow:
        event = uow.session.get(WebhookEvent, event_id)
        if event is None:
            raise NotFound(f"no stored event {event_id}", "not_found")
        alerts = uow.session.scalars(
            select(OperatorAlert).where(OperatorAlert.event_id == event_id)
        )
        return take(
            EventDetail,
            event,
            alerts=[take(AlertRow, alert) for alert in alerts],
            actions=actions_on(uow.session, f"event:{event_id}"),
        )


@dataclass(frozen=True)
class RenewalHistoryRow:
    id: int
    period_start: date
    status: str
    seats: int | None
    amount: int | None
    currency: str
    stripe_payment_intent_id: str | None
    attempts: int
    next_attempt_at: datetime | None
    failure_code: str | None
    failure_message: str | None
    attention: str | None
    created_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True)
class SeatAudit:
    """A plan as it is, every change of its counts (oldest first) and its renewals."""

    subscription: SubscriptionRow
    organization: str
    changes: list[SeatChangeRow]
    renewals: list[RenewalHistoryRow]


def seat_audit(uow: UnitOfWork, subscription_id: int) -> SeatAudit:
    with uow:
        plan = uow.session.get(Subscription, subscription_id)
        if plan is None:
            raise NotFound(f"no subscription {subscription_id}", "not_found")
        renewals = uow.session.scalars(
            select(Renewal)
            .where(Renewal.subscription_id == subscription_id)
            .order_by(Renewal.period_start)
        )
        return SeatAudit(
            subscription=take(SubscriptionRow, plan),
            organization=uow.session.get_one(Organization, plan.organization_id).name,
            changes=_seat_changes(uow.session, SeatChange.subscription_id == subscription_id),
            renewals=[take(RenewalHistoryRow, renewal) for renewal in renewals],
        )
