"""What an operator looks at and fixes: purchases, parked work, alerts, events."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError

from shared.domain.errors import Conflict, NotFound
from shared.payments.gateway import PaymentGateway, PaymentUnavailable
from shared.services import charging, webhooks
from shared.store.db import UnitOfWork
from shared.store.models import OperatorAlert, Purchase

PAGE = 100
MAX_PAGE = 1000


def list_purchases(uow: UnitOfWork, status: str | None, parked: bool) -> list[dict[str, object]]:
    query = select(Purchase).order_by(Purchase.id.desc()).limit(500)
    if status:
        query = query.where(Purchase.status == status)
    if parked:
        query = query.where(Purchase.attention.is_not(None))
    with uow:
        return [
            {
                "id": p.id,
                "organization_id": p.organization_id,
                "status": p.status,
                "amount_due": p.amount_due,
                "currency": p.currency,
                "payment_intent": p.stripe_payment_intent_id,
                "attempts": p.attempts,
                "attention": p.attention,
                "failure_code": p.failure_code,
                "updated_at": p.updated_at.isoformat(),
            }
            for p in uow.session.scalars(query)
        ]


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


def list_alerts(
    uow: UnitOfWork, include_resolved: bool, after: int | None = None, limit: int = PAGE
) -> tuple[list[dict[str, object]], int | None]:
    """One page by id, and the id to pass as `after` for the next (None: this was the last)."""
    query = select(OperatorAlert).order_by(OperatorAlert.id).limit(limit + 1)
    if not include_resolved:
        query = query.where(OperatorAlert.resolved_at.is_(None))
    if after is not None:
        query = query.where(OperatorAlert.id > after)
    with uow:
        found = list(uow.session.scalars(query))
        page = found[:limit]
        rows: list[dict[str, object]] = [
            {
                "id": a.id,
                "kind": a.kind,
                "organization_id": a.organization_id,
                "purchase_id": a.purchase_id,
                "stripe_object_id": a.stripe_object_id,
                "amount": a.amount,
                "refund_id": a.refund_id,
                "message": a.message,
                "created_at": a.created_at.isoformat(),
                "resolved_at": a.resolved_at.isoformat() if a.resolved_at else None,
            }
            for a in page
        ]
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
