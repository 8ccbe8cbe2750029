"""Webhook handling that mutation testing (bench/mutation) found untested."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from shared.services import webhooks
from shared.services.alerts import raise_alert
from shared.store.models import OperatorAlert, Organization, SyncCursor, WebhookEvent
from tests.services.conftest import Shop
from tests.services.test_webhooks import (
    NOW,
    alerts_of,
    cursor,
    deliver,
    delivered,
    hand_made,
    handle,
    paid,
    stored,
)


@pytest.fixture
def local_time_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A machine whose local time zone is 9 hours ahead of UTC."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("header", "future"),
    [
        # Stripe reads `t` as the text between the first and the second "="
        (f"t={NOW + 3600}=x=y,v1=abc", True),
        # a `t` that is not a number does not hide a later one
        (f"t=soon,t={NOW + 3600},v1=abc", True),
    ],
)
def test_a_signature_dated_ahead_is_spotted_however_the_header_is_written(
    header: str, future: bool
) -> None:
    assert webhooks.signed_in_future(header, now=NOW) is future


def test_an_event_just_stored_is_not_lost_yet_on_a_machine_ahead_of_utc(
    shop: Shop, local_time_not_utc: None
) -> None:
    event = hand_made()
    deliver(shop, event)
    assert event["id"] not in webhooks.unprocessed_events(shop.rt.uow(), older_than=600)
    assert event["id"] in webhooks.unprocessed_events(shop.rt.uow(), older_than=-600)


def test_lost_events_are_found_oldest_first(shop: Shop) -> None:
    first, second = hand_made(), hand_made()
    deliver(shop, first)
    deliver(shop, second)
    with shop.rt.uow() as uow:  # the second was received an hour before the first
        uow.session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == second["id"])
            .values(received_at=datetime.now(UTC) - timedelta(hours=1))
        )
        uow.commit()
    found = webhooks.unprocessed_events(shop.rt.uow(), older_than=-600)
    assert [e for e in found if e in (first["id"], second["id"])] == [second["id"], first["id"]]


def event_around(obj: str) -> bytes:
    return ('{"id": "evt_shape", "type": "x.y", "data": {"object": ' + obj + "}}").encode()


def levels(count: int) -> str:
    return "[" * count + "]" * count


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe{}", "the body is not UTF-8 JSON"),
        (event_around(levels(63)), "the body is nested deeper than 64 levels"),
        (b'{"id": "evt_1", "type": "x", "data": {"object": {"a": NaN}}}', "the body is not JSON"),
        (
            b'{"id": "evt_1", "type": "x"}',
            "an event is a JSON object with id, type and data.object",
        ),
        # closed brackets count down again: 3 levels around, a closed one, then 62 more
        (
            event_around('{"b": {}, "c": ' + levels(62) + "}"),
            "the body is nested deeper than 64 levels",
        ),
    ],
    ids=["not-utf8", "65-levels", "nan", "no-data", "65-levels-after-a-closed-one"],
)
def test_stripe_is_told_why_a_body_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(webhooks.BadEvent) as refused:
        webhooks.parse_event(raw)
    assert (refused.value.code, refused.value.message) == ("malformed_event", message)


def test_a_wide_event_is_not_deep(shop: Shop) -> None:
    """Many objects and lists side by side, each closed before the next opens."""
    siblings = ", ".join(f'"k{n}": {{"l": [[]]}}' for n in range(100))
    event = webhooks.parse_event(event_around("{" + siblings + "}"))
    assert len(event["data"]["object"]) == 100


def test_a_refund_of_nothing_and_a_dispute_of_nothing_are_still_alerts(shop: Shop) -> None:
    refund = hand_made("charge.refunded", amount_refunded=0, currency="cad")
    dispute = hand_made("charge.dispute.created", amount=0, currency="cad")
    for event in (refund, dispute):
        deliver(shop, event)
        assert handle(shop, event["id"]) == ("processed", [])
    assert alerts_of(shop, refund["id"]) == [("refund", None, 0)]
    assert alerts_of(shop, dispute["id"]) == [("dispute", None, 0)]


def test_the_event_of_our_refund_made_before_we_recorded_it_raises_nothing_more(
    shop: Shop,
) -> None:
    """Our automatic refund went through but its answer was lost: the alert still says
    `refund_pending` when Stripe's `charge.refunded` arrives."""
    _, intent = paid(shop)
    with shop.rt.uow() as uow:
        raise_alert(
            uow.session,
            kind="late_payment",
            message="refunded automatically",
            organization_id=shop.org,
            stripe_object_id=intent,
            dedupe_key=f"payment:{intent}",
            refund_pending=True,
        )
        uow.commit()
    shop.fake.refund_payment(intent)
    event_id, handled = delivered(shop, "charge.refunded")
    assert handled == ("processed", [])
    assert stored(shop, event_id).outcome == "processed"
    assert alerts_of(shop, event_id) == []
    with shop.rt.uow() as uow:  # other tests count the refunds pending: leave none behind
        uow.session.execute(
            update(OperatorAlert)
            .where(OperatorAlert.stripe_object_id == intent)
            .values(refund_pending=False)
        )
        uow.commit()


