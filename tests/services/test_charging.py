"""Charging against the in-memory Stripe: every branch, and the money-safety defects of issue 7."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text, update
from sqlalchemy.exc import OperationalError

from shared.payments.fake_stripe import (
    DECLINED_ON_ATTACH,
    DECLINED_ON_CHARGE,
    THREE_D_SECURE,
    FakeStripe,
)
from shared.payments.gateway import Payment, PaymentRefused, PaymentUnavailable
from shared.services import (
    cart,
    charging,
    checkout,
    operations,
    provisioning,
    purchases,
    sweep,
    webhooks,
)
from shared.services.access import Actor
from shared.services.views import to_json
from shared.store.models import Purchase, Subscription
from tests.services.conftest import Shop, later


def settle_by_webhook(shop: Shop, intent: str) -> None:
    """What the `payment_intent.*` handler does with Stripe's event."""
    obj = {"id": intent, "metadata": dict(shop.fake.intents[intent].metadata)}
    webhooks.on_payment_intent(shop.rt.uow(), shop.fake, obj, "evt_test")


def test_a_new_card_pays_applies_both_counts_and_becomes_the_saved_card(shop: Shop) -> None:
    card = shop.fake.card()
    purchase = shop.checkout(5, card)
    assert shop.charge(purchase).next == "done"
    done = shop.purchase(purchase)
    assert done.status == "succeeded" and not done.card_sync_pending
    assert shop.counts() == (5, 5)
    organization = shop.organization()
    assert (organization.payment_method_id, organization.payment_method_brand) == (card, "visa")
    assert organization.payment_method_last4 == "4242"
    assert shop.fake.customers[str(organization.stripe_customer_id)]["default"] == card
    assert shop.kept_money() == done.amount_due > 0


@pytest.mark.parametrize(
    ("number", "code"),
    [(DECLINED_ON_CHARGE, "card_declined"), (DECLINED_ON_ATTACH, "card_declined")],
)
def test_a_declined_card_fails_changes_nothing_and_cannot_be_paid_later(
    shop: Shop, number: str, code: str
) -> None:
    purchase = shop.checkout(5, shop.fake.card(number))
    shop.charge(purchase)
    failed = shop.purchase(purchase)
    assert (failed.status, failed.failure_code) == ("failed", code)
    assert shop.counts() == (3, 3) and shop.kept_money() == 0
    if failed.stripe_payment_intent_id:
        assert shop.fake.intents[failed.stripe_payment_intent_id].status == "canceled"


def test_an_unknown_card_fails_with_its_own_code(shop: Shop) -> None:
    purchase = shop.checkout(5, "pm_NoSuchCard")
    shop.charge(purchase)
    assert shop.purchase(purchase).failure_code == "payment_method_unknown"


def test_three_d_secure_waits_then_succeeds_when_the_bank_says_yes(shop: Shop) -> None:
    purchase = shop.checkout(5, shop.fake.card(THREE_D_SECURE))
    assert shop.charge(purchase).next == "poll"
    waiting = shop.purchase(purchase)
    assert waiting.status == "requires_action" and waiting.client_secret
    assert shop.counts() == (3, 3)
    shop.fake.authenticate(str(waiting.stripe_payment_intent_id))
    shop.charge(purchase)
    assert shop.purchase(purchase).status == "succeeded" and shop.counts() == (5, 5)


def test_failed_authentication_cancels_the_intent_so_it_cannot_be_paid_later(shop: Shop) -> None:
    """Issue 7, item 1: Stripe.js lets a customer pay a failed intent with another card."""
    purchase = shop.checkout(5, shop.fake.card(THREE_D_SECURE))
    shop.charge(purchase)
    intent = str(shop.purchase(purchase).stripe_payment_intent_id)
    shop.fake.authenticate(intent, success=False)
    shop.charge(purchase)
    failed = shop.purchase(purchase)
    assert failed.failure_code == "payment_intent_authentication_failure"
    assert shop.fake.intents[intent].status == "canceled"
    with pytest.raises(PaymentRefused):
        shop.fake.pay_with(intent, shop.fake.card())
    assert shop.kept_money() == 0


