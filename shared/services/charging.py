"""Charging a purchase: price once, claim the plans, pay once, apply once.

Every step is guarded so that running it twice, concurrently or after a crash
ends the same way: the PaymentIntent id is recorded before it is confirmed,
Stripe calls carry keys made from our ids, and seat counts change only in the
transaction that marks the purchase succeeded. Money that reaches Stripe is
always matched by seats or by an operator alert (and, where it is clearly not
owed, refunded automatically).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Date,
    Engine,
    Integer,
    Text,
    bindparam,
    case,
    column,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import NoResultFound, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, contains_eager, joinedload
from sqlalchemy.sql.dml import Update

from shared.domain.cards import Card
from shared.domain.errors import Conflict
from shared.domain.money import Quote, plain_amount
from shared.domain.seats import TERMINAL, PurchaseStatus, SeatCounts
from shared.payments.gateway import (
    Payment,
    PaymentGateway,
    PaymentRefused,
    PaymentRequest,
    PaymentUnavailable,
    friendly_message,
)
from shared.services import card_sync
from shared.services.alerts import raise_alert
from shared.services.seats import price
from shared.store.db import PURCHASE_LOCKS, AdvisoryLock, UnitOfWork, work_lock
from shared.store.models import (
    ORGANIZATIONS,
    PURCHASE_ITEMS,
    PURCHASES,
    SEAT_CHANGES,
    SUBSCRIPTIONS,
    OperatorAlert,
    Organization,
    Purchase,
    PurchaseItem,
    Subscription,
)

log = logging.getLogger("seats.charging")

Checkpoint = Callable[[str], None]

PAYABLE = frozenset({"requires_payment_method", "requires_confirmation", "requires_action"})
"""Intent states in which someone holding the client secret could still pay."""


def no_checkpoint(name: str) -> None:
    """Production runs straight through; tests pass a checkpoint that stops the process."""


class Next(StrEnum):
    DONE = "done"
    WAIT = "wait"
    POLL = "poll"
    BUSY = "busy"


@dataclass(frozen=True)
class CardToSave:
    """A new card as the transaction that applied its purchase left it: the run that
    committed it pushes it to Stripe without reading it back."""

    organization_id: int
    method: str
    current: bool
    brand_known: bool
    customer_id: str | None


@dataclass
class Outcome:
    next: Next
    wake: list[int] = field(default_factory=list)
    card: CardToSave | None = None


@dataclass
class FollowUp:
    """Stripe calls decided inside a transaction and made once it is committed."""

    cancel: str | None = None
    refund_alert: int | None = None


def purchase_lock(engine: Engine, purchase_id: int) -> AbstractContextManager[bool]:
    """One charger per purchase at a time."""
    return work_lock(engine, PURCHASE_LOCKS, purchase_id)


# The statements every charge runs, built once: building one and working out its cache
# key cost more CPU than sending it.
LOCKED_PURCHASE = (
    select(Purchase)
    .where(Purchase.id == bindparam("purchase_id"))
    .options(
        joinedload(Purchase.items, innerjoin=True),
        joinedload(Purchase.organization, innerjoin=True),
    )
    .with_for_update(key_share=True, of=Purchase)
)
LOCKED_PURCHASE_AND_PLANS = (
    select(Purchase, Subscription)
    .join(PurchaseItem, PurchaseItem.purchase_id == Purchase.id)
    .join(Subscription, Subscription.id == PurchaseItem.subscription_id)
    .where(Purchase.id == bindparam("purchase_id"))
    .order_by(Subscription.id)
    .options(
        contains_eager(Purchase.items),
        joinedload(Purchase.organization, innerjoin=True),
    )
    .with_for_update(key_share=True, of=[Purchase, Subscription])
)
"""The purchase with its lines and organization, and its plans (their organization is the
purchase's, found in the session when a plan's time zone prices its line), one row per
line: the purchase's row and its plans' rows locked in one round trip, the purchase first
and the plans in id order, as every charger, failure and park locks them (no deadlock)."""
LOCKED_PURCHASE_AND_PLANS_IF_FREE = LOCKED_PURCHASE_AND_PLANS.add_columns(
    select(func.pg_try_advisory_lock(bindparam("lock", type_=BigInteger))).scalar_subquery()
)
"""The same, and whether this charger got its lock: tried once (an uncorrelated subquery),
before any row is read, in the same round trip."""
_FIRST_PENDING = (
    select(func.min(Purchase.id))
    .join(PurchaseItem, PurchaseItem.purchase_id == Purchase.id)
    .where(
        PurchaseItem.subscription_id.in_(bindparam("plan_ids", expanding=True)),
        Purchase.status == PurchaseStatus.PENDING,
        Purchase.attention.is_(None),
    )
    .group_by(PurchaseItem.subscription_id)
)
FIRST_PENDING_BEFORE = _FIRST_PENDING.where(Purchase.id < bindparam("before"))
FIRST_WAITING = _FIRST_PENDING.where(Purchase.waiting_since.is_not(None))


def _purchase_update(param: str) -> Update:
    """An UPDATE of the one purchase whose id is the parameter `param`."""
    return update(PURCHASES).where(PURCHASES.c.id == bindparam(param))


_PRICE_FIELDS = (
    "price_item",
    "price_seats",
    "price_subtotal",
    "price_coupon",
    "price_amount",
    "price_renews",
)
_PRICES = (
    func.unnest(
        bindparam("price_item", type_=ARRAY(BigInteger)),
        bindparam("price_seats", type_=ARRAY(Integer)),
        *(bindparam(name, type_=ARRAY(BigInteger)) for name in _PRICE_FIELDS[2:5]),
        bindparam("price_renews", type_=ARRAY(Date)),
    )
    .table_valued(
        column("item", BigInteger),
        column("seats", Integer),
        column("subtotal", BigInteger),
        column("coupon", BigInteger),
        column("amount", BigInteger),
        column("renews", Date),
    )
    .render_derived(name="price", with_types=False)
)
"""The lines whose price changed since checkout (usually none)."""
_REPRICED = (
    update(PURCHASE_ITEMS)
    .where(PURCHASE_ITEMS.c.id == _PRICES.c.item)
    .values(
        seats_to_buy=_PRICES.c.seats,
        subtotal=_PRICES.c.subtotal,
        proration_coupon=_PRICES.c.coupon,
        amount_due=_PRICES.c.amount,
        renews_at=_PRICES.c.renews,
    )
    .cte("repriced")
)
_HELD = (
    update(SUBSCRIPTIONS)
    .where(SUBSCRIPTIONS.c.id.in_(bindparam("plan_ids", expanding=True)))
    .values(charging_purchase_id=bindparam("claimant"), updated_at=func.now())
    .cte("held")
)
CLAIM = (
    _purchase_update("claimant")
    .values(
        status=PurchaseStatus.PROCESSING.value,
        amount_due=bindparam("total"),
        attempts=PURCHASES.c.attempts + 1,
        updated_at=func.now(),
    )
    .add_cte(_REPRICED, _HELD)
)
"""A purchase claimed in one statement: its plans held by it (locked already, by the read
before), its lines priced again where the price changed, and the purchase processing at
its total, its attempt counted. (No parameter is named after a column of a table it
updates: SQLAlchemy would SET it.)"""
_LINE_FIELDS = ("line_plan", "paid_before", "active_before", "paid_after", "active_after")
_LINES = (
    func.unnest(
        bindparam("line_plan", type_=ARRAY(BigInteger)),
        *(bindparam(field, type_=ARRAY(Integer)) for field in _LINE_FIELDS[1:]),
    )
    .table_valued(
        column("plan", BigInteger), *(column(field, Integer) for field in _LINE_FIELDS[1:])
    )
    .render_derived(name="line", with_types=False)
)
"""One row per plan of the purchase: its counts before, and after (NULL: its line buys
nothing)."""
_COUNTED = (
    update(SUBSCRIPTIONS)
    .where(
        SUBSCRIPTIONS.c.id == _LINES.c.plan,
        or_(
            _LINES.c.paid_after.is_not(None),
            SUBSCRIPTIONS.c.charging_purchase_id == bindparam("purchase_id"),
        ),
    )
    .values(
        paid_seats=func.coalesce(_LINES.c.paid_after, SUBSCRIPTIONS.c.paid_seats),
        active_seats=func.coalesce(_LINES.c.active_after, SUBSCRIPTIONS.c.active_seats),
        charging_purchase_id=case(
            (SUBSCRIPTIONS.c.charging_purchase_id == bindparam("purchase_id"), None),
            else_=SUBSCRIPTIONS.c.charging_purchase_id,
        ),
        updated_at=func.now(),
    )
    .cte("counted")
)
_AUDITED = (
    insert(SEAT_CHANGES)
    .from_select(
        [
            "subscription_id",
            "actor_user_id",
            "purchase_id",
            "reason",
            "paid_before",
            "paid_after",
            "active_before",
            "active_after",
        ],
        select(
            _LINES.c.plan,
            bindparam("actor", type_=BigInteger),
            bindparam("purchase_id", type_=BigInteger),
            bindparam("reason", type_=Text),
            _LINES.c.paid_before,
            _LINES.c.paid_after,
            _LINES.c.active_before,
            _LINES.c.active_after,
        ).where(_LINES.c.paid_after.is_not(None)),
    )
    .cte("audited")
)
_CARD_KEPT = (
    update(ORGANIZATIONS)
    .where(
        ORGANIZATIONS.c.id == bindparam("organization"),
        bindparam("keep_card", type_=Boolean),
    )
    .values(
        payment_method_id=bindparam("card"),
        payment_method_brand=bindparam("brand"),
        payment_method_last4=bindparam("last4"),
    )
    .cte("card_kept")
)
_SUCCEEDED = (
    _purchase_update("purchase_id")
    .values(
        status=PurchaseStatus.SUCCEEDED.value,
        attention=None,
        amount_due=bindparam("amount"),
        client_secret=None,
        completed_at=bindparam("finished_at"),
        payment_method_id=bindparam("method"),
        new_card=bindparam("card_is_new"),
        card_sync_pending=or_(PURCHASES.c.card_sync_pending, bindparam("keep_card")),
        updated_at=func.now(),
    )
    .cte("succeeded")
)
APPLY = FIRST_WAITING.add_cte(_COUNTED, _AUDITED, _CARD_KEPT, _SUCCEEDED)
# (no parameter is named after a column of a table it updates: SQLAlchemy would SET it)
"""A paid purchase applied in one statement: the counts of the plans whose line it gives,
each with its audit row, its plans freed, the card that paid kept for renewals (its row
locked), the purchase succeeded; and, read in the same statement, the oldest purchase
waiting for each plan. The plans were locked before (`LOCKED_PURCHASE_AND_PLANS`), so no
purchase can start waiting for them between that lock and this statement's snapshot."""
RECORD_INTENT = (
    _purchase_update("purchase_id")
    .where(
        PURCHASES.c.stripe_payment_intent_id.is_(None),
        PURCHASES.c.status == PurchaseStatus.PROCESSING.value,
        PURCHASES.c.attention.is_(None),
    )
    .values(stripe_payment_intent_id=bindparam("intent"), updated_at=func.now())
    .returning(PURCHASES.c.stripe_payment_intent_id)
)
CARD_STATE = (
    select(
        PURCHASES.c.card_sync_pending,
        PURCHASES.c.payment_method_id,
        PURCHASES.c.organization_id,
        ORGANIZATIONS.c.payment_method_id.label("current"),
        ORGANIZATIONS.c.payment_method_brand,
        ORGANIZATIONS.c.stripe_customer_id,
    )
    .join(ORGANIZATIONS, ORGANIZATIONS.c.id == PURCHASES.c.organization_id)
    .where(PURCHASES.c.id == bindparam("purchase_id"))
)
CARD_BRAND = (
    update(ORGANIZATIONS)
    .where(
        ORGANIZATIONS.c.id == bindparam("organization_id"),
        ORGANIZATIONS.c.payment_method_id == bindparam("method"),
    )
    .values(payment_method_brand=bindparam("brand"), payment_method_last4=bindparam("last4"))
)
CARD_SAVED = _purchase_update("purchase_id").values(card_sync_pending=False, updated_at=func.now())