def test_a_dispute_without_a_payment_intent_names_no_purchase(shop: Shop) -> None:
    shop.checkout(4)  # a purchase not charged yet: it has no payment intent either
    event = hand_made("charge.dispute.created", amount=700, currency="cad", payment_intent=None)
    deliver(shop, event)
    assert handle(shop, event["id"]) == ("processed", [])
    assert alerts_of(shop, event["id"]) == [("dispute", None, 700)]


def test_a_detached_card_of_an_organization_without_a_stripe_customer_is_ignored(
    shop: Shop,
) -> None:
    card = shop.fake.card()
    with shop.rt.uow() as uow:
        uow.session.execute(
            update(Organization).where(Organization.id == shop.org).values(payment_method_id=card)
        )
        uow.commit()
    event = hand_made("payment_method.detached", id=card)
    deliver(shop, event)
    assert handle(shop, event["id"]) == ("ignored", [])


class Listing:
    """A Stripe whose event list is given."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    def list_events(self, created_after: int) -> list[dict[str, Any]]:
        return self.events


def no_cursor(shop: Shop) -> None:
    with shop.rt.uow() as uow:
        uow.session.execute(delete(SyncCursor))
        uow.commit()


def test_a_first_reconciliation_with_nothing_listed_sets_no_cursor(shop: Shop) -> None:
    no_cursor(shop)
    assert webhooks.backfill(shop.rt.uow(), Listing([]), now=NOW) == []  # type: ignore[arg-type]
    assert cursor(shop) is None


def test_listed_events_without_a_creation_time_do_not_move_the_cursor(shop: Shop) -> None:
    no_cursor(shop)
    undated = hand_made()
    del undated["created"]
    assert webhooks.backfill(shop.rt.uow(), Listing([undated]), now=NOW) == [undated["id"]]  # type: ignore[arg-type]
    assert cursor(shop) is None


def test_a_refund_alert_tells_an_operator_what_went_back_and_for_what(shop: Shop) -> None:
    purchase, intent = paid(shop)
    amount = shop.purchase(purchase).amount_due
    shop.fake.refund_payment(intent)
    event_id, _ = delivered(shop, "charge.refunded")
    [alert] = shop.alerts()
    assert (alert.event_id, alert.stripe_object_id) == (event_id, f"ch_{intent}")
    assert alert.message == (
        f"ch_{intent} was refunded ({amount} cad) for purchase {purchase}; "
        "seat counts were left as they are: review the plan"
    )


def test_a_dispute_of_a_payment_not_ours_says_so(shop: Shop) -> None:
    event = hand_made("charge.dispute.created", id="dp_elsewhere", amount=700, currency="usd")
    deliver(shop, event)
    handle(shop, event["id"])
    with shop.rt.uow() as uow:
        alert = uow.session.scalars(
            select(OperatorAlert).where(OperatorAlert.event_id == event["id"])
        ).one()
        assert alert.message == (
            "dp_elsewhere is disputed (700 usd) for no purchase of ours; "
            "seat counts were left as they are: review the plan"
        )
