"""Checkout and the charger touch the same rows in opposite orders; they must never deadlock.

Checkout locks the buyer, then inserts lines that reference the plan. Applying a paid
purchase locks the plan, then inserts an audit row that references the buyer. With
plain FOR UPDATE locks these two waited on each other (found by bench/purchases.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import date, timedelta

from sqlalchemy import func, select

from shared.bootstrap import Runtime
from shared.payments.fake_stripe import FakeStripe
from shared.payments.gateway import Payment
from shared.services import cart, charging, checkout, provisioning
from shared.services.access import Actor
from shared.store.models import Purchase, SeatChange


def test_checkout_and_settlement_of_the_same_buyer_never_deadlock(runtime: Runtime) -> None:
    org = provisioning.create_organization(runtime.uow(), "Locks", "cad", "America/Toronto")
    user, _ = provisioning.create_user(runtime.uow(), org, "locks@example.com", "buyer")
    plan = provisioning.create_subscription(
        runtime.uow(), org, "XLGL", 1000, "year", 1, date.today() - timedelta(days=1)
    )
    buyer = Actor(user, org, "buyer")
    errors: list[BaseException] = []
    settled: list[int] = []

    def run(action: Callable[[], None]) -> None:
        try:
            action()
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    for round_ in range(25):
        target = round_ + 2
        cart.add_item(runtime.uow(), buyer, plan, target, True)
        paid, _, _ = checkout.checkout(runtime.uow(), buyer, f"paid-{round_}", "pm_card")
        with runtime.uow() as uow:
            purchase = uow.session.get_one(Purchase, paid)
            purchase.status = "processing"
            purchase.stripe_payment_intent_id = f"pi_locks_{round_}"
            amount = purchase.amount_due
            uow.commit()
        cart.add_item(runtime.uow(), buyer, plan, target + 1, True)
        barrier = threading.Barrier(2)
        payment = Payment(f"pi_locks_{round_}", "succeeded", amount, "cad")

        def settle(
            paid: int = paid, payment: Payment = payment, barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            charging.settle(runtime.uow(), FakeStripe(), paid, payment)
            settled.append(paid)

        def check_out(round_: int = round_, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            checkout.checkout(runtime.uow(), buyer, f"next-{round_}", "pm_card")

        threads = [threading.Thread(target=run, args=(f,)) for f in (settle, check_out)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert errors == [], errors
        with runtime.uow() as uow:
            uow.session.execute(
                Purchase.__table__.update()
                .where(Purchase.user_id == user, Purchase.status == "pending")
                .values(status="failed", failure_code="test_cleanup")
            )
            uow.commit()
    with runtime.uow() as uow:
        applied = uow.session.scalar(
            select(func.count()).select_from(SeatChange).where(SeatChange.purchase_id.in_(settled))
        )
    assert applied == 25