def _locked_purchase(session: Session, purchase_id: int) -> Purchase:
    """The purchase, row-locked, read with its lines and its organization in one round trip
    (only the purchase's own row is locked)."""
    return session.scalars(LOCKED_PURCHASE, {"purchase_id": purchase_id}).unique().one()


Plans = dict[int, Subscription]


def _locked_purchase_and_plans(
    session: Session, purchase_id: int, lock: AdvisoryLock | None = None
) -> tuple[Purchase, Plans, bool]:
    """`LOCKED_PURCHASE_AND_PLANS`; with a `lock`, whether this charger got it (when not,
    the rows it locked go with the caller's rollback)."""
    if lock is None:
        rows = session.execute(LOCKED_PURCHASE_AND_PLANS, {"purchase_id": purchase_id})
    else:
        lock.trying()
        rows = session.execute(
            LOCKED_PURCHASE_AND_PLANS_IF_FREE, {"purchase_id": purchase_id, "lock": lock.key}
        )
    found: list[Any] = list(rows.unique())
    if not found:
        raise NoResultFound(f"no purchase {purchase_id}")
    mine = lock is None or lock.took(found[0][2])
    return found[0][0], {row[1].id: row[1] for row in found}, mine


def next_in_line(session: Session, plan_ids: list[int], before: int) -> list[int]:
    """The oldest purchase older than `before` still to charge for each plan: plans serve
    buyers in checkout order."""
    return sorted(
        set(session.scalars(FIRST_PENDING_BEFORE, {"plan_ids": plan_ids, "before": before}))
    )