def test_money_arriving_for_a_failed_purchase_gives_the_seats_still_to_buy(shop: Shop) -> None:
    """Issue 7, item 1: the cancel did not go through and the customer paid anyway."""
    purchase = shop.checkout(5, shop.fake.card(THREE_D_SECURE))
    shop.charge(purchase)
    intent = str(shop.purchase(purchase).stripe_payment_intent_id)
    shop.fake.authenticate(intent, success=False)
    shop.fake.fail("cancel_payment")
    shop.charge(purchase)
    assert shop.purchase(purchase).status == "failed"
    shop.fake.pay_with(intent, shop.fake.card())
    settle_by_webhook(shop, intent)
    done = shop.purchase(purchase)
    assert (done.status, done.failure_code) == ("succeeded", None)
    assert shop.counts() == (5, 5)
    assert shop.kept_money() == done.amount_due
    assert shop.alerts() == []


def test_money_arriving_for_a_failed_purchase_whose_seats_were_bought_is_refunded(
    shop: Shop,
) -> None:
    """Issue 7, item 1: never kept silently; refunded automatically with an alert."""
    purchase = shop.checkout(5, shop.fake.card(THREE_D_SECURE))
    shop.charge(purchase)
    intent = str(shop.purchase(purchase).stripe_payment_intent_id)
    shop.fake.authenticate(intent, success=False)
    shop.fake.fail("cancel_payment")
    shop.charge(purchase)
    other = shop.checkout(5, buyer=shop.another_buyer())
    shop.charge(other)
    assert shop.purchase(other).status == "succeeded"
    shop.fake.pay_with(intent, shop.fake.card())
    settle_by_webhook(shop, intent)
    settle_by_webhook(shop, intent)  # a second delivery refunds nothing more
    assert shop.purchase(purchase).status == "failed"
    assert shop.counts() == (5, 5)
    [alert] = shop.alerts()
    assert (alert.kind, alert.purchase_id, alert.stripe_object_id) == (
        "late_payment",
        purchase,
        intent,
    )
    assert alert.refund_id is not None and alert.resolved_at is None
    assert len(shop.fake.refunds) == 1
    [refunded] = [e for e in shop.fake.events if e["type"] == "charge.refunded"]
    webhooks.HANDLERS["charge.refunded"](
        shop.rt.uow(), shop.fake, refunded["data"]["object"], "evt_own_refund"
    )
    assert len(shop.alerts()) == 1, "our own refund's event raises no second alert"
    assert shop.kept_money() == shop.purchase(other).amount_due


def test_two_chargers_of_a_new_organization_make_one_customer_and_delete_none(
    shop: Shop,
) -> None:
    """Issue 7, item 2."""
    second_plan = provisioning.create_subscription(
        shop.rt.uow(), shop.org, "XLGL", 1000, "month", 1, date.today()
    )
    first = shop.checkout(4)
    other = shop.another_buyer()
    from shared.services import cart

    cart.add_item(shop.rt.uow(), other, second_plan, 2, True)
    second, _, _ = checkout.checkout(shop.rt.uow(), other, "k2", shop.fake.card())
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(purchase: int) -> None:
        try:
            barrier.wait()
            shop.charge(purchase)
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(p,)) for p in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(shop.fake.customers) == 1
    assert shop.organization().stripe_customer_id in shop.fake.customers
    assert shop.fake.calls.count("create_customer") == 1
    assert {shop.purchase(p).status for p in (first, second)} == {"succeeded"}


def test_an_in_flight_idempotent_request_is_retried_not_refused(shop: Shop) -> None:
    """Issue 7, item 2: Stripe's idempotency error means "later", never a card refusal."""
    purchase = shop.checkout(4)
    shop.fake.fail("create_customer")
    with pytest.raises(PaymentUnavailable):
        shop.charge(purchase)
    assert shop.purchase(purchase).status == "processing"
    shop.charge(purchase)
    assert shop.purchase(purchase).status == "succeeded"


def test_a_foreign_intent_naming_our_purchase_is_an_alert_and_grants_nothing(
    shop: Shop,
) -> None:
    """Issue 7, item 3: a 1-cent USD intent on another customer must not buy seats."""
    purchase = shop.checkout(4)
    stranger = shop.fake.create_customer(999_999, "stranger")
    foreign = shop.fake.create_foreign_payment(1, "usd", stranger, {"purchase_id": str(purchase)})
    settle_by_webhook(shop, foreign.id)
    assert shop.purchase(purchase).status == "pending" and shop.counts() == (3, 3)
    [alert] = shop.alerts()
    assert (alert.kind, alert.stripe_object_id, alert.refund_id) == (
        "foreign_payment",
        foreign.id,
        None,
    )
    shop.charge(purchase)
    assert shop.purchase(purchase).status == "succeeded" and shop.counts() == (4, 4)


