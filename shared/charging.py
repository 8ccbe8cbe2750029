"""Charging a purchase: price again, claim the plans, pay once, apply once.

Every step is guarded so that running it twice, concurrently or after a crash
ends the same way: the PaymentIntent id is recorded before it is confirmed,
Stripe calls carry keys made from our ids, and seat counts change only in the
transaction that marks the purchase succeeded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.orm import Session

from shared.db import UnitOfWork
from shared.domain import TERMINAL, PurchaseStatus, SeatCounts
from shared.errors import Conflict
from shared.models import Organization, Purchase, PurchaseItem, Subscription
from shared.payments import Card, Payment, PaymentGateway, PaymentRefused, friendly_message
from shared.seats import price, record_change

Checkpoint = Callable[[str], None]


def no_checkpoint(name: str) -> None:
    """Production runs straight through; tests pass a checkpoint that stops the process."""


class Next(StrEnum):
    DONE = "done"
    WAIT = "wait"
    POLL = "poll"
    BUSY = "busy"


@dataclass
class Outcome:
    next: Next
    wake: list[int] = field(default_factory=list)


@contextmanager
def purchase_lock(engine: Engine, purchase_id: int) -> Iterator[bool]:
    """One charger per purchase at a time; a crashed holder's lock dies with its connection."""
    with engine.connect() as connection:
        got = bool(
            connection.scalar(text("SELECT pg_try_advisory_lock(7301, :id)"), {"id": purchase_id})
        )
        try:
            yield got
        finally:
            if got:
                connection.execute(
                    text("SELECT pg_advisory_unlock(7301, :id)"), {"id": purchase_id}
                )
            connection.commit()


def _locked_purchase(session: Session, purchase_id: int) -> Purchase:
    return session.scalars(
        select(Purchase).where(Purchase.id == purchase_id).with_for_update(key_share=True)
    ).one()


def _locked_plans(session: Session, purchase: Purchase) -> list[Subscription]:
    ids = sorted(item.subscription_id for item in purchase.items)
    return list(
        session.scalars(
            select(Subscription)
            .where(Subscription.id.in_(ids))
            .order_by(Subscription.id)
            .with_for_update(key_share=True)
        )
    )


def _next_in_line(session: Session, plan_ids: list[int], before: int | None = None) -> list[int]:
    """The oldest purchase still waiting for each plan: plans serve buyers in checkout order."""
    query = (
        select(func.min(Purchase.id))
        .join(PurchaseItem, PurchaseItem.purchase_id == Purchase.id)
        .where(
            PurchaseItem.subscription_id.in_(plan_ids),
            Purchase.status == PurchaseStatus.PENDING,
            Purchase.attention.is_(None),
        )
        .group_by(PurchaseItem.subscription_id)
    )
    if before is not None:
        query = query.where(Purchase.id < before)
    return sorted(set(session.scalars(query)))


def _release(session: Session, purchase: Purchase) -> list[int]:
    """Free the plans this purchase held and name the purchases next in line for them."""
    plan_ids = [item.subscription_id for item in purchase.items]
    session.execute(
        update(Subscription)
        .where(Subscription.id.in_(plan_ids), Subscription.charging_purchase_id == purchase.id)
        .values(charging_purchase_id=None)
    )
    return [waiting for waiting in _next_in_line(session, plan_ids) if waiting != purchase.id]


def _fail(session: Session, purchase: Purchase, code: str, message: str) -> list[int]:
    purchase.status = PurchaseStatus.FAILED
    purchase.failure_code = code
    purchase.failure_message = message
    purchase.client_secret = None
    purchase.completed_at = datetime.now(UTC)
    return _release(session, purchase)