def _waiting_in_line(session: Session, plan_ids: list[int]) -> list[int]:
    """The oldest purchase of each plan that found it busy; one not tried yet has a
    message of its own on the way, and a second would find nothing to do."""
    return sorted(set(session.scalars(FIRST_WAITING, {"plan_ids": plan_ids})))


def _release(session: Session, purchase: Purchase, plans: Plans) -> list[int]:
    """Free the plans this purchase held and name the purchases next in line for them.

    The plans were loaded and locked with the purchase, in id order, as every charger locks
    them (an UPDATE of them all would lock them in the order it finds them: a deadlock with
    a charger of the same plans)."""
    for plan in plans.values():
        if plan.charging_purchase_id == purchase.id:
            plan.charging_purchase_id = None
    return [waiting for waiting in _waiting_in_line(session, list(plans)) if waiting != purchase.id]


def _fail(session: Session, purchase: Purchase, code: str, message: str, plans: Plans) -> list[int]:
    purchase.status = PurchaseStatus.FAILED
    purchase.attention = None
    purchase.failure_code = code
    purchase.failure_message = message
    purchase.client_secret = None
    purchase.completed_at = datetime.now(UTC)
    return _release(session, purchase, plans)


def _wait(purchase: Purchase) -> Outcome:
    """Behind another purchase of the plan: marked waiting (in the plan's lock, so the one
    ahead, releasing the plan, sees it) and woken when that one is done."""
    if purchase.waiting_since is None:
        purchase.waiting_since = datetime.now(UTC)
    return Outcome(Next.WAIT)


