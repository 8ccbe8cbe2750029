"""Stripe events: stored once by id, then applied by looking at the current state.

A handler never trusts the event's snapshot or its arrival order: it re-reads
the object from Stripe and moves our records only forward, so duplicates,
reordering and replays all end the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert

from shared import charging
from shared.db import UnitOfWork
from shared.errors import NotFound, Refused
from shared.models import OperatorAlert, Organization, Purchase, SyncCursor, WebhookEvent
from shared.payments import PaymentGateway

MAX_EVENT_BYTES = 256 * 1024
TOLERANCE_SECONDS = 300
BACKFILL_WINDOW = 3 * 24 * 3600
CURSOR = "stripe_events"

Handled = tuple[str, list[int]]
Handler = Callable[[UnitOfWork, PaymentGateway, dict[str, Any], str], Handled]


class BadEvent(Refused):
    code = "bad_event"


def _well_formed(event: Any) -> bool:
    """Only the shape we rely on is checked; the rest is kept as Stripe sent it."""
    if not isinstance(event, dict):
        return False
    data = event.get("data")
    return (
        isinstance(event.get("id"), str)
        and event["id"].startswith("evt_")
        and len(event["id"]) <= 255
        and isinstance(event.get("type"), str)
        and len(event["type"]) <= 255
        and isinstance(data, dict)
        and isinstance(data.get("object"), dict)
    )


def parse_event(raw: bytes) -> dict[str, Any]:
    try:
        event = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadEvent("the body is not JSON", "malformed_event") from error
    if not _well_formed(event):
        raise BadEvent("an event is a JSON object with id, type and data.object", "malformed_event")
    return dict(event)


def _row(event: dict[str, Any], source: str) -> dict[str, Any]:
    obj = event["data"]["object"]
    return {
        "id": event["id"],
        "type": event["type"],
        "object_id": obj.get("id") if isinstance(obj.get("id"), str) else None,
        "payload": event,
        "source": source,
        "attempts": 0,
    }


EVENTS = cast(Table, WebhookEvent.__table__)
STORE = insert(EVENTS).on_conflict_do_nothing(index_elements=["id"]).returning(EVENTS.c.id)
"""One Core statement, compiled once and run without the ORM's bulk machinery: it is
the hot path of every webhook."""


def store_events(uow: UnitOfWork, events: list[dict[str, Any]], source: str) -> list[str]:
    """Insert in one statement; return the ids that were new (duplicates are no-ops)."""
    if not events:
        return []
    with uow:
        inserted = uow.session.scalars(STORE, [_row(event, source) for event in events]).all()
        uow.commit()
        return list(inserted)


def store_event(uow: UnitOfWork, event: dict[str, Any], source: str = "webhook") -> bool:
    """True when this delivery is the first; later ones are no-ops."""
    return bool(store_events(uow, [event], source))


def _purchase_for_intent(uow: UnitOfWork, intent: dict[str, Any]) -> int | None:
    """The purchase this payment was made for, or that it names in its metadata.

    Whether a naming intent really is ours (customer, amount, currency) is
    for `charging.settle` to decide: it adopts it, refunds it or raises an alert.
    """
    with uow:
        found = uow.session.scalar(
            select(Purchase.id).where(Purchase.stripe_payment_intent_id == intent["id"])
        )
        if found is not None:
            return found
        claimed = str((intent.get("metadata") or {}).get("purchase_id") or "")
        if not claimed.isdigit() or int(claimed) > 2**63 - 1:
            return None
        return uow.session.scalar(select(Purchase.id).where(Purchase.id == int(claimed)))


def _flag(uow: UnitOfWork, kind: str, event_id: str, message: str, **fields: Any) -> None:
    with uow:
        uow.session.execute(
            insert(OperatorAlert)
            .values(kind=kind, event_id=event_id, message=message, **fields)
            .on_conflict_do_nothing(index_elements=["event_id"])
        )
        uow.commit()


def on_payment_intent(
    uow: UnitOfWork, gateway: PaymentGateway, intent: dict[str, Any], event_id: str
) -> Handled:
    """Settle from the intent as Stripe has it now; the seats never wait for the card."""
    purchase_id = _purchase_for_intent(uow, intent)
    if purchase_id is None:
        return "ignored", []
    payment = gateway.get_payment(intent["id"])
    outcome = charging.settle(uow, gateway, purchase_id, payment)
    charging.save_card_later(uow, gateway, purchase_id)
    return "processed", outcome.wake


def _alert(kind: str, verb: str) -> Handler:
    """Money went back to the customer: tell an operator, never remove seats silently."""

    def handle(
        uow: UnitOfWork, gateway: PaymentGateway, obj: dict[str, Any], event_id: str
    ) -> Handled:
        intent = obj.get("payment_intent")
        with uow:
            purchase = (
                uow.session.scalar(
                    select(Purchase).where(Purchase.stripe_payment_intent_id == intent)
                )
                if isinstance(intent, str)
                else None
            )
            organization_id = purchase.organization_id if purchase else None
            purchase_id = purchase.id if purchase else None
        amount = obj.get("amount_refunded") if kind == "refund" else obj.get("amount")
        where = f"purchase {purchase_id}" if purchase_id else "no purchase of ours"
        _flag(
            uow,
            kind,
            event_id,
            f"{obj.get('id')} {verb} ({amount} {obj.get('currency')}) for {where}; "
            "seat counts were left as they are: review the plan",
            organization_id=organization_id,
            purchase_id=purchase_id,
            stripe_object_id=obj.get("id"),
            amount=amount if isinstance(amount, int) else None,
        )
        return "processed", []

    return handle


def _sync_saved_card(
    uow: UnitOfWork, gateway: PaymentGateway, customer_id: str, gone: str | None = None
) -> Handled:
    """Our saved card follows Stripe's current default for the customer (never a detached one)."""
    with uow:
        known = uow.session.scalar(
            select(Organization.id).where(Organization.stripe_customer_id == customer_id)
        )
    if known is None:
        return "ignored", []
    card = gateway.default_card(customer_id)
    if card is not None and card.id == gone:
        card = None
    with uow:
        organization = uow.session.get_one(Organization, known, with_for_update={"key_share": True})
        organization.payment_method_id = card.id if card else None
        organization.payment_method_brand = card.brand if card else None
        organization.payment_method_last4 = card.last4 if card else None
        uow.commit()
    return "processed", []


