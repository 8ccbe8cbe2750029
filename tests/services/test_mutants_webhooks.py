"""Webhook handling that mutation testing (bench/mutation) found untested."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from shared.services import webhooks
from shared.store.models import WebhookEvent
from tests.services.conftest import Shop
from tests.services.test_webhooks import NOW, deliver, hand_made


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