def _claim_and_price(
    session: Session, purchase: Purchase, plans: Plans, now: datetime | None
) -> Outcome | int:
    """Take the plans for this purchase and price it against them as they are now: the
    outcome that stops it, or the total it is charged (written by `CLAIM`, with the
    attempt counted; the loaded rows are left as read).

    Purchases of one plan are charged one after another, so the second buyer
    pays only for seats the first did not already buy. This runs once per
    purchase: the price it sets is kept through crashes, and with it the key
    of the PaymentIntent that charges it.
    """
    for plan in plans.values():
        holder = plan.charging_purchase_id
        if holder not in (None, purchase.id):
            held = session.get(Purchase, holder)
            if held is not None and held.status not in TERMINAL:
                return _wait(purchase)
    if next_in_line(session, list(plans), before=purchase.id):
        # an older purchase of the plan comes first; its own message is on the way (the
        # sweep re-sends a lost one), and when done it wakes this one, now marked waiting
        return _wait(purchase)
    offers = []
    for item in purchase.items:
        try:
            offers.append((item, price(plans[item.subscription_id], item.active_seats, now)))
        except Conflict as refusal:
            wake = _fail(session, purchase, refusal.code, refusal.message, plans)
            return Outcome(Next.DONE, wake)
    total = sum(offer.amount_due for _, offer in offers)
    if total > purchase.confirmed_amount:
        message = (
            f"The price changed since you confirmed it ({plain_amount(total, purchase.currency)} "
            f"instead of {plain_amount(purchase.confirmed_amount, purchase.currency)}), so "
            "nothing was charged. Add the seats to your cart again to see the new price."
        )
        return Outcome(Next.DONE, _fail(session, purchase, "quote_expired", message, plans))
    if not any(offer.seats_to_buy for _, offer in offers):
        for item, offer in offers:  # the lines as priced now, kept with the failure
            item.seats_to_buy, item.subtotal = offer.seats_to_buy, offer.subtotal
            item.proration_coupon, item.amount_due = offer.proration_coupon, offer.amount_due
            item.renews_at = offer.renews_at
        purchase.amount_due = total
        message = "These seats were already bought, so nothing was charged."
        return Outcome(Next.DONE, _fail(session, purchase, "already_paid", message, plans))
    prices = _arrays(
        _PRICE_FIELDS,
        [(item.id, *_priced(offer)) for item, offer in offers if _priced(item) != _priced(offer)],
    )
    session.execute(
        CLAIM, {**prices, "claimant": purchase.id, "plan_ids": list(plans), "total": total}
    )
    return total


def _arrays(names: tuple[str, ...], rows: list[tuple[Any, ...]]) -> dict[str, list[Any]]:
    """Rows as one array parameter per column, for a statement that `unnest`s them."""
    return {name: [row[at] for row in rows] for at, name in enumerate(names)}


def _priced(line: PurchaseItem | Quote) -> tuple[int, int, int, int, date | None]:
    return line.seats_to_buy, line.subtotal, line.proration_coupon, line.amount_due, line.renews_at


def _stray(session: Session, purchase: Purchase, payment: Payment, ours: bool) -> FollowUp:
    """A payment naming this purchase that is not the one we made for it."""
    if payment.status != "succeeded":
        return FollowUp()
    amount = plain_amount(payment.amount, payment.currency)
    where = dict(
        organization_id=purchase.organization_id,
        purchase_id=purchase.id,
        stripe_object_id=payment.id,
        amount=payment.amount,
        dedupe_key=f"payment:{payment.id}",
    )
    if ours:
        paid_by = purchase.stripe_payment_intent_id or "no payment"
        alert = raise_alert(
            session,
            kind="duplicate_payment",
            message=f"{payment.id} took {amount} for purchase {purchase.id} "
            f"({purchase.status}, paid by {paid_by}): a second payment is not owed, "
            "so it is refunded automatically",
            refund_pending=True,
            **where,
        )
        return FollowUp(refund_alert=alert.id if alert and alert.refund_pending else None)
    raise_alert(
        session,
        kind="foreign_payment",
        message=f"{payment.id} took {amount} and names purchase {purchase.id}, but its amount, "
        "currency or customer do not match that purchase: nothing was applied. "
        "Find out whose money it is and refund it in Stripe if it is not owed",
        **where,
    )
    return FollowUp()


def _still_to_buy(purchase: Purchase, plans: dict[int, Subscription]) -> bool:
    """Every line can still be given exactly as it was priced and paid."""
    for item in purchase.items:
        plan = plans[item.subscription_id]
        if item.seats_to_buy <= 0:
            continue
        if plan.paid_seats + item.seats_to_buy != item.active_seats:
            return False
        if item.renews_at is not None and item.renews_at != plan.renews_at:
            return False
        if plan.charging_purchase_id not in (None, purchase.id):
            return False
    return any(item.seats_to_buy > 0 for item in purchase.items)