def on_customer_updated(
    uow: UnitOfWork, gateway: PaymentGateway, customer: dict[str, Any], event_id: str
) -> Handled:
    return _sync_saved_card(uow, gateway, customer["id"])


def on_payment_method_detached(
    uow: UnitOfWork, gateway: PaymentGateway, method: dict[str, Any], event_id: str
) -> Handled:
    with uow:
        customers = list(
            uow.session.scalars(
                select(Organization.stripe_customer_id).where(
                    Organization.payment_method_id == method["id"],
                    Organization.stripe_customer_id.is_not(None),
                )
            )
        )
    for customer in customers:
        if customer:
            _sync_saved_card(uow, gateway, customer, gone=method["id"])
    return ("processed" if customers else "ignored"), []


HANDLERS: dict[str, Handler] = {
    "payment_intent.succeeded": on_payment_intent,
    "payment_intent.payment_failed": on_payment_intent,
    "payment_intent.requires_action": on_payment_intent,
    "payment_intent.canceled": on_payment_intent,
    "payment_intent.processing": on_payment_intent,
    "charge.refunded": _alert("refund", "was refunded"),
    "charge.dispute.created": _alert("dispute", "is disputed"),
    "customer.updated": on_customer_updated,
    "payment_method.detached": on_payment_method_detached,
}


def _finish(uow: UnitOfWork, event_id: str, outcome: str, error: str | None) -> None:
    with uow:
        event = uow.session.get_one(WebhookEvent, event_id, with_for_update={"key_share": True})
        event.outcome = outcome
        event.error = error
        event.processed_at = datetime.now(UTC)
        uow.commit()


def process_event(
    uow: UnitOfWork, gateway: PaymentGateway, event_id: str, *, again: bool = False
) -> Handled:
    """Apply one stored event. Done events are skipped unless `again` (a replay)."""
    with uow:
        event = uow.session.get(WebhookEvent, event_id, with_for_update={"key_share": True})
        if event is None:
            raise NotFound(f"no stored event {event_id}", "not_found")
        if event.outcome in ("processed", "ignored") and not again:
            return event.outcome, []
        event.attempts += 1
        handler = HANDLERS.get(event.type)
        if handler is None:
            event.outcome, event.error = "ignored", None
            event.processed_at = datetime.now(UTC)
        uow.commit()
        if handler is None:
            return "ignored", []
        obj = event.payload["data"]["object"]
    try:
        outcome, wake = handler(uow, gateway, obj, event_id)
    except Exception as error:
        _finish(uow, event_id, "failed", f"{type(error).__name__}: {error}"[:1000])
        raise
    _finish(uow, event_id, outcome, None)
    return outcome, wake


def backfill(uow: UnitOfWork, gateway: PaymentGateway, now: float | None = None) -> list[str]:
    """Store the events Stripe has that we never received; return the new ones."""
    now = now or time.time()
    with uow:
        cursor = uow.session.get(SyncCursor, CURSOR)
        since = (cursor.value - TOLERANCE_SECONDS) if cursor else int(now) - BACKFILL_WINDOW
    events = [event for event in gateway.list_events(since) if _well_formed(event)]
    with uow:
        known = set(
            uow.session.scalars(
                select(WebhookEvent.id).where(WebhookEvent.id.in_([e["id"] for e in events]))
            )
        )
    fresh = store_events(uow, [e for e in events if e["id"] not in known], "reconcile")
    newest = max((int(event.get("created") or 0) for event in events), default=0)
    if newest:
        with uow:
            uow.session.execute(
                insert(SyncCursor)
                .values(name=CURSOR, value=newest)
                .on_conflict_do_update(
                    index_elements=["name"],
                    set_={"value": newest, "updated_at": datetime.now(UTC)},
                    where=SyncCursor.value < newest,
                )
            )
            uow.commit()
    return fresh


def unprocessed_events(uow: UnitOfWork, older_than: float) -> list[str]:
    """Stored but never handled (their wake-up call was lost)."""
    cutoff = datetime.fromtimestamp(time.time() - older_than, UTC)
    with uow:
        return list(
            uow.session.scalars(
                select(WebhookEvent.id)
                .where(WebhookEvent.outcome.is_(None), WebhookEvent.received_at < cutoff)
                .order_by(WebhookEvent.received_at)
                .limit(1000)
            )
        )


def failed_events(uow: UnitOfWork) -> list[str]:
    with uow:
        return list(
            uow.session.scalars(
                select(WebhookEvent.id)
                .where(WebhookEvent.outcome == "failed")
                .order_by(WebhookEvent.received_at)
            )
        )
