"""Charging branches the first tier left out: each test is a scenario a user could run."""

from __future__ import annotations

import secrets
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from shared.payments.fake_stripe import DECLINED_ON_CHARGE, THREE_D_SECURE
from shared.payments.gateway import PaymentRequest, PaymentUnavailable
from shared.services import cart, charging, checkout, provisioning, webhooks
from shared.services.access import Actor
from shared.store.db import PURCHASE_LOCKS, lock_key
from shared.store.models import Subscription
from tests.services.conftest import Shop, later


def settle_by_webhook(shop: Shop, intent: str) -> None:
    """What the `payment_intent.*` handler does with Stripe's event."""
    obj = {"id": intent, "metadata": dict(shop.fake.intents[intent].metadata)}
    webhooks.on_payment_intent(shop.rt.uow(), shop.fake, obj, "evt_test")


def counts_of(shop: Shop, plan: int) -> tuple[int, int]:
    with shop.rt.uow() as uow:
        found = uow.session.get_one(Subscription, plan)
        return found.paid_seats, found.active_seats


def buy(shop: Shop, buyer: Actor, lines: dict[int, int], card: str) -> int:
    """One checkout of several plans (plan id -> target seats)."""
    for plan, target in lines.items():
        cart.add_item(shop.rt.uow(), buyer, plan, target, True)
    purchase, _, _ = checkout.checkout(shop.rt.uow(), buyer, secrets.token_hex(8), card)
    return purchase


def monthly_plan(shop: Shop) -> int:
    return provisioning.create_subscription(
        shop.rt.uow(), shop.org, "XLGL", 1000, "month", 1, date.today()
    )


def failed_3ds_purchase(shop: Shop, purchase: int) -> str:
    """3-D Secure fails and the cancel of its intent does not go through."""
    shop.charge(purchase)
    intent = str(shop.purchase(purchase).stripe_payment_intent_id)
    shop.fake.authenticate(intent, success=False)
    shop.fake.fail("cancel_payment")
    shop.charge(purchase)
    assert shop.purchase(purchase).status == "failed"
    return intent


def test_a_later_checkout_waits_for_an_earlier_one_of_the_same_plan(shop: Shop) -> None:
    first = shop.checkout(4)
    second = shop.checkout(6, buyer=shop.another_buyer())
    outcome = shop.charge(second)
    assert (outcome.next, outcome.wake) == ("wait", []), "the first comes on its own message"
    assert shop.purchase(second).status == "pending"
    assert "create_payment" not in shop.fake.calls
    assert shop.charge(first).wake == [second], "and wakes the one that waited when done"


def test_a_plan_due_for_renewal_at_charge_time_fails_the_purchase_uncharged(shop: Shop) -> None:
    purchase = shop.checkout(5)
    shop.charge(purchase, now=later(400 * 86400))
    failed = shop.purchase(purchase)
    assert (failed.status, failed.failure_code) == ("failed", "renewal_pending")
    assert shop.counts() == (3, 3) and shop.fake.calls == []


def test_a_declined_stranger_payment_naming_our_purchase_changes_nothing(shop: Shop) -> None:
    purchase = shop.checkout(4)
    stranger = shop.fake.create_customer(999_998, "stranger")
    attempt = shop.fake.create_payment(
        PaymentRequest(
            reference="elsewhere-1",
            amount=1,
            currency="usd",
            customer_id=stranger,
            payment_method_id=shop.fake.card(DECLINED_ON_CHARGE),
            metadata={"purchase_id": str(purchase)},
        )
    )
    shop.fake.confirm_payment(attempt.id)
    settle_by_webhook(shop, attempt.id)
    assert shop.purchase(purchase).status == "pending"
    assert shop.alerts() == [] and shop.counts() == (3, 3)


def test_a_customer_paying_while_the_failure_is_recorded_gets_the_seats(shop: Shop) -> None:
    """The cancel of a failed intent answers `succeeded`: that money is applied, not lost."""
    purchase = shop.checkout(5, shop.fake.card(THREE_D_SECURE))
    shop.charge(purchase)
    intent = str(shop.purchase(purchase).stripe_payment_intent_id)
    shop.fake.authenticate(intent, success=False)

    def customer_pays_meanwhile(step: str) -> None:
        if step == "payment_confirmed":
            shop.fake.pay_with(intent, shop.fake.card())

    shop.charge(purchase, checkpoint=customer_pays_meanwhile)
    done = shop.purchase(purchase)
    assert (done.status, done.failure_code) == ("succeeded", None)
    assert shop.counts() == (5, 5) and shop.kept_money() == done.amount_due
    assert shop.alerts() == []