def _late_payment(
    session: Session,
    purchase: Purchase,
    plans: Plans,
    payment: Payment,
    card: Card | None,
    ours: bool,
) -> tuple[Outcome, FollowUp]:
    """Money arrived for a purchase that had failed: give the seats if they are still
    there to give at that price, otherwise refund it and tell an operator."""
    decided = session.scalar(
        select(OperatorAlert).where(OperatorAlert.dedupe_key == f"payment:{payment.id}")
    )
    if decided is not None:  # refunded (or being refunded): a replay never gives the seats
        return Outcome(Next.DONE), FollowUp(
            refund_alert=decided.id if decided.refund_pending else None
        )
    if ours and payment.amount == purchase.amount_due and _still_to_buy(purchase, plans):
        log.warning("purchase %s paid after it failed: seats applied", purchase.id)
        purchase.failure_code = purchase.failure_message = None
        return _apply_success(session, purchase, plans, payment, card), FollowUp()
    alert = raise_alert(
        session,
        kind="late_payment",
        message=f"{payment.id} took {plain_amount(payment.amount, payment.currency)} after "
        f"purchase {purchase.id} had failed ({purchase.failure_code}); its seats can no longer "
        "be given as priced, so the payment is refunded automatically",
        organization_id=purchase.organization_id,
        purchase_id=purchase.id,
        stripe_object_id=payment.id,
        amount=payment.amount,
        dedupe_key=f"payment:{payment.id}",
        refund_pending=True,
    )
    refund = alert.id if alert and alert.refund_pending else None
    return Outcome(Next.DONE), FollowUp(refund_alert=refund)


def _settle(
    session: Session, purchase_id: int, payment: Payment, card: Card | None
) -> tuple[Outcome, FollowUp]:
    purchase, plans, _ = _locked_purchase_and_plans(session, purchase_id)
    customer = purchase.organization.stripe_customer_id
    ours = (
        customer is not None
        and payment.customer_id == customer
        and payment.currency == purchase.currency
        and payment.purchase_id == purchase.id
    )
    if (
        purchase.stripe_payment_intent_id is None
        and ours
        and payment.amount == purchase.amount_due
        and purchase.status == PurchaseStatus.PROCESSING
    ):
        # ours, made by a charger that stopped before it could record it
        purchase.stripe_payment_intent_id = payment.id
    if purchase.stripe_payment_intent_id != payment.id:
        return Outcome(Next.DONE), _stray(session, purchase, payment, ours)
    if purchase.status == PurchaseStatus.SUCCEEDED:
        return Outcome(Next.DONE), FollowUp()
    if purchase.status == PurchaseStatus.FAILED:
        if payment.status == "succeeded":
            return _late_payment(session, purchase, plans, payment, card, ours)
        return Outcome(Next.DONE), FollowUp(
            cancel=payment.id if payment.status in PAYABLE else None
        )
    if payment.status == "succeeded":
        return _apply_success(session, purchase, plans, payment, card), FollowUp()
    if payment.status in ("requires_payment_method", "canceled"):
        code = payment.failure_code or (
            "payment_canceled" if payment.status == "canceled" else "payment_failed"
        )
        message = payment.failure_message or friendly_message(code)
        wake = _fail(session, purchase, code, message, plans)
        cancel = payment.id if payment.status in PAYABLE else None
        return Outcome(Next.DONE, wake), FollowUp(cancel=cancel)
    if payment.status == "requires_action":
        purchase.status = PurchaseStatus.REQUIRES_ACTION
        purchase.client_secret = payment.client_secret
        purchase.action_required_at = purchase.action_required_at or datetime.now(UTC)
        return Outcome(Next.POLL), FollowUp()
    if payment.status == "processing":
        return Outcome(Next.POLL), FollowUp()
    return Outcome(Next.BUSY), FollowUp()


def settle(
    uow: UnitOfWork,
    gateway: PaymentGateway,
    purchase_id: int,
    payment: Payment,
    card: Card | None = None,
) -> Outcome:
    """Bring the purchase in line with what the processor says happened to a payment.

    Only forward moves: a late failure never undoes a success, and a success
    is applied once, whoever reports it first (charger, webhook or sweep). A
    failed purchase's intent is canceled so nobody can pay it later; if money
    arrives for it anyway, it is applied or refunded, never ignored.
    """
    with uow:
        outcome, follow = _settle(uow.session, purchase_id, payment, card)
        uow.commit()
    if follow.cancel is not None:
        try:
            after = gateway.cancel_payment(follow.cancel)
        except (PaymentUnavailable, PaymentRefused) as error:
            log.warning(
                "could not cancel %s of failed purchase %s: %s", follow.cancel, purchase_id, error
            )
        else:
            if after.status == "succeeded":  # paid in the meantime: apply or refund it
                try:
                    late = settle(uow, gateway, purchase_id, after, card)
                except PaymentUnavailable as error:  # its refund, decided and committed
                    log.warning("the refund of %s is left to the sweep: %s", after.id, error)
                    late = Outcome(Next.DONE)
                # the failure committed above freed its plans: theirs to wake as well
                late.wake = list(dict.fromkeys([*outcome.wake, *late.wake]))
                return late
    if follow.refund_alert is not None:
        refund(uow, gateway, follow.refund_alert)
    return outcome


