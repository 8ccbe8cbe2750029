"""Draining stored events in batches: every waiting event handled once, in one claim and
one write of outcomes, failures left for a task of their own, two drains never sharing."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select, text, update

from shared.bootstrap import Runtime
from shared.config import Settings
from shared.payments.fake_stripe import THREE_D_SECURE
from shared.payments.gateway import PaymentUnavailable
from shared.services import monitoring, webhooks
from shared.store.models import OperatorAlert, Organization, WebhookEvent
from tests.services.conftest import Shop, runtime_on_own_database
from tests.services.test_round_trips import counted
from tests.services.test_webhooks import hand_made, recorded, stored


@pytest.fixture(scope="module")
def runtime(fresh_database: Any, settings: Settings) -> Iterator[Runtime]:
    """A database of this module's own: a drain takes every waiting event in it, so other
    tests' leftovers must not be there (the conftest's `shop` builds on this one)."""
    yield from runtime_on_own_database(fresh_database, settings)


@pytest.fixture(autouse=True)
def nothing_left_waiting(runtime: Runtime) -> Iterator[None]:
    """No event is left waiting for the next test's drains."""
    yield
    with runtime.uow() as uow:
        uow.session.execute(delete(OperatorAlert))
        uow.session.execute(delete(WebhookEvent))
        uow.commit()


def stripe_where(shop: Shop, **calls: Callable[..., Any]) -> Any:
    """The in-memory Stripe with some of its calls replaced."""

    class Replaced:
        def __getattr__(self, name: str) -> Any:
            return calls.get(name) or getattr(shop.fake, name)

    return Replaced()


def store(shop: Shop, *events: dict[str, Any]) -> None:
    assert webhooks.store_events(shop.rt.uow(), list(events), "webhook") == [
        e["id"] for e in events
    ]


def outcomes(shop: Shop, ids: list[str]) -> dict[str, tuple[str | None, int]]:
    with shop.rt.uow() as uow:
        rows = uow.session.execute(
            select(WebhookEvent.id, WebhookEvent.outcome, WebhookEvent.attempts).where(
                WebhookEvent.id.in_(ids)
            )
        )
        return {row.id: (row.outcome, row.attempts) for row in rows}


def test_a_drain_applies_every_waiting_event_once(shop: Shop) -> None:
    purchase = shop.checkout(5, shop.fake.card(THREE_D_SECURE))
    shop.charge(purchase)
    shop.fake.authenticate(str(shop.purchase(purchase).stripe_payment_intent_id))
    succeeded = recorded(shop, "payment_intent.succeeded")
    strangers = [hand_made() for _ in range(4)]
    store(shop, succeeded, *strangers)

    drained = webhooks.drain(shop.rt.uow(), shop.fake, 10)

    assert (drained.taken, drained.left) == (5, [])
    assert shop.purchase(purchase).status == "succeeded" and shop.counts() == (5, 5)
    assert stored(shop, succeeded["id"]).outcome == "processed"
    assert outcomes(shop, [e["id"] for e in strangers]) == {
        e["id"]: ("ignored", 1) for e in strangers
    }
    again = webhooks.drain(shop.rt.uow(), shop.fake, 10)
    assert again.taken == 0 and stored(shop, succeeded["id"]).attempts == 1


def test_a_full_batch_asks_for_another_drain_before_handling_it(shop: Shop) -> None:
    events = [hand_made() for _ in range(5)]
    store(shop, *events)
    calls: list[int] = []

    def when_full() -> None:  # the batch is taken but not handled yet
        calls.append(sum(outcome is None for outcome, _ in outcomes(shop, ids).values()))

    ids = [e["id"] for e in events]
    first = webhooks.drain(shop.rt.uow(), shop.fake, 3, when_full)
    assert first.taken == 3 and calls == [5]
    second = webhooks.drain(shop.rt.uow(), shop.fake, 3, when_full)
    assert second.taken == 2 and calls == [5]  # not full: nothing more to ask for
    assert {outcome for outcome, _ in outcomes(shop, ids).values()} == {"ignored"}


def test_after_a_failure_the_rest_of_the_batch_goes_to_tasks_of_their_own(shop: Shop) -> None:
    """Stripe away: the drain does not wait out one timeout per event, one after another."""
    before = hand_made()
    purchase = shop.checkout(5, shop.fake.card(THREE_D_SECURE))
    shop.charge(purchase)
    intent = str(shop.purchase(purchase).stripe_payment_intent_id)
    shop.fake.authenticate(intent)
    succeeded = recorded(shop, "payment_intent.succeeded")
    after = [hand_made() for _ in range(3)]
    for event in (before, succeeded, *after):  # one at a time: taken oldest first
        store(shop, event)
    calls: list[str] = []

    def away(payment_id: str) -> Any:
        calls.append(payment_id)
        raise PaymentUnavailable("APIConnectionError: timed out")

    drained = webhooks.drain(shop.rt.uow(), stripe_where(shop, get_payment=away), 10)

    assert calls == [intent]  # one timeout waited here, not one per event
    assert drained.left == [succeeded["id"]] + [e["id"] for e in after]
    assert stored(shop, before["id"]).outcome == "ignored"  # handled before: recorded
    row = stored(shop, succeeded["id"])
    assert (row.outcome, row.attempts) == ("failed", 1) and "timed out" in str(row.error)
    assert {stored(shop, e["id"]).outcome for e in after} == {None}
    assert webhooks.drain(shop.rt.uow(), shop.fake, 10).taken == 0  # theirs now, not a drain's
    # their own tasks then apply them
    for event_id in drained.left:
        assert webhooks.process_event(shop.rt.uow(), shop.fake, event_id)[0] in (
            "processed",
            "ignored",
        )
    assert shop.purchase(purchase).status == "succeeded"
    assert {stored(shop, e["id"]).outcome for e in after} == {"ignored"}