def test_a_second_payment_for_a_paid_purchase_is_refunded_with_an_alert(shop: Shop) -> None:
    purchase = shop.checkout(4)
    shop.charge(purchase)
    paid = shop.purchase(purchase)
    customer = str(shop.organization().stripe_customer_id)
    second = shop.fake.create_foreign_payment(
        paid.amount_due, "cad", customer, {"purchase_id": str(purchase)}
    )
    settle_by_webhook(shop, second.id)
    [alert] = shop.alerts()
    assert (alert.kind, alert.stripe_object_id) == ("duplicate_payment", second.id)
    assert alert.refund_id is not None
    assert shop.kept_money() == paid.amount_due and shop.counts() == (4, 4)


def test_our_unrecorded_intent_is_adopted_after_a_crash(shop: Shop) -> None:
    """The charger died between creating the intent and recording it; the rerun resumes it."""
    purchase = shop.checkout(4)

    def crash(step: str) -> None:
        if step == "payment_unrecorded":
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        shop.charge(purchase, checkpoint=crash)
    assert shop.purchase(purchase).stripe_payment_intent_id is None
    [intent] = shop.fake.intents
    shop.fake.confirm_payment(intent)  # e.g. a success reported before the rerun
    settle_by_webhook(shop, intent)
    done = shop.purchase(purchase)
    assert (done.status, done.stripe_payment_intent_id) == ("succeeded", intent)
    shop.charge(purchase)
    assert len(shop.fake.intents) == 1 and shop.kept_money() == done.amount_due


def test_a_rerun_after_midnight_keeps_the_first_price_and_its_key(shop: Shop) -> None:
    """Issue 7: a crash after pricing, then a rerun on another day, never re-prices."""
    purchase = shop.checkout(4)
    shop.fake.fail("create_payment")
    with pytest.raises(PaymentUnavailable):
        shop.charge(purchase)
    priced = shop.purchase(purchase).amount_due
    shop.charge(purchase, now=later(3 * 86400))
    done = shop.purchase(purchase)
    assert (done.status, done.amount_due) == ("succeeded", priced)


def test_seats_follow_the_money_when_saving_the_card_at_stripe_fails(shop: Shop) -> None:
    """Issue 7: the card bookkeeping retries on its own; seats never wait for it."""
    card = shop.fake.card()
    purchase = shop.checkout(5, card)
    shop.fake.fail("set_default_card", times=2)
    shop.charge(purchase)
    paid = shop.purchase(purchase)
    assert paid.status == "succeeded" and paid.card_sync_pending
    assert shop.counts() == (5, 5)
    assert shop.organization().payment_method_id == card
    assert purchase in sweep.due_purchases(shop.rt.uow(), stuck_after=-1)
    with pytest.raises(PaymentUnavailable):
        shop.charge(purchase)
    shop.charge(purchase)
    assert not shop.purchase(purchase).card_sync_pending
    customer = str(shop.organization().stripe_customer_id)
    assert shop.fake.customers[customer]["default"] == card
    assert purchase not in sweep.due_purchases(shop.rt.uow(), stuck_after=-1)


def test_a_late_card_sync_never_brings_back_an_older_card(shop: Shop) -> None:
    old, new = shop.fake.card(), shop.fake.card()
    first = shop.checkout(4, old)
    shop.fake.fail("set_default_card")
    shop.charge(first)
    second = shop.checkout(5, new)
    shop.charge(second)
    shop.charge(first)  # the sweep retries the first purchase's card bookkeeping
    customer = str(shop.organization().stripe_customer_id)
    assert shop.fake.customers[customer]["default"] == new
    assert shop.organization().payment_method_id == new