def refund(uow: UnitOfWork, gateway: PaymentGateway, alert_id: int) -> None:
    """Give back the payment an alert is about, once, and note it on the alert.

    The decision (`refund_pending`) was committed with the alert; an outage here
    leaves it pending, and the sweep tries again until Stripe answers.
    """
    with uow:
        alert = uow.session.get_one(OperatorAlert, alert_id)
        if not alert.refund_pending or alert.stripe_object_id is None:
            return
        payment_id = alert.stripe_object_id
    try:
        refund_id: str | None = gateway.refund_payment(payment_id)
        refused = None
    except PaymentRefused as refusal:
        refund_id, refused = None, refusal
    with uow:
        alert = uow.session.get_one(OperatorAlert, alert_id, with_for_update=True)
        if not alert.refund_pending:
            return
        alert.refund_pending = False
        alert.refund_id = refund_id
        if refused is not None:
            alert.message += (
                f". The automatic refund was refused ({refused.code}): refund it by hand"
            )
        uow.commit()


def _apply_success(
    session: Session, purchase: Purchase, plans: Plans, payment: Payment, card: Card | None
) -> Outcome:
    """Give the seats a payment bought, free the plans, keep the card that paid: one
    statement (`APPLY`), which also names the purchases waiting for these plans. The
    loaded rows are read, never changed: nothing else is flushed after it."""
    method, new_card = purchase.payment_method_id, purchase.new_card
    paid_with = payment.payment_method_id
    if paid_with and paid_with != method:
        # paid with another card than the one chosen at checkout (Stripe.js lets the
        # customer do that): the card that paid is the one to keep for renewals
        method, new_card, card = paid_with, True, None
    rows = []
    for item in purchase.items:
        plan = plans[item.subscription_id]
        counts = _bought(session, purchase, item, plan, payment)
        after = (counts.paid_seats, counts.active_seats) if counts else (None, None)
        rows.append((plan.id, plan.paid_seats, plan.active_seats, *after))
    lines = _arrays(_LINE_FIELDS, rows)
    kept = None
    to_save = None
    if new_card:
        known = card if card and card.id == method else None
        kept = known or Card(method, None, None)
        organization = purchase.organization
        to_save = CardToSave(
            organization.id,
            method,
            current=True,
            brand_known=kept.brand is not None,
            customer_id=organization.stripe_customer_id,
        )
    waiting = session.scalars(
        APPLY,
        {
            **lines,
            "purchase_id": purchase.id,
            "plan_ids": list(plans),
            "actor": purchase.user_id,
            "reason": f"purchase {purchase.id} paid",
            "amount": payment.amount,
            "finished_at": datetime.now(UTC),
            "method": method,
            "card_is_new": new_card,
            "keep_card": kept is not None,
            "organization": purchase.organization_id,
            "card": kept.id if kept else None,
            "brand": kept.brand if kept else None,
            "last4": kept.last4 if kept else None,
        },
    )
    wake = sorted({found for found in waiting if found != purchase.id})
    return Outcome(Next.DONE, wake, to_save)


def _bought(
    session: Session, purchase: Purchase, item: PurchaseItem, plan: Subscription, payment: Payment
) -> SeatCounts | None:
    """The plan's counts once its line is given; None when its line buys nothing (a line
    someone else bought meanwhile: told to an operator, the money is not lost)."""
    if item.seats_to_buy <= 0:
        return None
    if item.active_seats <= plan.paid_seats:
        raise_alert(
            session,
            kind="seats_not_applied",
            message=f"purchase {purchase.id} was paid, but plan {plan.id} already had "
            f"{plan.paid_seats} paid seats, so its line ({item.active_seats} seats, "
            f"{plain_amount(item.amount_due, purchase.currency)}) changed nothing: "
            "refund that line or give the seats",
            organization_id=purchase.organization_id,
            purchase_id=purchase.id,
            stripe_object_id=payment.id or None,
            amount=item.amount_due,
            dedupe_key=f"line:{purchase.id}:{plan.id}",
        )
        return None
    return SeatCounts(plan.paid_seats, plan.active_seats).after_purchase(item.active_seats)


def _card_state(uow: UnitOfWork, purchase_id: int) -> CardToSave | None:
    """The card a purchase still has to push, as stored (None: nothing to push)."""
    with uow.single() as reading:
        found = reading.session.execute(CARD_STATE, {"purchase_id": purchase_id}).one()
    if not found.card_sync_pending:
        return None
    return CardToSave(
        found.organization_id,
        found.payment_method_id,
        current=found.current == found.payment_method_id,
        brand_known=found.payment_method_brand is not None,
        customer_id=found.stripe_customer_id,
    )


def save_card(
    uow: UnitOfWork, gateway: PaymentGateway, purchase_id: int, known: CardToSave | None = None
) -> None:
    """After a new card paid, make it Stripe's default for renewals and learn its brand.

    Seats never wait for this: it runs after the purchase succeeded and is retried by
    the sweep until Stripe answers (a refusal ends it: `_card_refused`). Only the
    organization's current card is pushed, so a late run never brings back an older
    card. `known`: the state the caller's own transaction just committed (no read).
    """
    state = known or _card_state(uow, purchase_id)
    if state is None:
        return
    card = None
    if state.current and state.customer_id:
        try:
            gateway.set_default_card(state.customer_id, state.method)
        except PaymentRefused as refusal:
            _card_refused(uow, gateway, purchase_id, state, state.customer_id, refusal)
            return
        if not state.brand_known:
            try:
                card = gateway.get_card(state.method)
            except PaymentRefused as refusal:  # the default is set: only its brand is unknown
                log.warning("card %s: its brand could not be read: %s", state.method, refusal)
    with uow.single() as writing:  # two repeatable updates, the one that ends it last
        if card is not None:
            writing.session.execute(
                CARD_BRAND,
                {
                    "organization_id": state.organization_id,
                    "method": state.method,
                    "brand": card.brand,
                    "last4": card.last4,
                },
            )
        writing.session.execute(CARD_SAVED, {"purchase_id": purchase_id})