def test_an_event_meeting_a_card_on_its_way_goes_alone_and_the_batch_goes_on(
    shop: Shop,
) -> None:
    """A race with a charger is not Stripe away: only that event goes to a task of its own
    (it is read again once the card landed), the rest of the batch is handled here."""
    shop.charge(shop.checkout(4, shop.fake.card()))
    purchase = shop.checkout(5, shop.fake.card())
    shop.fake.fail("set_default_card")
    shop.charge(purchase)
    assert shop.purchase(purchase).card_sync_pending  # its card is on its way
    customer = str(shop.organization().stripe_customer_id)
    shop.fake.set_default_card(customer, shop.fake.card("5555555555554444"))  # the dashboard
    dashboard = recorded(shop, "customer.updated")
    after = [hand_made() for _ in range(3)]
    for event in (dashboard, *after):  # one at a time: taken oldest first
        store(shop, event)

    drained = webhooks.drain(shop.rt.uow(), shop.fake, 10)

    assert drained.left == [dashboard["id"]]
    row = stored(shop, dashboard["id"])
    assert row.outcome is None and str(row.error).startswith("waiting: ")  # not `failed`
    assert row.processed_at is None  # not counted as handled by the lag figures
    assert {stored(shop, e["id"]).outcome for e in after} == {"ignored"}
    # what SeatsWebhookWaiting reads, should the card never land
    later = row.received_at + timedelta(seconds=1000)
    assert monitoring.figures(shop.rt.uow(), now=later).oldest_pending_event_seconds == 1000


def test_two_drains_at_once_never_take_the_same_event(shop: Shop) -> None:
    events = [hand_made() for _ in range(60)]
    store(shop, *events)
    taken: list[int] = []
    start = threading.Barrier(2)

    def run() -> None:
        start.wait()
        taken.append(webhooks.drain(shop.rt.uow(), shop.fake, 40).taken)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == [20, 40]
    assert set(outcomes(shop, [e["id"] for e in events]).values()) == {("ignored", 1)}


def test_an_event_taken_by_a_run_that_died_waits_for_the_sweep_not_another_drain(
    shop: Shop,
) -> None:
    event = hand_made()
    store(shop, event)
    with shop.rt.uow() as uow:  # taken, then the worker was killed before any outcome
        uow.session.execute(webhooks.DRAIN, {"size": 1})
        uow.commit()
    assert webhooks.drain(shop.rt.uow(), shop.fake, 10).taken == 0
    assert webhooks.unprocessed_events(shop.rt.uow(), older_than=-1) == [event["id"]]


def test_a_batch_costs_one_claim_one_write_and_the_handlers_own_reads(shop: Shop) -> None:
    events = [hand_made() for _ in range(20)]
    store(shop, *events)
    with counted(shop) as count:
        assert webhooks.drain(shop.rt.uow(), shop.fake, 20).taken == 20
    # customer.updated for customers not ours: one read each
    assert count.statements <= 20 + 2 and count.transactions == 0, count


def test_the_sweep_never_sends_again_what_a_running_drain_holds(shop: Shop) -> None:
    """Events that waited long for a free thread are old, not lost: while a drain works
    through them the sweep leaves them to it (found by review: it used to send them all)."""
    purchase = shop.checkout(5, shop.fake.card(THREE_D_SECURE))
    shop.charge(purchase)
    intent = str(shop.purchase(purchase).stripe_payment_intent_id)
    shop.fake.authenticate(intent)
    early = [hand_made() for _ in range(2)]
    succeeded = recorded(shop, "payment_intent.succeeded")
    ids = [e["id"] for e in early] + [succeeded["id"]]
    for event in (*early, succeeded):
        store(shop, event)
    with shop.rt.uow() as uow:  # received two minutes ago
        uow.session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id.in_(ids))
            .values(received_at=text("now() - interval '120 seconds'"))
        )
        uow.commit()
    swept: list[str] = []

    def sweep_meanwhile(payment_id: str) -> Any:
        swept.extend(webhooks.unprocessed_events(shop.rt.uow(), older_than=60, retries=5))
        return shop.fake.get_payment(payment_id)

    drained = webhooks.drain(shop.rt.uow(), stripe_where(shop, get_payment=sweep_meanwhile), 25)

    assert drained.taken == 3 and drained.left == []
    assert [event_id for event_id in swept if event_id in ids] == []
    assert shop.purchase(purchase).status == "succeeded"


def test_a_drain_never_writes_over_an_end_another_run_reached_meanwhile(shop: Shop) -> None:
    shop.charge(shop.checkout(4))  # the organization now has its Stripe customer
    with shop.rt.uow() as uow:
        customer = uow.session.get_one(Organization, shop.org).stripe_customer_id
    first = hand_made()  # a stranger's: handled first, its outcome written at the end
    second = hand_made(id=customer, invoice_settings={"default_payment_method": "pm_other"})
    for event in (first, second):
        store(shop, event)
    asked: list[str] = []

    def other_run_meanwhile(customer_id: str) -> Any:
        # another run of the first event (a replay) ends it before this batch is written
        asked.append(customer_id)
        webhooks._finish(shop.rt.uow(), first["id"], "invalid", "by the other run", "x")
        return shop.fake.default_card(customer_id)

    webhooks.drain(shop.rt.uow(), stripe_where(shop, default_card=other_run_meanwhile), 25)
    assert asked == [customer]
    row = stored(shop, first["id"])
    assert (row.outcome, row.error) == ("invalid", "by the other run")
    assert stored(shop, second["id"]).outcome == "processed"