def test_a_parked_purchase_without_an_intent_lets_the_next_buyer_through(shop: Shop) -> None:
    """Issue 7, item 4."""
    first = shop.checkout(4)
    second = shop.checkout(6, buyer=shop.another_buyer())
    shop.fake.fail("create_customer", times=3)
    for _ in range(3):
        with pytest.raises(PaymentUnavailable):
            shop.charge(first)
    assert shop.charge(second).next == "wait"
    reason = "payment processor unavailable: down"
    wake = charging.park(shop.rt.uow(), shop.rt.engine, first, reason)
    assert wake == [second]
    parked = shop.purchase(first)
    assert (parked.status, parked.attention) == ("pending", reason)
    shop.charge(second)
    assert shop.purchase(second).status == "succeeded" and shop.counts() == (6, 6)
    with shop.rt.uow() as uow:
        uow.session.get_one(Purchase, first).attention = None
        uow.commit()
    shop.charge(first)
    retried = shop.purchase(first)
    assert (retried.status, retried.failure_code, retried.amount_due) == (
        "failed",
        "already_paid",
        0,
    )


def test_a_parked_purchase_with_an_intent_keeps_its_plan_and_says_why_others_wait(
    shop: Shop,
) -> None:
    first = shop.checkout(4)
    later_buyer = shop.another_buyer()
    second = shop.checkout(6, buyer=later_buyer)
    shop.fake.fail("confirm_payment")
    with pytest.raises(PaymentUnavailable):
        shop.charge(first)
    assert (
        charging.park(shop.rt.uow(), shop.rt.engine, first, "payment processor unavailable") == []
    )
    assert shop.purchase(first).status == "processing"
    assert shop.charge(second).next == "wait"
    seen = purchases.get_purchase(shop.rt.uow(), later_buyer, second)
    assert seen.status == "pending"
    assert seen.waiting is not None and seen.waiting.code == "behind_parked"


def test_a_purchase_queued_behind_3d_secure_says_why(shop: Shop) -> None:
    first = shop.checkout(4, shop.fake.card(THREE_D_SECURE))
    shop.charge(first)
    buyer = shop.another_buyer()
    second = shop.checkout(6, buyer=buyer)
    assert shop.charge(second).next == "wait"
    seen = purchases.get_purchase(shop.rt.uow(), buyer, second)
    assert seen.waiting is not None and seen.waiting.code == "behind_authentication"
    assert "waiting" not in to_json(purchases.get_purchase(shop.rt.uow(), shop.buyer, first))


def test_already_paid_charges_nothing_and_says_zero(shop: Shop) -> None:
    first = shop.checkout(5)
    second = shop.checkout(5, buyer=shop.another_buyer())
    shop.charge(first)
    shop.charge(second)
    failed = shop.purchase(second)
    assert (failed.status, failed.failure_code) == ("failed", "already_paid")
    assert failed.amount_due == 0 == sum(item.amount_due for item in failed.items)
    assert shop.kept_money() == shop.purchase(first).amount_due


def test_never_charges_more_than_the_customer_confirmed(shop: Shop) -> None:
    confirmed_on = datetime.now(UTC) + timedelta(days=30)
    purchase = shop.checkout(5, now=confirmed_on)
    shop.charge(purchase)  # today: more days left, so a higher price
    failed = shop.purchase(purchase)
    assert (failed.status, failed.failure_code) == ("failed", "quote_expired")
    assert "CAD" in str(failed.failure_message) and shop.kept_money() == 0
    assert shop.fake.calls.count("create_payment") == 0


def test_an_abandoned_3d_secure_payment_is_canceled_and_frees_the_plan(shop: Shop) -> None:
    first = shop.checkout(4, shop.fake.card(THREE_D_SECURE))
    shop.charge(first)
    second = shop.checkout(6, buyer=shop.another_buyer())
    assert shop.charge(second).next == "wait"
    outcome = shop.charge(first, action_ttl=3600, now=later(3601))
    assert outcome.wake == [second]
    failed = shop.purchase(first)
    assert (failed.status, failed.failure_code) == ("failed", "payment_canceled")
    shop.charge(second)
    assert shop.purchase(second).status == "succeeded"


def test_a_line_that_cannot_be_applied_is_an_alert_not_silence(shop: Shop) -> None:
    """Issue 7, item 3: money taken and no seat change is never silent."""
    purchase = shop.checkout(4)
    shop.fake.fail("create_payment")
    with pytest.raises(PaymentUnavailable):
        shop.charge(purchase)
    with shop.rt.uow() as uow:  # the plan changed under the claim (an operator's fix)
        uow.session.execute(
            update(Subscription).where(Subscription.id == shop.plan).values(paid_seats=9)
        )
        uow.commit()
    shop.charge(purchase)
    assert shop.purchase(purchase).status == "succeeded"
    [alert] = shop.alerts()
    assert alert.kind == "seats_not_applied" and alert.purchase_id == purchase