def _claim_and_price(session: Session, purchase: Purchase, now: datetime | None) -> Outcome | None:
    """Take the plans for this purchase and price it against them as they are now.

    Purchases of one plan are charged one after another, so the second buyer
    pays only for seats the first did not already buy.
    """
    plans = {plan.id: plan for plan in _locked_plans(session, purchase)}
    for plan in plans.values():
        holder = plan.charging_purchase_id
        if holder not in (None, purchase.id):
            held = session.get(Purchase, holder)
            if held is not None and held.status not in TERMINAL:
                return Outcome(Next.WAIT)
    ahead = _next_in_line(session, list(plans), before=purchase.id)
    if ahead:
        return Outcome(Next.WAIT, ahead)
    total = 0
    buying = 0
    for item in purchase.items:
        try:
            offer = price(plans[item.subscription_id], item.active_seats, now)
        except Conflict as refusal:
            return Outcome(Next.DONE, _fail(session, purchase, refusal.code, refusal.message))
        item.seats_to_buy = offer.seats_to_buy
        item.subtotal = offer.subtotal
        item.proration_coupon = offer.proration_coupon
        item.amount_due = offer.amount_due
        total += offer.amount_due
        buying += offer.seats_to_buy
    if buying == 0:
        message = "These seats were already bought, so nothing was charged."
        return Outcome(Next.DONE, _fail(session, purchase, "already_paid", message))
    if total > purchase.confirmed_amount:
        message = (
            "The price changed since you confirmed it, so nothing was charged. "
            "Add the seats to your cart again to see the new price."
        )
        return Outcome(Next.DONE, _fail(session, purchase, "quote_expired", message))
    for plan in plans.values():
        plan.charging_purchase_id = purchase.id
    purchase.amount_due = total
    purchase.status = PurchaseStatus.PROCESSING
    return None


def settle(
    uow: UnitOfWork, purchase_id: int, payment: Payment, card: Card | None = None
) -> Outcome:
    """Bring the purchase in line with what the processor says happened to its payment.

    Only forward moves: a late failure never undoes a success, and a success
    is applied once, whoever reports it first (charger, webhook or sweep). A
    payment made for this purchase that arrives before the charger recorded
    it is adopted, since only a recorded payment is ever confirmed by us.
    """
    with uow:
        session = uow.session
        purchase = _locked_purchase(session, purchase_id)
        if purchase.status in TERMINAL:
            return Outcome(Next.DONE)
        if purchase.stripe_payment_intent_id is None and payment.purchase_id == purchase.id:
            purchase.stripe_payment_intent_id = payment.id
        if purchase.stripe_payment_intent_id != payment.id:
            return Outcome(Next.DONE)
        if payment.status == "succeeded":
            wake = _apply_success(session, purchase, payment, card)
            uow.commit()
            return Outcome(Next.DONE, wake)
        if payment.status in ("requires_payment_method", "canceled"):
            code = payment.failure_code or (
                "payment_canceled" if payment.status == "canceled" else "payment_failed"
            )
            wake = _fail(session, purchase, code, payment.failure_message or friendly_message(code))
            uow.commit()
            return Outcome(Next.DONE, wake)
        if payment.status == "requires_action":
            purchase.status = PurchaseStatus.REQUIRES_ACTION
            purchase.client_secret = payment.client_secret
            uow.commit()
            return Outcome(Next.POLL)
        if payment.status == "processing":
            return Outcome(Next.POLL)
        return Outcome(Next.BUSY)


def _apply_success(
    session: Session, purchase: Purchase, payment: Payment, card: Card | None
) -> list[int]:
    plans = {plan.id: plan for plan in _locked_plans(session, purchase)}
    for item in purchase.items:
        plan = plans[item.subscription_id]
        if item.seats_to_buy <= 0 or item.active_seats <= plan.paid_seats:
            continue
        counts = SeatCounts(plan.paid_seats, plan.active_seats).after_purchase(item.active_seats)
        record_change(
            session,
            plan,
            counts,
            f"purchase {purchase.id} paid",
            actor_user_id=purchase.user_id,
            purchase_id=purchase.id,
        )
    if purchase.new_card:
        organization = session.get_one(Organization, purchase.organization_id)
        organization.payment_method_id = purchase.payment_method_id
        organization.payment_method_brand = card.brand if card else None
        organization.payment_method_last4 = card.last4 if card else None
    purchase.status = PurchaseStatus.SUCCEEDED
    purchase.amount_due = payment.amount
    purchase.client_secret = None
    purchase.completed_at = datetime.now(UTC)
    return _release(session, purchase)


def _customer(uow: UnitOfWork, gateway: PaymentGateway, organization_id: int) -> str:
    """One Stripe customer per organization, even when two chargers race to make it."""
    with uow:
        organization = uow.session.get_one(Organization, organization_id)
        if organization.stripe_customer_id:
            return organization.stripe_customer_id
        name = organization.name
    created = gateway.create_customer(organization_id, name)
    with uow:
        won = uow.session.scalar(
            update(Organization)
            .where(Organization.id == organization_id, Organization.stripe_customer_id.is_(None))
            .values(stripe_customer_id=created)
            .returning(Organization.id)
        )
        uow.commit()
        if won:
            return created
        winner = uow.session.get_one(Organization, organization_id, populate_existing=True)
    gateway.delete_customer(created)
    assert winner.stripe_customer_id is not None
    return winner.stripe_customer_id