def _card_refused(
    uow: UnitOfWork,
    gateway: PaymentGateway,
    purchase_id: int,
    state: CardToSave,
    customer_id: str,
    refusal: PaymentRefused,
) -> None:
    """Stripe will not take the card (removed from the customer meanwhile, or never attached
    to it: paid with in the browser): it is replaced by Stripe's default and an operator is
    told, in the same transaction (`card_sync.replace_refused_card`)."""

    def tell(session: Session, kept: Card | None) -> None:
        instead = f"Stripe's default, {kept.id}" if kept else "no card (Stripe has no default)"
        raise_alert(
            session,
            kind="card_not_default",
            message=(
                f"Stripe refused to make the card {state.method} that paid purchase "
                f"{purchase_id} the customer's default for renewals ({refusal.code}: "
                f"{refusal.message}); renewals now use {instead}: check with the customer"
            ),
            organization_id=state.organization_id,
            purchase_id=purchase_id,
            stripe_object_id=state.method,
            dedupe_key=f"card_not_default:{purchase_id}",
        )

    organization_id = state.organization_id
    if card_sync.replace_refused_card(
        uow, gateway, purchase_id, organization_id, customer_id, state.method, tell
    ):
        log.error("Stripe refused card %s of purchase %s: %s", state.method, purchase_id, refusal)


def save_card_later(
    uow: UnitOfWork, gateway: PaymentGateway, purchase_id: int, known: CardToSave | None = None
) -> None:
    """Try now; if Stripe or the database is away the sweep tries again (the card stays
    marked on its way), and the purchase is already done: its caller still has the
    purchases it woke to hand on."""
    try:
        save_card(uow, gateway, purchase_id, known)
    except (PaymentUnavailable, OperationalError, PoolTimeout) as error:
        log.warning("saving the card of purchase %s failed, will retry: %s", purchase_id, error)


def stripe_customer(uow: UnitOfWork, gateway: PaymentGateway, organization_id: int) -> str:
    """One Stripe customer per organization, even when two chargers race to make it.

    The organization's row is locked while the customer is created, so a
    second charger waits and then reads the first one's customer; a customer
    is never deleted (with Stripe's idempotency key both calls may return the
    same one).
    """
    with uow.single() as reading:  # one statement, no BEGIN/COMMIT
        existing = reading.session.scalar(
            select(Organization.stripe_customer_id).where(Organization.id == organization_id)
        )
        if existing:
            return existing
    return new_stripe_customer(uow, gateway, organization_id)