def test_the_sweep_takes_turns_instead_of_starving_stale_work(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 7: 3-D Secure purchases first, by id, starved newer stuck ones."""
    waiting = shop.checkout(4, shop.fake.card(THREE_D_SECURE))
    shop.charge(waiting)
    plan = provisioning.create_subscription(
        shop.rt.uow(), shop.org, "XLGL", 1000, "month", 1, date.today()
    )
    buyer = shop.another_buyer()
    from shared.services import cart

    cart.add_item(shop.rt.uow(), buyer, plan, 2, True)
    stuck, _, _ = checkout.checkout(shop.rt.uow(), buyer, "stuck", shop.fake.card())
    with shop.rt.uow() as uow:
        uow.session.execute(
            update(Purchase)
            .where(Purchase.id == stuck)
            .values(updated_at=datetime.now(UTC) - timedelta(hours=1))
        )
        uow.commit()
    monkeypatch.setattr(sweep, "BATCH", 1)
    assert sweep.due_purchases(shop.rt.uow(), stuck_after=60) == [stuck]


def test_a_member_actor_is_never_used_here(shop: Shop, fake: FakeStripe) -> None:
    """Guard for the fixtures: service tests act as a buyer."""
    assert shop.buyer.role == "buyer" and isinstance(shop.buyer, Actor)


def test_a_purchase_stored_behind_another_of_its_plan_is_woken_by_it_alone(
    shop: Shop,
) -> None:
    """Checked out while another purchase of its plan is still to charge, it is stored
    waiting and the web sends it no message (a charge task would only find the plan
    taken): the one ahead wakes it when done."""
    first = shop.checkout(4)
    cart.add_item(shop.rt.uow(), buyer := shop.another_buyer(), shop.plan, 6, True)
    behind = checkout.checkout(shop.rt.uow(), buyer, "behind", shop.fake.card())
    assert behind.queued and shop.purchase(behind.purchase_id).waiting_since is not None
    assert shop.charge(first).wake == [behind.purchase_id]
    assert shop.charge(behind.purchase_id).next == "done"
    assert shop.purchase(behind.purchase_id).status == "succeeded" and shop.counts() == (6, 6)


def test_a_waiting_purchase_whose_wake_up_was_lost_is_sent_by_the_sweep(shop: Shop) -> None:
    """The wake-up is sent after the commit that frees the plan: a crash between the two,
    or an operator's retry that charges in its own process, loses it. The sweep sends a
    waiting purchase first in line for free plans after a few seconds, not a minute."""
    first = shop.checkout(4)
    behind = shop.checkout(6, buyer=shop.another_buyer())
    with shop.rt.uow() as uow:  # it has waited a while: only its plan's release is recent
        uow.session.execute(
            text("UPDATE purchases SET updated_at = now() - interval '30 seconds' WHERE id = :id"),
            {"id": behind},
        )
        uow.commit()
    assert shop.charge(first).wake == [behind]  # a wake-up the test never sends
    soon = datetime.now(UTC) + sweep.UNWOKEN_AFTER + timedelta(seconds=1)
    # just freed: its wake-up may be on its way, a second message would find nothing to do
    assert behind not in sweep.due_purchases(shop.rt.uow(), stuck_after=60)
    assert behind in sweep.due_purchases(shop.rt.uow(), stuck_after=60, now=soon)
    assert shop.charge(behind).next == "done"
    assert behind not in sweep.due_purchases(shop.rt.uow(), stuck_after=60, now=soon)


def test_an_operator_retry_wakes_the_purchase_waiting_for_its_plan(shop: Shop) -> None:
    """Parked with its intent (Stripe away at the confirm), the first keeps its plan and the
    next buyer's checkout waits behind it; the operator's retry pays it and hands over the
    waiting purchase to wake, as a worker's charge would (the ops page sends it)."""
    first = shop.checkout(4)
    shop.fake.fail("confirm_payment")
    with pytest.raises(PaymentUnavailable):
        shop.charge(first)
    assert charging.park(shop.rt.uow(), shop.rt.engine, first, "Stripe away") == []
    cart.add_item(shop.rt.uow(), buyer := shop.another_buyer(), shop.plan, 6, True)
    behind = checkout.checkout(shop.rt.uow(), buyer, "behind", shop.fake.card())
    assert behind.queued
    woken: list[int] = []
    status = operations.retry_purchase(
        shop.rt.uow(), shop.rt.engine, shop.fake, first, wake=lambda *ids: woken.extend(ids)
    )
    assert (status, woken) == ("succeeded", [behind.purchase_id])
    assert shop.charge(behind.purchase_id).next == "done" and shop.counts() == (6, 6)


def test_an_operator_replay_wakes_the_purchase_waiting_for_its_plan(shop: Shop) -> None:
    """The bank said yes after 3-D Secure; the event that settles it is handled by an
    operator's replay (`seats webhooks replay`, the ops page), which wakes the next one."""
    first = shop.checkout(4, shop.fake.card(THREE_D_SECURE))
    shop.charge(first)
    cart.add_item(shop.rt.uow(), buyer := shop.another_buyer(), shop.plan, 6, True)
    behind = checkout.checkout(shop.rt.uow(), buyer, "behind", shop.fake.card())
    assert behind.queued
    shop.fake.authenticate(str(shop.purchase(first).stripe_payment_intent_id))
    paid = [e for e in shop.fake.events if e["type"] == "payment_intent.succeeded"][-1]
    assert webhooks.store_event(shop.rt.uow(), paid) == "new"
    woken: list[int] = []
    outcomes = operations.replay_events(
        shop.rt.uow(), shop.fake, [paid["id"]], lambda *ids: woken.extend(ids)
    )
    assert (outcomes, woken) == ({paid["id"]: "processed"}, [behind.purchase_id])
    assert shop.purchase(first).status == "succeeded"
    assert shop.charge(behind.purchase_id).next == "done" and shop.counts() == (6, 6)


@pytest.mark.parametrize("refund_reaches_stripe", [True, False], ids=["refunded", "refund-later"])
def test_a_failure_paid_meanwhile_still_wakes_the_purchase_waiting_for_its_plan(
    shop: Shop, monkeypatch: pytest.MonkeyPatch, refund_reaches_stripe: bool
) -> None:
    """The bank check failed: the purchase fails and lets go of its plan, then its intent is
    canceled, but the customer paid in between, so that late payment is settled as well
    (refunded: its seats were given meanwhile; when Stripe is away for the refund, the
    sweep makes it). The purchase queued behind it for the plan is woken all the same."""
    first = shop.checkout(4, shop.fake.card(THREE_D_SECURE))
    shop.charge(first)
    cart.add_item(shop.rt.uow(), buyer := shop.another_buyer(), shop.plan, 6, True)
    behind = checkout.checkout(shop.rt.uow(), buyer, "behind", shop.fake.card())
    assert behind.queued
    intent = str(shop.purchase(first).stripe_payment_intent_id)
    shop.fake.authenticate(intent, success=False)
    cancel = shop.fake.cancel_payment

    def paid_just_before(payment_id: str) -> Payment:
        with shop.rt.uow() as uow:  # the 4 seats it was for, given another way meanwhile
            uow.session.execute(
                update(Subscription).where(Subscription.id == shop.plan).values(paid_seats=4)
            )
            uow.commit()
        shop.fake.pay_with(payment_id, shop.fake.card())
        shop.fake.confirm_payment(payment_id)
        return cancel(payment_id)

    monkeypatch.setattr(shop.fake, "cancel_payment", paid_just_before)
    if not refund_reaches_stripe:
        shop.fake.fail("refund_payment")
    outcome = shop.charge(first)
    assert shop.fake.intents[intent].status == "succeeded"
    [alert] = shop.alerts()
    assert (alert.kind, alert.refund_pending) == ("late_payment", not refund_reaches_stripe)
    assert outcome.wake == [behind.purchase_id]
    if not refund_reaches_stripe:  # the sweep makes it
        assert alert.id in sweep.pending_refunds(shop.rt.uow(), stuck_after=-1)
        charging.refund(shop.rt.uow(), shop.fake, alert.id)
        [alert] = shop.alerts()
        assert not alert.refund_pending and alert.refund_id is not None
    assert shop.charge(behind.purchase_id).next == "done"
    assert shop.counts() == (6, 6)


def test_a_paid_purchase_whose_card_bookkeeping_meets_a_database_outage_still_wakes(
    shop: Shop,
) -> None:
    """Paid and applied, its plan freed; the database goes away as the card's push is noted
    as done. The charge still hands on the purchase waiting for the plan, and the card stays
    marked on its way for the sweep."""
    first = shop.checkout(4)
    behind = shop.checkout(6, buyer=shop.another_buyer())

    def database_gone(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("UPDATE purchases SET card_sync_pending"):
            raise OperationalError(statement, {}, Exception("server closed the connection"))

    listen = (shop.rt.engine, "before_cursor_execute", database_gone)
    event.listen(*listen)
    try:
        outcome = shop.charge(first)
    finally:
        event.remove(*listen)
    assert outcome.wake == [behind]
    paid = shop.purchase(first)
    assert (paid.status, paid.card_sync_pending) == ("succeeded", True)
    assert shop.counts() == (4, 4)
    assert shop.charge(behind).next == "done" and shop.counts() == (6, 6)


def test_a_waiting_purchase_with_someone_ahead_is_left_to_be_woken(shop: Shop) -> None:
    """Not sent while its plan is held or an older purchase of it is still to charge: its
    message would only find the plan taken."""
    first = shop.checkout(4, shop.fake.card(THREE_D_SECURE))
    behind = shop.checkout(6, buyer=shop.another_buyer())
    soon = datetime.now(UTC) + sweep.UNWOKEN_AFTER + timedelta(seconds=1)
    assert behind not in sweep.due_purchases(shop.rt.uow(), stuck_after=60, now=soon)
    shop.charge(first)  # waits for 3-D Secure, holding the plan
    assert behind not in sweep.due_purchases(shop.rt.uow(), stuck_after=60, now=soon)


def test_a_purchase_not_stored_behind_another_gets_there_on_its_own_message(
    shop: Shop,
) -> None:
    """One still in the queue (two checkouts that did not see each other) is not woken:
    a wake-up would be a second message that finds nothing to do."""
    first = shop.checkout(4)
    queued = shop.checkout(6, buyer=shop.another_buyer())
    with shop.rt.uow() as uow:  # as if the two checkouts had run at the same time
        uow.session.execute(
            update(Purchase).where(Purchase.id == queued).values(waiting_since=None)
        )
        uow.commit()
    assert shop.charge(first).wake == [], "the purchase behind has not been tried yet"
    assert shop.charge(queued).next == "done"
    assert shop.purchase(queued).status == "succeeded" and shop.counts() == (6, 6)


def test_a_checkout_waits_for_a_charger_finishing_with_its_plan(shop: Shop) -> None:
    """A charger that finishes a purchase locks its plans, then names who waits for them.
    A checkout of the same plan meanwhile must wait for that charger: stored waiting behind
    a purchase already done, after the charger looked, nobody would wake it."""
    first = shop.checkout(4)
    stored: list[checkout.Accepted] = []
    buyer = shop.another_buyer()
    cart.add_item(shop.rt.uow(), buyer, shop.plan, 6, True)
    with shop.rt.engine.connect() as charger:
        charger.execute(
            text("SELECT id FROM subscriptions WHERE id = :plan FOR NO KEY UPDATE"),
            {"plan": shop.plan},
        )
        charger.execute(
            text("UPDATE purchases SET status = 'failed' WHERE id = :id"), {"id": first}
        )
        buying = threading.Thread(
            target=lambda: stored.append(
                checkout.checkout(shop.rt.uow(), buyer, "meanwhile", shop.fake.card())
            )
        )
        buying.start()
        time.sleep(0.5)
        assert not stored, "the checkout did not wait for the charger holding its plan"
        charger.commit()
    buying.join(10)
    assert stored and not stored[0].queued  # the one ahead was done when it looked
    assert shop.purchase(stored[0].purchase_id).waiting_since is None


def test_a_purchase_that_waited_is_woken_when_the_one_ahead_is_done(shop: Shop) -> None:
    first = shop.checkout(4, shop.fake.card(THREE_D_SECURE))
    shop.charge(first)  # waits for 3-D Secure, holding the plan
    second = shop.checkout(6, buyer=shop.another_buyer())
    assert shop.charge(second).next == "wait"
    shop.fake.authenticate(str(shop.purchase(first).stripe_payment_intent_id))
    assert shop.charge(first).wake == [second]