def charge(
    uow: UnitOfWork,
    engine: Engine,
    gateway: PaymentGateway,
    purchase_id: int,
    *,
    now: datetime | None = None,
    checkpoint: Checkpoint = no_checkpoint,
    action_ttl: float | None = None,
) -> Outcome:
    """Take one purchase as far as it can go now. Safe to call any number of times.

    A payment still waiting for 3-D Secure `action_ttl` seconds after checkout
    is canceled, which frees the plan for other buyers.
    """
    with purchase_lock(engine, purchase_id) as mine:
        if not mine:
            return Outcome(Next.BUSY)
        with uow:
            purchase = _locked_purchase(uow.session, purchase_id)
            if purchase.status in TERMINAL or purchase.attention:
                return Outcome(Next.DONE)
            if purchase.stripe_payment_intent_id is None:
                stopped = _claim_and_price(uow.session, purchase, now)
                if stopped is not None:
                    uow.commit()
                    return stopped
            purchase.attempts += 1
            uow.commit()
            intent_id = purchase.stripe_payment_intent_id
            organization_id = purchase.organization_id
            amount, currency = purchase.amount_due, purchase.currency
            method, new_card = purchase.payment_method_id, purchase.new_card
            age = ((now or datetime.now(UTC)) - purchase.created_at).total_seconds()

        if intent_id is None and amount == 0:
            return _settle_free(uow, purchase_id)
        card: Card | None = None
        payment: Payment | None = None
        try:
            customer = _customer(uow, gateway, organization_id)
            if intent_id is None:
                card = gateway.attach_card(method, customer) if new_card else None
                created = gateway.create_payment(
                    purchase_id=purchase_id,
                    amount=amount,
                    currency=currency,
                    customer_id=customer,
                    payment_method_id=method,
                )
                intent_id = _record_intent(uow, purchase_id, created)
                payment = created if created.id == intent_id else None
                checkpoint("payment_created")
            if payment is None:
                payment = gateway.get_payment(intent_id)
            if payment.status == "requires_confirmation":
                payment = gateway.confirm_payment(intent_id, purchase_id)
            if payment.status == "requires_action" and action_ttl is not None and age > action_ttl:
                payment = gateway.cancel_payment(intent_id)
            checkpoint("payment_confirmed")
            if payment.status == "succeeded" and new_card:
                card = card or gateway.get_card(method)
                gateway.set_default_card(customer, method)
        except PaymentRefused as refusal:
            return _refused(uow, purchase_id, refusal)
        return settle(uow, purchase_id, payment, card)


def _record_intent(uow: UnitOfWork, purchase_id: int, created: Payment) -> str:
    """Write the intent id before confirming; if another run got there first, use theirs."""
    with uow:
        purchase = _locked_purchase(uow.session, purchase_id)
        if purchase.stripe_payment_intent_id is None:
            purchase.stripe_payment_intent_id = created.id
            uow.commit()
            return created.id
        return purchase.stripe_payment_intent_id


def _refused(uow: UnitOfWork, purchase_id: int, refusal: PaymentRefused) -> Outcome:
    with uow:
        purchase = _locked_purchase(uow.session, purchase_id)
        if purchase.status in TERMINAL:
            return Outcome(Next.DONE)
        wake = _fail(uow.session, purchase, refusal.code, refusal.message)
        uow.commit()
        return Outcome(Next.DONE, wake)


def _settle_free(uow: UnitOfWork, purchase_id: int) -> Outcome:
    """Seats whose prorated price rounds to zero are given without a charge."""
    with uow:
        purchase = _locked_purchase(uow.session, purchase_id)
        if purchase.status in TERMINAL:
            return Outcome(Next.DONE)
        free = Payment(id="", status="succeeded", amount=0, currency=purchase.currency)
        purchase.new_card = False
        wake = _apply_success(uow.session, purchase, free, None)
        uow.commit()
        return Outcome(Next.DONE, wake)


def park(uow: UnitOfWork, purchase_id: int, reason: str) -> None:
    """Stop retrying and show the purchase to an operator; nothing is applied or undone."""
    with uow:
        purchase = _locked_purchase(uow.session, purchase_id)
        if purchase.status not in TERMINAL:
            purchase.attention = reason[:500]
            uow.commit()
