"""Charging behaviour that mutation testing (bench/mutation) found untested.

Each test is a scenario a buyer or an operator could see: the purchase's status and
amounts, the seats, the money kept at the stand-in, and the operator alerts word for
word (an operator acts on what an alert says, so its text, amount and purchase are
part of the behaviour).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

import pytest
from sqlalchemy import update

from shared.domain.cards import Card
from shared.domain.money import plain_amount
from shared.payments.fake_stripe import DECLINED_ON_ATTACH, THREE_D_SECURE, FakeStripe
from shared.payments.gateway import PaymentRefused, friendly_message
from shared.services import charging, provisioning, webhooks
from shared.store.models import Subscription
from tests.services.conftest import Shop


class Crash(Exception):
    """The worker process dies here."""


@dataclass
class RefusingStripe(FakeStripe):
    """Refuses the next card to attach, after `meanwhile` ran (what another worker or a
    webhook did while this request was on its way)."""

    meanwhile: Callable[[], None] | None = None

    def attach_card(self, payment_method_id: str, customer_id: str) -> Card:
        if self.meanwhile is None:
            return super().attach_card(payment_method_id, customer_id)
        self.meanwhile()
        self.meanwhile = None
        raise PaymentRefused("card_declined", friendly_message("card_declined"))


def settle_by_webhook(shop: Shop, intent: str) -> None:
    """What the `payment_intent.*` handler does with Stripe's event."""
    obj = {"id": intent, "metadata": dict(shop.fake.intents[intent].metadata)}
    webhooks.on_payment_intent(shop.rt.uow(), shop.fake, obj, "evt_test")


def customer_of(shop: Shop) -> str:
    customer = shop.organization().stripe_customer_id
    assert customer is not None
    return customer


def test_a_second_payment_alert_says_what_was_paid_by_what_and_that_it_is_refunded(
    shop: Shop,
) -> None:
    purchase = shop.checkout(4)
    shop.charge(purchase)
    paid = shop.purchase(purchase)
    second = shop.fake.create_foreign_payment(
        paid.amount_due, "cad", customer_of(shop), {"purchase_id": str(purchase)}
    )
    settle_by_webhook(shop, second.id)
    [alert] = shop.alerts()
    assert (alert.kind, alert.organization_id, alert.purchase_id) == (
        "duplicate_payment",
        shop.org,
        purchase,
    )
    assert (alert.stripe_object_id, alert.amount) == (second.id, paid.amount_due)
    assert alert.message == (
        f"{second.id} took {plain_amount(paid.amount_due, 'cad')} for purchase {purchase} "
        f"(succeeded, paid by {paid.stripe_payment_intent_id}): a second payment is not owed, "
        "so it is refunded automatically"
    )
    assert alert.refund_id is not None and not alert.refund_pending
    assert shop.kept_money() == paid.amount_due
    calls = len(shop.fake.calls)
    charging.refund(shop.rt.uow(), shop.fake, alert.id)  # the sweep, late: nothing to do
    assert len(shop.fake.calls) == calls


def test_our_customer_paying_a_purchase_not_yet_charged_is_refunded_as_not_owed(
    shop: Shop,
) -> None:
    """The purchase has no payment of its own yet: the alert says so."""
    first = shop.checkout(4)
    shop.charge(first)
    kept = shop.kept_money()
    waiting = shop.checkout(5)
    early = shop.fake.create_foreign_payment(
        999, "cad", customer_of(shop), {"purchase_id": str(waiting)}
    )
    settle_by_webhook(shop, early.id)
    [alert] = shop.alerts()
    assert (alert.kind, alert.purchase_id, alert.amount) == ("duplicate_payment", waiting, 999)
    assert alert.message == (
        f"{early.id} took {plain_amount(999, 'cad')} for purchase {waiting} "
        "(pending, paid by no payment): a second payment is not owed, "
        "so it is refunded automatically"
    )
    assert shop.kept_money() == kept
    assert shop.purchase(waiting).status == "pending"


def test_a_foreign_payment_alert_names_the_purchase_and_the_amount_and_asks_a_person(
    shop: Shop,
) -> None:
    purchase = shop.checkout(4)
    stranger = shop.fake.create_customer(999_997, "stranger")
    foreign = shop.fake.create_foreign_payment(
        1234, "usd", stranger, {"purchase_id": str(purchase)}
    )
    settle_by_webhook(shop, foreign.id)
    [alert] = shop.alerts()
    assert (alert.kind, alert.organization_id, alert.purchase_id, alert.amount) == (
        "foreign_payment",
        shop.org,
        purchase,
        1234,
    )
    assert alert.message == (
        f"{foreign.id} took {plain_amount(1234, 'usd')} and names purchase {purchase}, but its "
        "amount, currency or customer do not match that purchase: nothing was applied. "
        "Find out whose money it is and refund it in Stripe if it is not owed"
    )
    assert not alert.refund_pending and alert.refund_id is None
    assert len(shop.fake.succeeded(stranger)) == 1, "someone else's money is not refunded"


