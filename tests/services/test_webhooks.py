"""Stripe events through the real entry points: stored once, handled by type, reconciled."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import delete, event, select, update

from shared.domain.errors import NotFound
from shared.payments.fake_stripe import DECLINED_ON_CHARGE, THREE_D_SECURE
from shared.payments.gateway import PaymentUnavailable
from shared.services import operations, webhooks
from shared.store import inbox
from shared.store.models import OperatorAlert, Purchase, SyncCursor, WebhookEvent
from tests.services.conftest import Shop

NOW = 1_700_000_000


def recorded(shop: Shop, kind: str) -> dict[str, Any]:
    """The latest event of that type Stripe (the fake) recorded."""
    return [event for event in shop.fake.events if event["type"] == kind][-1]


def deliver(shop: Shop, event: dict[str, Any]) -> str:
    return webhooks.store_event(shop.rt.uow(), event)


def handle(shop: Shop, event_id: str, *, again: bool = False) -> webhooks.Handled:
    return webhooks.process_event(shop.rt.uow(), shop.fake, event_id, again=again)


def delivered(shop: Shop, kind: str) -> tuple[str, webhooks.Handled]:
    """Stripe sends its latest event of that type; the worker handles it."""
    event = recorded(shop, kind)
    assert deliver(shop, event) == "new"
    return event["id"], handle(shop, event["id"])


def stripe_sends(shop: Shop, kind: str, obj: dict[str, Any]) -> None:
    """An event the fake has no control for, recorded in the shape it records all others."""
    shop.fake._event(kind, None, obj)


def hand_made(kind: str = "customer.updated", **obj: Any) -> dict[str, Any]:
    """By default a type we handle (about a customer not ours: no call to Stripe)."""
    obj.setdefault("id", f"cus_{secrets.token_hex(6)}")
    return {
        "id": f"evt_{secrets.token_hex(8)}",
        "object": "event",
        "type": kind,
        "created": NOW,
        "data": {"object": obj},
    }


def stored(shop: Shop, event_id: str) -> WebhookEvent:
    with shop.rt.uow() as uow:
        found = uow.session.get_one(WebhookEvent, event_id)
        uow.session.expunge(found)
        return found


def alerts_of(shop: Shop, event_id: str) -> list[tuple[str, int | None, int | None]]:
    with shop.rt.uow() as uow:
        return [
            (alert.kind, alert.purchase_id, alert.amount)
            for alert in uow.session.scalars(
                select(OperatorAlert).where(OperatorAlert.event_id == event_id)
            )
        ]


def cursor(shop: Shop) -> int | None:
    with shop.rt.uow() as uow:
        found = uow.session.get(SyncCursor, webhooks.CURSOR)
        return found.value if found else None


def paid(shop: Shop, target: int = 4) -> tuple[int, str]:
    purchase = shop.checkout(target)
    shop.charge(purchase)
    return purchase, str(shop.purchase(purchase).stripe_payment_intent_id)


def awaiting_3ds(shop: Shop, target: int = 5) -> tuple[int, str]:
    purchase = shop.checkout(target, shop.fake.card(THREE_D_SECURE))
    shop.charge(purchase)
    return purchase, str(shop.purchase(purchase).stripe_payment_intent_id)


# -- storing ---------------------------------------------------------------------------


def test_an_event_is_stored_once_with_its_type_and_object_and_waits_to_be_handled(
    shop: Shop,
) -> None:
    event = hand_made(id="cus_42")
    assert deliver(shop, event) == "new"
    assert deliver(shop, event) == "duplicate"
    row = stored(shop, event["id"])
    assert (row.type, row.object_id, row.source) == ("customer.updated", "cus_42", "webhook")
    assert (row.outcome, row.attempts, row.processed_at) == (None, 0, None)
    assert row.payload == event


def test_the_success_of_a_purchase_already_settled_is_stored_done_and_never_queued(
    shop: Shop,
) -> None:
    """Most events are the echo of what a charger just did: the inbox sees it is done as it
    stores the event (one statement), so no worker ever runs for it."""
    purchase, _ = paid(shop)
    event = recorded(shop, "payment_intent.succeeded")
    calls = len(shop.fake.calls)
    assert deliver(shop, event) == "processed"
    assert deliver(shop, event) == "duplicate"
    row = stored(shop, event["id"])
    assert (row.outcome, row.attempts, row.processed_at is not None) == ("processed", 0, True)
    assert event["id"] not in webhooks.unprocessed_events(shop.rt.uow(), older_than=-60)
    assert shop.fake.calls[calls:] == [] and shop.counts() == (4, 4)
    assert shop.purchase(purchase).status == "succeeded"


def test_a_success_whose_card_is_still_on_its_way_to_stripe_is_handled(shop: Shop) -> None:
    """Done means all of it: a purchase whose new card Stripe has not taken yet still has
    work its event can finish."""
    purchase = shop.checkout(4, shop.fake.card())
    shop.charge(purchase)
    with shop.rt.uow() as uow:
        uow.session.execute(
            update(Purchase).where(Purchase.id == purchase).values(card_sync_pending=True)
        )
        uow.commit()
    _, handled = delivered(shop, "payment_intent.succeeded")
    assert handled == ("processed", [])
    assert shop.purchase(purchase).card_sync_pending is False


def test_a_success_before_the_charger_recorded_it_is_handled(shop: Shop) -> None:
    purchase = shop.checkout(4)
    shop.fake.fail("confirm_payment", when="after")
    with pytest.raises(PaymentUnavailable):
        shop.charge(purchase)
    assert shop.purchase(purchase).status == "processing"
    _, handled = delivered(shop, "payment_intent.succeeded")
    assert handled == ("processed", []) and shop.purchase(purchase).status == "succeeded"


def test_a_customer_update_naming_another_card_is_handled(shop: Shop) -> None:
    shop.charge(shop.checkout(4, shop.fake.card()))
    customer = str(shop.organization().stripe_customer_id)
    other = hand_made(id=customer, invoice_settings={"default_payment_method": "pm_other"})
    assert deliver(shop, other) == "new"
    unnamed = hand_made(id=customer, invoice_settings={"default_payment_method": None})
    assert deliver(shop, unnamed) == "new"


def test_an_object_without_a_text_id_is_stored_without_one(shop: Shop) -> None:
    event = hand_made(id=42)
    deliver(shop, event)
    assert stored(shop, event["id"]).object_id is None


def test_a_batch_returns_only_the_new_events_still_to_handle(shop: Shop) -> None:
    known, fresh, broken = hand_made(), hand_made(), hand_made(note="a\x00b")
    deliver(shop, known)
    new = webhooks.store_events(shop.rt.uow(), [known, fresh, broken], "reconcile")
    assert new == [fresh["id"]]
    assert stored(shop, fresh["id"]).source == "reconcile"
    assert webhooks.store_events(shop.rt.uow(), [], "reconcile") == []


@pytest.mark.parametrize("received", [True, False], ids=["body-received", "event-stored"])
@pytest.mark.parametrize(
    "body",
    [
        b'{"note": "a\\u0000b"}',
        b'{"\\ud800": "a lone surrogate as a key"}',
        b'{"lines": [1, ["\\udfff"]]}',
    ],
    ids=["nul-in-a-value", "surrogate-in-a-key", "surrogate-in-a-list"],
)
def test_an_event_postgresql_cannot_hold_is_kept_replaced_invalid_and_alerted(
    shop: Shop, body: bytes, received: bool
) -> None:
    """Both ways in: a webhook's body (`receive`, the web's) and an event already parsed
    (the reconciliation's)."""
    event_id = f"evt_{secrets.token_hex(8)}"
    raw = b'{"id": "%s", "type": "charge.refunded", "data": {"object": %s}}' % (
        event_id.encode(),
        body,
    )
    if received:
        assert webhooks.receive(shop.rt.uow(), raw) == "invalid"
    else:
        assert deliver(shop, webhooks.parse_event(raw)) == "invalid"
    row = stored(shop, event_id)
    assert row.outcome == "invalid" and row.processed_at is not None
    assert "\ufffd" in json.dumps(row.payload, ensure_ascii=False)
    assert alerts_of(shop, event_id) == [("invalid_event", None, None)]
    assert handle(shop, event_id) == ("invalid", [])
    assert stored(shop, event_id).attempts == 0


# -- handling, type by type ------------------------------------------------------------


def test_an_operator_replay_of_an_invalid_event_leaves_it_invalid(shop: Shop) -> None:
    _, intent = paid(shop)
    shop.fake.refund_payment(intent)
    event = recorded(shop, "charge.refunded")
    event["data"]["object"]["description"] = "a\x00b"
    assert deliver(shop, event) == "invalid"
    handle(shop, event["id"], again=True)  # seats webhooks replay EVENT_ID
    assert stored(shop, event["id"]).outcome == "invalid"


def test_a_success_settles_a_purchase_waiting_for_3d_secure(shop: Shop) -> None:
    purchase, intent = awaiting_3ds(shop)
    shop.fake.authenticate(intent)
    event_id, handled = delivered(shop, "payment_intent.succeeded")
    assert handled == ("processed", [])
    done = shop.purchase(purchase)
    assert done.status == "succeeded" and shop.counts() == (5, 5)
    assert shop.kept_money() == done.amount_due
    row = stored(shop, event_id)
    assert (row.outcome, row.error, row.attempts) == ("processed", None, 1)


def test_a_replayed_success_changes_nothing(shop: Shop) -> None:
    purchase, intent = awaiting_3ds(shop)
    shop.fake.authenticate(intent)
    event_id, _ = delivered(shop, "payment_intent.succeeded")
    assert handle(shop, event_id) == ("processed", [])  # a redelivered task: skipped
    assert stored(shop, event_id).attempts == 1
    assert handle(shop, event_id, again=True) == ("processed", [])  # an operator's replay
    assert stored(shop, event_id).attempts == 2
    assert shop.purchase(purchase).status == "succeeded" and shop.counts() == (5, 5)
    assert shop.kept_money() == shop.purchase(purchase).amount_due and shop.alerts() == []


def test_a_late_payment_failed_never_undoes_a_success(shop: Shop) -> None:
    purchase, intent = awaiting_3ds(shop)
    shop.fake.authenticate(intent, success=False)
    failed = recorded(shop, "payment_intent.payment_failed")
    shop.fake.pay_with(intent, shop.fake.card())  # Stripe.js: another card
    delivered(shop, "payment_intent.succeeded")
    assert deliver(shop, failed) == "processed"  # the payment is settled: nothing to queue
    assert handle(shop, failed["id"], again=True) == ("processed", [])  # a replay: the same
    assert shop.purchase(purchase).status == "succeeded" and shop.counts() == (5, 5)


def test_a_payment_failed_for_a_declined_purchase_leaves_it_failed(shop: Shop) -> None:
    purchase = shop.checkout(5, shop.fake.card(DECLINED_ON_CHARGE))
    shop.charge(purchase)
    _, handled = delivered(shop, "payment_intent.payment_failed")
    assert handled == ("processed", [])
    failed = shop.purchase(purchase)
    assert (failed.status, failed.failure_code) == ("failed", "card_declined")
    assert shop.counts() == (3, 3) and shop.kept_money() == 0


def test_requires_action_shows_the_bank_check_when_the_charger_lost_the_answer(
    shop: Shop,
) -> None:
    purchase = shop.checkout(5, shop.fake.card(THREE_D_SECURE))
    shop.fake.fail("confirm_payment", when="after")
    with pytest.raises(PaymentUnavailable):
        shop.charge(purchase)
    assert shop.purchase(purchase).status == "processing"
    delivered(shop, "payment_intent.requires_action")
    waiting = shop.purchase(purchase)
    assert waiting.status == "requires_action" and waiting.client_secret
    assert shop.counts() == (3, 3)


def test_a_payment_canceled_at_stripe_fails_the_purchase_and_wakes_the_next_buyer(
    shop: Shop,
) -> None:
    purchase, intent = awaiting_3ds(shop, 4)
    second = shop.checkout(6, buyer=shop.another_buyer())
    assert shop.charge(second).next == "wait"  # in line behind the first
    shop.fake.cancel_payment(intent)  # canceled in the dashboard
    _, handled = delivered(shop, "payment_intent.canceled")
    assert handled == ("processed", [second])
    failed = shop.purchase(purchase)
    assert (failed.status, failed.failure_code) == ("failed", "payment_canceled")


def test_a_payment_the_bank_is_still_processing_leaves_the_purchase_waiting(
    shop: Shop,
) -> None:
    purchase, intent = awaiting_3ds(shop)
    processing = shop.fake.intents[intent]
    processing.status = "processing"
    shop.fake._event("payment_intent.processing", processing)
    _, handled = delivered(shop, "payment_intent.processing")
    assert handled == ("processed", [])
    assert shop.purchase(purchase).status == "requires_action"
    assert shop.counts() == (3, 3) and shop.kept_money() == 0


def test_a_refund_made_in_the_dashboard_is_an_alert_and_keeps_the_seats(shop: Shop) -> None:
    purchase, intent = paid(shop)
    shop.fake.refund_payment(intent)
    event_id, handled = delivered(shop, "charge.refunded")
    assert handled == ("processed", [])
    amount = shop.purchase(purchase).amount_due
    assert alerts_of(shop, event_id) == [("refund", purchase, amount)]
    [alert] = shop.alerts()
    assert intent in alert.message and "review the plan" in alert.message
    assert shop.counts() == (4, 4) and shop.kept_money() == 0
    assert handle(shop, event_id, again=True) == ("processed", [])
    assert len(shop.alerts()) == 1


def test_a_refund_of_a_payment_not_ours_is_an_alert_without_a_purchase(shop: Shop) -> None:
    customer = shop.fake.create_customer(999_997, "someone else")
    foreign = shop.fake.create_foreign_payment(700, "cad", customer, {})
    shop.fake.refund_payment(foreign.id)
    event_id, _ = delivered(shop, "charge.refunded")
    assert alerts_of(shop, event_id) == [("refund", None, 700)]
    assert shop.alerts() == []


def test_a_dispute_is_an_alert_and_never_removes_seats(shop: Shop) -> None:
    purchase, intent = paid(shop)
    amount = shop.purchase(purchase).amount_due
    stripe_sends(
        shop,
        "charge.dispute.created",
        {
            "id": f"dp_{secrets.token_hex(6)}",
            "object": "dispute",
            "charge": f"ch_{intent}",
            "payment_intent": intent,
            "amount": amount,
            "currency": "cad",
        },
    )
    event_id, handled = delivered(shop, "charge.dispute.created")
    assert handled == ("processed", [])
    assert alerts_of(shop, event_id) == [("dispute", purchase, amount)]
    assert shop.counts() == (4, 4)


@pytest.mark.parametrize("amount", [2**63, -1, True, 12.5, "700"])
def test_a_refund_amount_we_cannot_hold_is_invalid_at_once_with_an_alert(
    shop: Shop, amount: object
) -> None:
    customer = shop.fake.create_customer(999_996, "someone else")
    foreign = shop.fake.create_foreign_payment(700, "cad", customer, {})
    shop.fake.refund_payment(foreign.id)
    event = recorded(shop, "charge.refunded")
    event["data"]["object"]["amount_refunded"] = amount
    deliver(shop, event)
    assert handle(shop, event["id"]) == ("invalid", [])
    row = stored(shop, event["id"])
    assert row.outcome == "invalid" and "amount_refunded" in str(row.error)
    assert alerts_of(shop, event["id"]) == [("invalid_event", None, None)]
    assert handle(shop, event["id"]) == ("invalid", [])  # done: never retried


def test_our_saved_card_follows_the_default_set_in_the_dashboard(shop: Shop) -> None:
    paid(shop)
    customer = str(shop.organization().stripe_customer_id)
    other = shop.fake.card("5555555555554444")
    shop.fake.set_default_card(customer, other)
    _, handled = delivered(shop, "customer.updated")
    assert handled == ("processed", [])
    organization = shop.organization()
    assert organization.payment_method_id == other
    assert (organization.payment_method_brand, organization.payment_method_last4) == (
        "mastercard",
        "4444",
    )


def test_an_older_card_update_arriving_after_our_next_card_keeps_the_newer_card(
    shop: Shop,
) -> None:
    """The echo of our first card arrives after the second was pushed: Stripe is asked (only
    it knows the default now) and ours stays. What we keep and whether a newer card is on
    its way to Stripe are one read."""
    first, second = shop.fake.card(), shop.fake.card()
    shop.charge(shop.checkout(4, first))
    [stale] = [e for e in shop.fake.events if e["type"] == "customer.updated"]
    shop.charge(shop.checkout(5, second))
    assert deliver(shop, stale) == "new"  # names a card we no longer keep: to handle
    sent: list[str] = []
    listen = (shop.rt.engine, "before_cursor_execute")
    record = lambda *args: sent.append(args[2].split()[0])  # noqa: E731
    event.listen(*listen, record)
    try:
        assert handle(shop, stale["id"]) == ("processed", [])
    finally:
        event.remove(*listen, record)
    # the claim; whose customer, what we keep and a card on its way, read with the customer's
    # sync lock tried in the same statement; the unlock; the outcome. Stripe names the card
    # we keep: nothing is written
    assert sent == ["UPDATE", "SELECT", "SELECT", "UPDATE"]
    organization = shop.organization()
    assert (organization.payment_method_id, organization.payment_method_brand) == (second, "visa")


def test_an_update_of_a_customer_not_ours_is_ignored(shop: Shop) -> None:
    customer = shop.fake.create_customer(999_995, "someone else")
    shop.fake.set_default_card(customer, shop.fake.card())
    event_id, handled = delivered(shop, "customer.updated")
    assert handled == ("ignored", [])
    assert stored(shop, event_id).outcome == "ignored"


def test_a_detached_saved_card_is_no_longer_our_saved_card(shop: Shop) -> None:
    card = shop.fake.card()
    shop.charge(shop.checkout(4, card))
    shop.fake.detach(card)  # the fake leaves it the customer's default: the code must not
    stripe_sends(shop, "payment_method.detached", {"id": card, "object": "payment_method"})
    _, handled = delivered(shop, "payment_method.detached")
    assert handled == ("processed", [])
    organization = shop.organization()
    assert (organization.payment_method_id, organization.payment_method_last4) == (None, None)


def test_a_replay_that_finds_nothing_left_to_do_keeps_processed(shop: Shop) -> None:
    """The first handling cleared the card; a replay finds no card to clear (it would say
    `ignored`), and the stored outcome stays `processed`: a replay never downgrades it."""
    card = shop.fake.card()
    shop.charge(shop.checkout(4, card))
    shop.fake.detach(card)
    stripe_sends(shop, "payment_method.detached", {"id": card, "object": "payment_method"})
    event_id, handled = delivered(shop, "payment_method.detached")
    assert handled == ("processed", [])
    for attempt in (2, 3):
        assert handle(shop, event_id, again=True) == ("processed", [])
        row = stored(shop, event_id)
        assert (row.outcome, row.error, row.attempts) == ("processed", None, attempt)


def test_a_detached_card_that_is_not_our_saved_card_is_ignored(shop: Shop) -> None:
    card = shop.fake.card()
    shop.charge(shop.checkout(4, card))
    stranger = shop.fake.card()
    stripe_sends(shop, "payment_method.detached", {"id": stranger, "object": "payment_method"})
    _, handled = delivered(shop, "payment_method.detached")
    assert handled == ("ignored", [])
    assert shop.organization().payment_method_id == card


@pytest.mark.parametrize("stripe_had", ["no card", "an older card"])
def test_a_new_card_detached_before_its_sync_leaves_stripes_default_as_our_saved_card(
    shop: Shop, stripe_had: str
) -> None:
    """Found by review: the detach set our card to none and ended there, so when Stripe still
    had an older default, renewals found no card although Stripe had one. Stripe's default is
    kept (the detached card's push can never land), and that push is then dropped unsent."""
    older = None
    if stripe_had == "an older card":
        older = shop.fake.card()
        shop.charge(shop.checkout(4, older))
    card = shop.fake.card()
    purchase = shop.paid_while_its_card_push_fails(5, card)
    shop.fake.detach(card)
    stripe_sends(shop, "payment_method.detached", {"id": card, "object": "payment_method"})
    detached = recorded(shop, "payment_method.detached")
    assert deliver(shop, detached) == "new"
    assert handle(shop, detached["id"]) == ("processed", [])
    customer = str(shop.organization().stripe_customer_id)
    assert (
        shop.organization().payment_method_id == older == shop.fake.customers[customer]["default"]
    )
    pushes = shop.fake.calls.count("set_default_card")
    shop.charge(purchase)  # the sweep: the card is no longer ours, so it is not pushed
    assert shop.purchase(purchase).card_sync_pending is False
    assert shop.fake.calls.count("set_default_card") == pushes
    assert shop.organization().payment_method_id == older
    assert not [alert for alert in shop.alerts() if alert.kind == "card_not_default"]


def test_an_event_type_we_do_not_handle_is_stored_ignored_at_once_and_never_queued(
    shop: Shop,
) -> None:
    event = hand_made("invoice.paid", id="in_1")
    assert webhooks.store_event(shop.rt.uow(), event) == "ignored"  # the web queues only "new"
    row = stored(shop, event["id"])
    assert (row.outcome, row.attempts) == ("ignored", 0) and row.processed_at is not None
    assert handle(shop, event["id"]) == ("ignored", [])
    assert event["id"] not in webhooks.unprocessed_events(shop.rt.uow(), older_than=-60)


def test_an_event_never_stored_cannot_be_handled(shop: Shop) -> None:
    with pytest.raises(NotFound):
        handle(shop, "evt_never_received")


def failed_once(shop: Shop) -> tuple[int, dict[str, Any]]:
    """A paid 3-D Secure purchase whose success event failed once: Stripe was away."""
    purchase, intent = awaiting_3ds(shop)
    shop.fake.authenticate(intent)
    event = recorded(shop, "payment_intent.succeeded")
    deliver(shop, event)
    shop.fake.fail("get_payment")
    with pytest.raises(PaymentUnavailable):
        handle(shop, event["id"])
    return purchase, event


def test_a_handler_failing_records_the_error_and_a_retry_finishes_it(shop: Shop) -> None:
    purchase, event = failed_once(shop)
    row = stored(shop, event["id"])
    assert (row.outcome, row.attempts) == ("failed", 1)
    assert str(row.error).startswith("PaymentUnavailable: APIConnectionError")
    assert shop.purchase(purchase).status == "requires_action"
    assert handle(shop, event["id"]) == ("processed", [])  # failed is not done: retried
    row = stored(shop, event["id"])
    assert (row.outcome, row.error, row.attempts) == ("processed", None, 2)
    assert shop.purchase(purchase).status == "succeeded"


def test_a_stale_run_failing_after_another_run_finished_keeps_the_event_processed(
    shop: Shop,
) -> None:
    """The sweep re-sends a failed event while its own retry may still run: the run that
    fails last must not write `failed` over the `processed` the other one reached."""
    purchase, event = failed_once(shop)

    class Overtaken:
        """Stripe answers the stale run only after the other run has finished the event."""

        def __getattr__(self, name: str) -> Any:
            return getattr(shop.fake, name)

        def get_payment(self, payment_id: str) -> Any:
            assert handle(shop, event["id"]) == ("processed", [])
            raise PaymentUnavailable("APIConnectionError: timed out")

    with pytest.raises(PaymentUnavailable):
        webhooks.process_event(shop.rt.uow(), Overtaken(), event["id"])  # type: ignore[arg-type]
    row = stored(shop, event["id"])
    assert (row.outcome, row.error, row.attempts) == ("processed", None, 3)
    assert shop.purchase(purchase).status == "succeeded"


# -- finding lost work -----------------------------------------------------------------


def test_an_event_whose_wake_up_call_was_lost_is_found_once_old_enough(shop: Shop) -> None:
    event = hand_made()
    deliver(shop, event)
    assert event["id"] in webhooks.unprocessed_events(shop.rt.uow(), older_than=-60)
    assert event["id"] not in webhooks.unprocessed_events(shop.rt.uow(), older_than=3600)
    handle(shop, event["id"])
    assert event["id"] not in webhooks.unprocessed_events(shop.rt.uow(), older_than=-60)


def test_a_failed_event_whose_retry_was_lost_is_sent_again_within_its_budget(
    shop: Shop,
) -> None:
    """Found by the chaos run: a retry waiting in a worker that is killed (or in a broker that
    is flushed) was never sent again; the event stayed `failed` until an operator came."""
    _, event = failed_once(shop)
    assert (stored(shop, event["id"]).outcome, stored(shop, event["id"]).attempts) == (
        "failed",
        1,
    )
    assert event["id"] in webhooks.unprocessed_events(shop.rt.uow(), older_than=-60, retries=5)
    assert event["id"] not in webhooks.unprocessed_events(shop.rt.uow(), -60, retries=0)
    # tried lately (its own retry may still come): not yet
    assert event["id"] not in webhooks.unprocessed_events(shop.rt.uow(), 3600, retries=5)
    # past its budget: left for an operator, never sent in a loop
    with shop.rt.uow() as uow:
        uow.session.execute(
            update(WebhookEvent).where(WebhookEvent.id == event["id"]).values(attempts=6)
        )
        uow.commit()
    assert event["id"] not in webhooks.unprocessed_events(shop.rt.uow(), -60, retries=5)


def test_failed_events_are_paged_in_order_and_the_walk_ends(shop: Shop) -> None:
    paid(shop)
    customer = str(shop.organization().stripe_customer_id)
    card = shop.fake.card("5555555555554444")  # set in the dashboard: read from Stripe
    for _ in range(3):
        shop.fake.set_default_card(customer, card)
    updates = [e for e in shop.fake.events if e["type"] == "customer.updated"][-3:]
    mine = webhooks.store_events(shop.rt.uow(), updates, "webhook")
    shop.fake.fail("default_card", times=3)
    for event_id in mine:
        with pytest.raises(PaymentUnavailable):
            handle(shop, event_id)
    pages, after = [], None
    while page := webhooks.failed_events(shop.rt.uow(), after, limit=2):
        pages.append(page)
        after = page[-1]
    keys = [key for page in pages for key in page]
    assert all(len(page) <= 2 for page in pages) and keys == sorted(set(keys))
    assert sorted(mine) == [event_id for _, event_id in keys if event_id in mine]
    for event_id in mine:
        handle(shop, event_id, again=True)
    assert not {event_id for _, event_id in webhooks.failed_events(shop.rt.uow())} & set(mine)


def test_reconciliation_stores_the_events_we_never_received_once(shop: Shop) -> None:
    paid(shop)
    received, *missed = shop.fake.events
    deliver(shop, received)
    fresh = webhooks.backfill(shop.rt.uow(), shop.fake)
    assert missed != [] and set(fresh) <= {event["id"] for event in missed}
    assert {stored(shop, e["id"]).source for e in missed} == {"reconcile"}
    assert stored(shop, received["id"]).source == "webhook"
    assert webhooks.backfill(shop.rt.uow(), shop.fake) == []
    assert cursor(shop) == max(event["created"] for event in shop.fake.events)
    assert [handle(shop, event_id)[0] for event_id in fresh] == ["processed"] * len(fresh)
    assert {stored(shop, event["id"]).outcome for event in missed} == {"processed"}


def test_reconciliation_reads_from_its_cursor_with_five_minutes_of_overlap(shop: Shop) -> None:
    with shop.rt.uow() as uow:
        uow.session.execute(delete(SyncCursor))
        uow.commit()
    paid(shop)
    webhooks.backfill(shop.rt.uow(), shop.fake)
    last = cursor(shop)
    assert last is not None
    within, before = hand_made(), hand_made()
    within["created"], before["created"] = last - 299, last - 301
    shop.fake.events[:] = [within, before]
    assert webhooks.backfill(shop.rt.uow(), shop.fake) == [within["id"]]
    assert cursor(shop) == last  # a listing of older events never moves it back


def test_reconciliation_with_nothing_listed_leaves_its_cursor_alone(shop: Shop) -> None:
    paid(shop)
    webhooks.backfill(shop.rt.uow(), shop.fake)
    last = cursor(shop)
    shop.fake.events.clear()
    assert webhooks.backfill(shop.rt.uow(), shop.fake, now=NOW) == []
    assert cursor(shop) == last


def test_reconciliation_recovers_only_the_types_the_endpoint_hears(shop: Shop) -> None:
    """The endpoint is subscribed to the handled types only; the backfill recovers what it
    missed of those, not every event of the account, and still reads past the rest."""
    with shop.rt.uow() as uow:
        uow.session.execute(delete(SyncCursor))
        uow.commit()
    heard, other = hand_made(), hand_made("customer.created")
    other["created"] = heard["created"] + 5
    shop.fake.events[:] = [heard, other]
    assert webhooks.backfill(shop.rt.uow(), shop.fake, now=NOW) == [heard["id"]]
    with shop.rt.uow() as uow:
        assert uow.session.get(WebhookEvent, other["id"]) is None
    assert cursor(shop) == other["created"]


def test_a_listing_that_fails_stores_nothing_and_the_next_run_catches_up(shop: Shop) -> None:
    paid(shop)
    before = cursor(shop)
    shop.fake.fail("list_events")
    with pytest.raises(PaymentUnavailable):
        webhooks.backfill(shop.rt.uow(), shop.fake)
    ids = [event["id"] for event in shop.fake.events]
    with shop.rt.uow() as uow:
        kept = uow.session.scalars(select(WebhookEvent.id).where(WebhookEvent.id.in_(ids)))
        assert list(kept) == [] and cursor(shop) == before
    assert sorted(webhooks.backfill(shop.rt.uow(), shop.fake)) == sorted(ids)


def test_a_listed_event_we_cannot_hold_is_stored_invalid_and_not_handed_on(shop: Shop) -> None:
    customer = shop.fake.create_customer(999_994, "someone else")
    shop.fake.create_foreign_payment(700, "cad", customer, {"note": "a\x00b"})
    [event] = shop.fake.events
    assert webhooks.backfill(shop.rt.uow(), shop.fake) == []
    assert stored(shop, event["id"]).outcome == "invalid"
    assert alerts_of(shop, event["id"]) == [("invalid_event", None, None)]


def test_a_received_body_is_stored_as_the_event_it_holds(shop: Shop) -> None:
    """The body's own text is the stored payload: what a handler reads back is what the
    body said, escapes that are only text and characters past ASCII included."""
    event_id = f"evt_{secrets.token_hex(8)}"
    raw = (
        '{\n  "id": "EVENT",\n  "type": "customer.updated",\n  "data": {"object": {\n'
        '    "id": "cus_elsewhere", "name": "Société \\\\u0000 générale \\u00e9",\n'
        '    "amount": 12345678901234567890, "ratio": 0.1, "none": null, "list": [true, {}]'
        "\n  }}\n}"
    ).replace("EVENT", event_id)
    assert webhooks.receive(shop.rt.uow(), raw.encode()) == "new"
    row = stored(shop, event_id)
    assert row.payload == webhooks.parse_event(raw.encode())
    assert row.payload["data"]["object"]["name"] == "Société \\u0000 générale é"
    assert row.outcome is None and alerts_of(shop, event_id) == []


@pytest.mark.parametrize("number", ["1e-20000", "2.5E-16384", "1e5", "1.0e2"])
def test_a_received_number_postgresql_reads_otherwise_is_stored_as_python_reads_it(
    shop: Shop, number: str
) -> None:
    """JSON lets an exponent say a number too small for PostgreSQL's numeric (0.0 here):
    the event is stored as Python writes it, not refused by the database forever."""
    event_id = f"evt_{secrets.token_hex(8)}"
    raw = f'{{"id": "{event_id}", "type": "x.y", "data": {{"object": {{"n": {number}}}}}}}'
    assert webhooks.receive(shop.rt.uow(), raw.encode()) == "ignored"
    read = stored(shop, event_id).payload["data"]["object"]["n"]
    assert (read, type(read)) == (float(number), float)  # as the handler would have read it


def test_a_text_postgresql_refuses_is_stored_as_python_reads_it(shop: Shop) -> None:
    """Whatever else PostgreSQL may read otherwise than Python: the event is still stored,
    as Python writes it, rather than refused by the database at every re-send."""
    event = hand_made("x.y", n=0.0)
    row = webhooks._row(event, "webhook")
    text = json.dumps(event).replace("0.0", "1e-20000")
    assert inbox.insert_event(shop.rt.uow(), row, text=text) == {event["id"]: "ignored"}
    assert stored(shop, event["id"]).payload == event


# -- the body and its signature header -------------------------------------------------


def nested(levels: int) -> bytes:
    """A well-formed event whose object holds lists down to `levels` levels in all; brackets
    and an escaped quote inside a string do not count."""
    deep = "[" * (levels - 3) + "]" * (levels - 3)
    obj = '{"deep": ' + deep + ', "ratio": 0.5, "text": "[[[[ \\" {{{{"}'
    return ('{"id": "evt_deep", "type": "x.y", "data": {"object": ' + obj + "}}").encode()


def deepest(text: str) -> int:
    """The deepest bracket outside strings, one character at a time (the reference)."""
    depth = most = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            most = max(most, depth)
        elif char in "]}":
            depth -= 1
    return most


@given(
    st.lists(
        st.sampled_from(["[", "]", "{", "}", '"', "\\", "a", "[" * 30, "{" * 20, '"[[[[', "]" * 9])
    ).map("".join)
)
@example("[" * 64 + "]" * 64)
@example("{" * 65)  # as many brackets as levels: the first to refuse
def test_the_depth_is_counted_outside_strings_as_a_parser_would(text: str) -> None:
    """Unterminated strings, escaped quotes, brackets in strings, closers first: the
    refusal agrees with a count made one character at a time."""
    assert webhooks._too_deep(text) == (deepest(text) > webhooks.MAX_DEPTH)


def test_a_well_formed_event_is_parsed_as_sent() -> None:
    event = webhooks.parse_event(nested(64))
    obj = event["data"]["object"]
    assert (event["id"], obj["ratio"], obj["text"]) == ("evt_deep", 0.5, '[[[[ " {{{{')


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe{}",
        nested(65),
        b'{"id": "evt_1", "type": "x", "data": {"object": {"a": NaN}}}',
        b'{"id": "evt_1", "type": "x", "data": {"object": {"a": -Infinity}}}',
        b'{"id": "evt_1", "type": "x", "data": {"object": {"a": 1e400}}}',
        b'{"id": "evt_1", "type": "x", "data": {"object": {}}',
        b'[{"id": "evt_1", "type": "x", "data": {"object": {}}}]',
        b'{"id": "ch_1", "type": "x", "data": {"object": {}}}',
        b'{"id": "evt_1-2", "type": "x", "data": {"object": {}}}',
        b'{"id": 1, "type": "x", "data": {"object": {}}}',
        b'{"id": "evt_1", "type": "Charge.Refunded", "data": {"object": {}}}',
        b'{"id": "evt_1", "type": "x", "data": {"object": []}}',
        b'{"id": "evt_1", "type": "x", "data": []}',
        b'{"id": "evt_1", "type": "x"}',
    ],
    ids=[
        "not-utf8",
        "65-levels",
        "nan",
        "infinity",
        "out-of-range-float",
        "truncated",
        "not-an-object",
        "id-not-evt",
        "id-with-a-dash",
        "id-not-text",
        "type-uppercase",
        "object-not-an-object",
        "data-not-an-object",
        "no-data",
    ],
)
def test_a_body_that_is_not_a_stripe_event_is_refused(raw: bytes) -> None:
    with pytest.raises(webhooks.BadEvent) as refused:
        webhooks.parse_event(raw)
    assert refused.value.code == "malformed_event"