def test_two_refunders_of_one_alert_refund_once(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's refund and the sweep's retry of it run at the same time."""
    purchase = shop.checkout(5, shop.fake.card(THREE_D_SECURE))
    intent = failed_3ds_purchase(shop, purchase)
    other = shop.checkout(5, buyer=shop.another_buyer())
    shop.charge(other)
    shop.fake.pay_with(intent, shop.fake.card())
    shop.fake.fail("refund_payment")
    with pytest.raises(PaymentUnavailable):
        settle_by_webhook(shop, intent)
    [pending] = shop.alerts()
    original = shop.fake.refund_payment

    def other_refunder_finishes_first(payment_id: str) -> str:
        monkeypatch.setattr(shop.fake, "refund_payment", original)
        charging.refund(shop.rt.uow(), shop.fake, pending.id)
        return original(payment_id)

    monkeypatch.setattr(shop.fake, "refund_payment", other_refunder_finishes_first)
    charging.refund(shop.rt.uow(), shop.fake, pending.id)
    [alert] = shop.alerts()
    assert not alert.refund_pending and alert.refund_id is not None
    assert "refused" not in alert.message
    assert len(shop.fake.refunds) == 1 and shop.kept_money() == shop.purchase(other).amount_due


def test_paying_with_the_saved_card_neither_attaches_nor_pushes_it_again(shop: Shop) -> None:
    card = shop.fake.card()
    shop.charge(shop.checkout(4, card))
    again = shop.checkout(6, card)
    assert shop.charge(again).next == "done"
    assert shop.purchase(again).status == "succeeded" and shop.counts() == (6, 6)
    assert shop.fake.calls.count("attach_card") == 1
    assert shop.fake.calls.count("set_default_card") == 1
    assert shop.organization().payment_method_id == card


def test_a_second_charger_of_the_same_purchase_steps_aside(shop: Shop) -> None:
    purchase = shop.checkout(4)
    seen = []

    def another_worker_takes_it(step: str) -> None:
        if step == "payment_created":
            seen.append(shop.charge(purchase).next)

    shop.charge(purchase, checkpoint=another_worker_takes_it)
    assert seen == ["busy"]
    assert shop.purchase(purchase).status == "succeeded" and len(shop.fake.intents) == 1


def test_a_charger_whose_first_read_fails_after_trying_the_lock_leaves_it_free(
    shop: Shop,
) -> None:
    """The lock is tried inside the charger's first read: when that read fails after the
    try (a lost connection, a deadlock), the lock must not stay with the pooled connection,
    or every later charger of the purchase would step aside for nobody."""
    purchase = shop.checkout(4)

    def broken(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "pg_try_advisory_lock" in statement:
            raise RuntimeError("the connection broke after the lock was tried")

    event.listen(shop.rt.engine, "after_cursor_execute", broken)
    try:
        with pytest.raises(RuntimeError):
            shop.charge(purchase)
    finally:
        event.remove(shop.rt.engine, "after_cursor_execute", broken)
    assert shop.lock_is_free(":key", key=lock_key(PURCHASE_LOCKS, purchase))
    assert shop.charge(purchase).next == "done"
    assert shop.purchase(purchase).status == "succeeded"


def test_seats_whose_prorated_price_rounds_to_zero_are_given_without_a_charge(
    shop: Shop,
) -> None:
    cheap = provisioning.create_subscription(
        shop.rt.uow(), shop.org, "XLGL", 1, "year", 3, date.today() - timedelta(days=300)
    )
    card = shop.fake.card()
    purchase = buy(shop, shop.buyer, {cheap: 5}, card)
    assert shop.charge(purchase).next == "done"
    done = shop.purchase(purchase)
    assert (done.status, done.amount_due) == ("succeeded", 0)
    assert counts_of(shop, cheap) == (5, 5)
    assert shop.fake.calls == [] and shop.organization().payment_method_id is None


def test_a_line_someone_bought_meanwhile_is_skipped_and_only_the_rest_charged(
    shop: Shop,
) -> None:
    monthly = monthly_plan(shop)
    first = shop.checkout(5, buyer=shop.another_buyer())
    both = buy(shop, shop.buyer, {shop.plan: 5, monthly: 2}, shop.fake.card())
    shop.charge(first)
    shop.charge(both)
    done = shop.purchase(both)
    by_plan = {item.subscription_id: item for item in done.items}
    assert done.status == "succeeded" and by_plan[shop.plan].seats_to_buy == 0
    assert done.amount_due == by_plan[monthly].amount_due > 0
    assert shop.counts() == (5, 5) and counts_of(shop, monthly) == (2, 2)
    assert shop.kept_money() == shop.purchase(first).amount_due + done.amount_due


def test_a_late_payment_for_a_line_bought_meanwhile_gives_the_other_line(shop: Shop) -> None:
    monthly = monthly_plan(shop)
    first = shop.checkout(5, buyer=shop.another_buyer())
    both = buy(shop, shop.buyer, {shop.plan: 5, monthly: 2}, shop.fake.card(THREE_D_SECURE))
    shop.charge(first)
    intent = failed_3ds_purchase(shop, both)
    shop.fake.pay_with(intent, shop.fake.card())
    settle_by_webhook(shop, intent)
    assert shop.purchase(both).status == "succeeded"
    assert shop.counts() == (5, 5) and counts_of(shop, monthly) == (2, 2)
    assert shop.alerts() == []


def test_a_refused_confirm_fails_the_purchase_even_when_its_cancel_cannot_reach_stripe(
    shop: Shop,
) -> None:
    card = shop.fake.card()
    first = shop.checkout(4, card)
    second = shop.checkout(6, buyer=shop.another_buyer())
    shop.fake.fail("confirm_payment")
    with pytest.raises(PaymentUnavailable):
        shop.charge(first)
    assert shop.charge(second).next == "wait"
    shop.fake.detach(card)
    shop.fake.fail("cancel_payment")
    outcome = shop.charge(first)
    failed = shop.purchase(first)
    assert (failed.status, failed.failure_code) == ("failed", "payment_method_unexpected_state")
    assert outcome.wake == [second] and shop.kept_money() == 0


def test_a_paid_purchase_whose_card_bookkeeping_keeps_failing_is_never_parked(
    shop: Shop,
) -> None:
    purchase = shop.checkout(4)
    shop.fake.fail("set_default_card")
    shop.charge(purchase)
    assert charging.park(shop.rt.uow(), shop.rt.engine, purchase, "gave up") == []
    paid = shop.purchase(purchase)
    assert (paid.status, paid.attention, paid.card_sync_pending) == ("succeeded", None, True)