def test_seats_whose_price_rounds_to_zero_are_given_free_and_wake_the_next_buyer(
    shop: Shop,
) -> None:
    """A 0.01 CAD seat for a few days of the year costs nothing: no payment, seats given."""
    plan = provisioning.create_subscription(
        shop.rt.uow(),
        shop.org,
        "XLGL",
        1,
        "year",
        1,
        date.today() - timedelta(days=300),
    )
    shop.plan = plan
    free = shop.checkout(2)
    behind = shop.checkout(3, buyer=shop.another_buyer())
    assert shop.charge(behind).next == "wait"  # in line: woken when the first is done
    outcome = shop.charge(free)
    assert (outcome.next, outcome.wake) == ("done", [behind])
    done = shop.purchase(free)
    assert (done.status, done.amount_due, done.stripe_payment_intent_id) == ("succeeded", 0, None)
    assert shop.counts() == (2, 2)
    assert shop.fake.calls == [] and shop.alerts() == []


def free_plan(shop: Shop) -> int:
    """0.01 CAD a seat a year, 65 days left: any seat bought now rounds to nothing."""
    return provisioning.create_subscription(
        shop.rt.uow(), shop.org, "XLGL", 1, "year", 1, date.today() - timedelta(days=300)
    )


def test_a_free_line_that_can_no_longer_be_applied_is_an_alert_without_a_payment(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop.plan = free_plan(shop)
    purchase = shop.checkout(2)

    def crash(uow: object, purchase_id: int) -> None:
        raise Crash

    monkeypatch.setattr(charging, "_settle_free", crash)
    with pytest.raises(Crash):  # the worker dies right after claiming the plan
        shop.charge(purchase)
    monkeypatch.undo()
    with shop.rt.uow() as uow:  # an operator gives the seats meanwhile
        uow.session.execute(
            update(Subscription).where(Subscription.id == shop.plan).values(paid_seats=2)
        )
        uow.commit()
    shop.charge(purchase)
    assert shop.purchase(purchase).status == "succeeded"
    [alert] = shop.alerts()
    assert (alert.kind, alert.purchase_id, alert.amount, alert.stripe_object_id) == (
        "seats_not_applied",
        purchase,
        0,
        None,
    )


def test_a_refused_card_tells_the_buyer_why_and_the_charge_is_over(shop: Shop) -> None:
    purchase = shop.checkout(5, shop.fake.card(DECLINED_ON_ATTACH))
    outcome = shop.charge(purchase)
    assert (outcome.next, outcome.wake) == ("done", [])
    failed = shop.purchase(purchase)
    assert (failed.status, failed.failure_code, failed.failure_message) == (
        "failed",
        "card_declined",
        friendly_message("card_declined"),
    )


def test_a_refusal_after_the_webhook_settled_the_purchase_leaves_it_paid(shop: Shop) -> None:
    """A charger died before recording its intent; the customer paid it and the webhook
    settled the purchase while the retrying charger's card was being refused."""
    racing = RefusingStripe()
    shop.fake = racing
    purchase = shop.checkout(5)

    def die(step: str) -> None:
        if step == "payment_unrecorded":
            raise Crash

    with pytest.raises(Crash):
        shop.charge(purchase, checkpoint=die)
    [intent] = racing.intents

    def customer_pays_and_the_webhook_settles() -> None:
        racing.pay_with(intent, racing.card())
        settle_by_webhook(shop, intent)

    racing.meanwhile = customer_pays_and_the_webhook_settles
    outcome = shop.charge(purchase)
    assert (outcome.next, outcome.wake) == ("done", [])
    done = shop.purchase(purchase)
    assert (done.status, done.failure_code, done.stripe_payment_intent_id) == (
        "succeeded",
        None,
        intent,
    )
    assert shop.counts() == (5, 5) and shop.kept_money() == done.amount_due


def test_a_long_parking_reason_is_kept_to_500_characters(shop: Shop) -> None:
    purchase = shop.checkout(4)
    charging.park(shop.rt.uow(), shop.rt.engine, purchase, "x" * 600)
    assert shop.purchase(purchase).attention == "x" * 500


def test_money_arriving_late_for_one_seat_bought_meanwhile_is_refunded(shop: Shop) -> None:
    purchase = shop.checkout(4, shop.fake.card(THREE_D_SECURE))
    shop.charge(purchase)
    intent = str(shop.purchase(purchase).stripe_payment_intent_id)
    shop.fake.authenticate(intent, success=False)
    shop.fake.fail("cancel_payment")
    shop.charge(purchase)
    other = shop.checkout(4, buyer=shop.another_buyer())
    shop.charge(other)
    shop.fake.pay_with(intent, shop.fake.card())
    settle_by_webhook(shop, intent)
    assert shop.purchase(purchase).status == "failed" and shop.counts() == (4, 4)
    [alert] = shop.alerts()
    assert (alert.kind, alert.purchase_id, alert.refund_id is not None) == (
        "late_payment",
        purchase,
        True,
    )
    assert shop.kept_money() == shop.purchase(other).amount_due
