"""What the sweep picks up, found untested by mutation testing (bench/mutation)."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import update

from shared.payments.fake_stripe import THREE_D_SECURE
from shared.services import charging, sweep
from shared.services.alerts import raise_alert
from shared.store.models import OperatorAlert, Purchase
from tests.services.conftest import Shop
from tests.services.test_mutants_webhooks import local_time_not_utc  # noqa: F401


def due(shop: Shop, purchase: int, stuck_after: float, now: datetime | None = None) -> bool:
    return purchase in sweep.due_purchases(shop.rt.uow(), stuck_after=stuck_after, now=now)


def test_a_purchase_is_due_only_once_left_alone_longer_than_the_limit(shop: Shop) -> None:
    purchase = shop.checkout(4)
    touched = shop.purchase(purchase).updated_at
    assert not due(shop, purchase, 60, now=touched)
    assert not due(shop, purchase, 60, now=touched + timedelta(seconds=60))
    assert due(shop, purchase, 60, now=touched + timedelta(seconds=61))


def test_a_just_touched_purchase_is_not_due_on_a_machine_ahead_of_utc(
    shop: Shop,
    local_time_not_utc: None,  # noqa: F811
) -> None:
    purchase = shop.checkout(4)
    assert not due(shop, purchase, 60)
    assert due(shop, purchase, -60)


def test_a_parked_purchase_is_left_to_an_operator(shop: Shop) -> None:
    purchase = shop.checkout(4)
    charging.park(shop.rt.uow(), shop.rt.engine, purchase, "Stripe unreachable")
    assert shop.purchase(purchase).status == "pending"
    assert not due(shop, purchase, -60)


def test_a_payment_waiting_for_the_bank_is_polled_at_every_sweep(shop: Shop) -> None:
    purchase = shop.checkout(4, shop.fake.card(THREE_D_SECURE))
    shop.charge(purchase)
    assert shop.purchase(purchase).status == "requires_action"
    assert due(shop, purchase, 3600)


def test_a_card_still_to_save_at_stripe_waits_for_the_limit_too(shop: Shop) -> None:
    purchase = shop.checkout(5, shop.fake.card())
    shop.fake.fail("set_default_card")
    shop.charge(purchase)
    assert shop.purchase(purchase).card_sync_pending
    assert not due(shop, purchase, 3600)
    assert due(shop, purchase, -60)


def test_purchases_left_alone_equally_long_are_taken_in_checkout_order(shop: Shop) -> None:
    first, second = shop.checkout(4), shop.checkout(5, buyer=shop.another_buyer())
    touched = shop.purchase(second).updated_at
    with shop.rt.uow() as uow:  # the later checkout first, so the table holds them reversed
        for purchase in (second, first):
            uow.session.execute(
                update(Purchase).where(Purchase.id == purchase).values(updated_at=touched)
            )
        uow.commit()
    found = sweep.due_purchases(shop.rt.uow(), 60, now=touched + timedelta(seconds=120))
    assert [p for p in found if p in (first, second)] == [first, second]


def settled(shop: Shop, alert: OperatorAlert) -> None:
    """Other tests count the refunds pending in this database: leave none behind."""
    with shop.rt.uow() as uow:
        uow.session.execute(
            update(OperatorAlert).where(OperatorAlert.id == alert.id).values(refund_pending=False)
        )
        uow.commit()


def refund_decided(shop: Shop) -> OperatorAlert:
    with shop.rt.uow() as uow:
        alert = raise_alert(
            uow.session,
            kind="late_payment",
            message="a payment to refund",
            organization_id=shop.org,
            stripe_object_id=f"pi_{secrets.token_hex(6)}",
            dedupe_key=f"test:{secrets.token_hex(6)}",
            refund_pending=True,
        )
        assert alert is not None
        uow.commit()
        uow.session.expunge(alert)
        return alert


def test_a_refund_is_retried_only_once_its_decision_is_older_than_the_limit(
    shop: Shop,
) -> None:
    alert = refund_decided(shop)

    def pending(now: datetime | None = None) -> bool:
        return alert.id in sweep.pending_refunds(shop.rt.uow(), 60, now=now)

    assert not pending(alert.created_at)
    assert not pending(alert.created_at + timedelta(seconds=60))
    assert pending(alert.created_at + timedelta(seconds=61))
    settled(shop, alert)


def test_a_refund_just_decided_is_not_retried_on_a_machine_ahead_of_utc(
    shop: Shop,
    local_time_not_utc: None,  # noqa: F811
) -> None:
    alert = refund_decided(shop)
    assert alert.id not in sweep.pending_refunds(shop.rt.uow(), 60)
    assert alert.id in sweep.pending_refunds(shop.rt.uow(), -60)
    settled(shop, alert)