@pytest.mark.parametrize(
    ("header", "future"),
    [
        (None, False),
        ("", False),
        (f"t={NOW},v1=abc", False),
        (f"t={NOW + 300},v1=abc", False),
        (f"t={NOW + 301},v1=abc", True),
        (f"v1=abc,t={NOW - 10},t={NOW + 3600}", True),
        ("t=soon,v1=abc", False),
        ("t,v1=abc", False),
        (f"v1=t={NOW + 3600}", False),
        (f" t={NOW + 3600}", False),
    ],
)
def test_a_signature_dated_ahead_is_spotted(header: str | None, future: bool) -> None:
    assert webhooks.signed_in_future(header, now=NOW) is future


@pytest.mark.parametrize(
    ("kind", "obj"),
    [
        ("payment_intent.succeeded", {"object": "payment_intent"}),
        ("payment_intent.succeeded", {"id": 12, "metadata": []}),
        ("customer.updated", {"id": "pi_wrong_kind"}),
        ("payment_method.detached", {"name": "no id"}),
    ],
)
def test_an_event_about_no_object_we_can_name_is_invalid_not_failed_forever(
    shop: Shop, kind: str, obj: dict[str, Any]
) -> None:
    event_id = f"evt_noid{secrets.token_hex(4)}"
    body = {"id": event_id, "object": "event", "type": kind, "data": {"object": obj}}
    webhooks.store_event(shop.rt.uow(), body)
    assert webhooks.process_event(shop.rt.uow(), shop.fake, event_id)[0] == "invalid"
    with shop.rt.uow() as uow:
        event = uow.session.get_one(WebhookEvent, event_id)
        assert (event.outcome, event.attempts) == ("invalid", 1)