def new_stripe_customer(uow: UnitOfWork, gateway: PaymentGateway, organization_id: int) -> str:
    """`stripe_customer` for a caller that has just read none: straight to the locked
    transaction (which still returns one a racing charger made meanwhile)."""
    with uow:
        organization = uow.session.get_one(
            Organization, organization_id, with_for_update={"key_share": True}
        )
        if organization.stripe_customer_id:
            return organization.stripe_customer_id
        created = gateway.create_customer(organization_id, organization.name)
        organization.stripe_customer_id = created
        uow.commit()
        return created


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

    A payment still waiting for 3-D Secure `action_ttl` seconds after the bank
    asked is canceled, which frees the plan for other buyers.

    The whole run uses one database connection: the advisory lock that makes this
    charger the only one is taken in its first transaction and released on the same
    connection at the end, so no second connection sits idle in a transaction
    through the Stripe calls (`uow` serves the steps other callers share).
    """
    with engine.connect() as connection:
        own = UnitOfWork.on_connection(connection)
        lock = AdvisoryLock(connection, PURCHASE_LOCKS, purchase_id)
        try:
            return _charge(own, lock, gateway, purchase_id, now, checkpoint, action_ttl)
        finally:
            lock.release()


def _charge(
    uow: UnitOfWork,
    lock: AdvisoryLock,
    gateway: PaymentGateway,
    purchase_id: int,
    now: datetime | None,
    checkpoint: Checkpoint,
    action_ttl: float | None,
) -> Outcome:
    with uow:
        purchase, plans, mine = _locked_purchase_and_plans(uow.session, purchase_id, lock)
        if not mine:  # another charger has it
            return Outcome(Next.BUSY)
        card_pending = purchase.card_sync_pending
        if purchase.status in TERMINAL or purchase.attention:
            finished = True
        else:
            finished = False
            if purchase.status == PurchaseStatus.PENDING:
                claimed = _claim_and_price(uow.session, purchase, plans, now)
                if isinstance(claimed, Outcome):
                    uow.commit()
                    return claimed
                amount = claimed
            else:
                purchase.attempts += 1
                amount = purchase.amount_due
            uow.commit()
            intent_id = purchase.stripe_payment_intent_id
            organization_id = purchase.organization_id
            customer = purchase.organization.stripe_customer_id
            currency = purchase.currency
            method, new_card = purchase.payment_method_id, purchase.new_card
            asked = purchase.action_required_at
            waited = ((now or datetime.now(UTC)) - asked).total_seconds() if asked else 0.0
    if finished:
        if card_pending:
            save_card(uow, gateway, purchase_id)
        return Outcome(Next.DONE)

    if intent_id is None and amount == 0:
        return _settle_free(uow, purchase_id)
    card: Card | None = None
    payment: Payment | None = None
    try:
        customer = customer or new_stripe_customer(uow, gateway, organization_id)
        if intent_id is None:
            card = gateway.attach_card(method, customer) if new_card else None
            created = gateway.create_payment(
                PaymentRequest(
                    reference=f"purchase-{purchase_id}",
                    amount=amount,
                    currency=currency,
                    customer_id=customer,
                    payment_method_id=method,
                    metadata={"purchase_id": str(purchase_id)},
                )
            )
            checkpoint("payment_unrecorded")
            recorded = _record_intent(uow, purchase_id, created)
            if recorded is None:  # parked or settled meanwhile: this intent is not needed
                gateway.cancel_payment(created.id)
                return Outcome(Next.DONE)
            intent_id = recorded
            payment = created if created.id == intent_id else None
            checkpoint("payment_created")
        if payment is None:
            payment = gateway.get_payment(intent_id)
        if payment.status == "requires_confirmation":
            payment = gateway.confirm_payment(intent_id)
        if payment.status == "requires_action" and action_ttl is not None and waited > action_ttl:
            payment = gateway.cancel_payment(intent_id)
        checkpoint("payment_confirmed")
    except PaymentRefused as refusal:
        return _refused(uow, gateway, purchase_id, refusal)
    outcome = settle(uow, gateway, purchase_id, payment, card)
    if new_card:
        save_card_later(uow, gateway, purchase_id, outcome.card)
    return outcome


def _record_intent(uow: UnitOfWork, purchase_id: int, created: Payment) -> str | None:
    """Write the intent id before confirming; if another run got there first, use theirs.

    One conditional UPDATE in the usual case. None when the purchase is no longer
    being charged (an operator or a parking task released it): the caller must not
    confirm anything.
    """
    with uow.single() as recording:  # one statement in the usual case
        recorded = recording.session.scalar(
            RECORD_INTENT, {"purchase_id": purchase_id, "intent": created.id}
        )
        if recorded is not None:
            recording.commit()
            return recorded
        purchase = _locked_purchase(recording.session, purchase_id)
        if purchase.attention or purchase.status in TERMINAL:
            return None
        return purchase.stripe_payment_intent_id


def _refused(
    uow: UnitOfWork, gateway: PaymentGateway, purchase_id: int, refusal: PaymentRefused
) -> Outcome:
    with uow:
        purchase, plans, _ = _locked_purchase_and_plans(uow.session, purchase_id)
        if purchase.status in TERMINAL:
            return Outcome(Next.DONE)
        wake = _fail(uow.session, purchase, refusal.code, refusal.message, plans)
        intent = purchase.stripe_payment_intent_id
        uow.commit()
    if intent is not None:
        try:
            gateway.cancel_payment(intent)
        except (PaymentUnavailable, PaymentRefused) as error:
            log.warning("could not cancel %s of failed purchase %s: %s", intent, purchase_id, error)
    return Outcome(Next.DONE, wake)


def _settle_free(uow: UnitOfWork, purchase_id: int) -> Outcome:
    """Seats whose prorated price rounds to zero are given without a charge."""
    with uow:
        purchase, plans, _ = _locked_purchase_and_plans(uow.session, purchase_id)
        if purchase.status in TERMINAL:
            return Outcome(Next.DONE)
        free = Payment(id="", status="succeeded", amount=0, currency=purchase.currency)
        purchase.new_card = False
        outcome = _apply_success(uow.session, purchase, plans, free, None)
        uow.commit()
        return outcome


def park(uow: UnitOfWork, engine: Engine, purchase_id: int, reason: str) -> list[int]:
    """Stop retrying and show the purchase to an operator; nothing is applied or undone.

    A purchase parked before any PaymentIntent exists goes back to `pending`
    and lets go of its plans, so other buyers are not held up; it is priced
    again when an operator retries it. One with an intent keeps its plans,
    since money may be on its way. Returns the purchases to wake. A purchase
    another charger is working on right now is left to that charger.
    """
    with purchase_lock(engine, purchase_id) as mine:
        if not mine:
            return []
        return _park(uow, purchase_id, reason)


def _park(uow: UnitOfWork, purchase_id: int, reason: str) -> list[int]:
    with uow:
        purchase, plans, _ = _locked_purchase_and_plans(uow.session, purchase_id)
        if purchase.status in TERMINAL:
            return []
        purchase.attention = reason[:500]
        wake: list[int] = []
        if purchase.stripe_payment_intent_id is None:
            purchase.status = PurchaseStatus.PENDING
            wake = _release(uow.session, purchase, plans)
        uow.commit()
        return wake