def test_our_own_card_update_coming_back_asks_stripe_nothing(shop: Shop) -> None:
    """The customer.updated that follows our making a new card the default names the card
    we saved: nothing to change, no call to Stripe (each costs 100 to 300 ms there)."""
    card = shop.fake.card()
    shop.charge(shop.checkout(4, card))
    assert shop.organization().payment_method_id == card
    calls = len(shop.fake.calls)
    event = recorded(shop, "customer.updated")
    assert deliver(shop, event) == "processed"  # stored done: never queued, never handled
    row = stored(shop, event["id"])
    assert (row.attempts, row.processed_at is not None) == (0, True)
    assert handle(shop, event["id"], again=True) == ("processed", [])  # a replay reads it
    assert shop.fake.calls[calls:] == []
    assert shop.organization().payment_method_id == card


def test_pending_events_are_listed_oldest_first_other_lists_newest_first(shop: Shop) -> None:
    """The oldest event not handled yet is the one `SeatsWebhookWaiting` is about: an
    operator listing pending events sees it first."""
    stored_ids = []
    for _ in range(3):
        event = hand_made()
        assert deliver(shop, event) == "new"  # a type we handle, not handled yet
        stored_ids.append(event["id"])

    def listed(**query: Any) -> list[str]:  # (other tests' events share the database)
        rows = operations.list_events(shop.rt.uow(), limit=1000, **query)
        return [row.id for row in rows if row.id in stored_ids]

    assert listed(outcome="pending") == stored_ids
    assert listed() == stored_ids[::-1]
