"""Turning a cart into a purchase, or a failed purchase's lines into a new one: stored first,
charged later by a worker."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session, joinedload

from shared.domain.cards import check_payment_method
from shared.domain.errors import Conflict, Forbidden, Invalid, NotFound
from shared.domain.money import Quote, plain_amount
from shared.domain.seats import PurchaseStatus, require_manager
from shared.services.access import Actor, subscription_for
from shared.services.cart import priced_lines
from shared.services.seats import price
from shared.store.db import UnitOfWork
from shared.store.models import Organization, Purchase, User

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def check_idempotency_key(key: str | None) -> str:
    if not key:
        raise Invalid(
            "send an Idempotency-Key header so a retried checkout never pays twice",
            "idempotency_key_required",
        )
    if not IDEMPOTENCY_KEY.match(key):
        raise Invalid(
            "the Idempotency-Key must be 1 to 255 visible ASCII characters",
            "invalid_idempotency_key",
        )
    return key


KEYED = select(Purchase).where(
    Purchase.user_id == bindparam("user_id"), Purchase.idempotency_key == bindparam("key")
)
"""The purchase a buyer's key already made (statements a checkout runs are built once)."""
LOCKED_BUYER = (
    select(User)
    .where(User.id == bindparam("user_id"))
    .options(joinedload(User.organization, innerjoin=True))
    .with_for_update(key_share=True, of=User)
)


def _existing(session: Session, actor: Actor, key: str) -> Purchase | None:
    return session.scalar(KEYED, {"user_id": actor.user_id, "key": key})


def request_fingerprint(payment_method: str | None, retry_of: int | None = None) -> str:
    """What of the request decides the purchase (the card, null for the saved one, and the
    failed purchase a retry pays again), canonically."""
    decided: dict[str, object] = {"payment_method": payment_method}
    if retry_of is not None:
        decided["retry_of"] = retry_of
    canonical = json.dumps(decided, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _reused() -> Conflict:
    return Conflict(
        "this Idempotency-Key was used for another request: use a new key for a new checkout",
        "idempotency_key_reused",
    )


def _check_card(payment_method: str | None) -> None:
    if payment_method is not None:
        check_payment_method(payment_method)


def _lock_buyer(session: Session, actor: Actor) -> Organization:
    """One checkout or retry per buyer at a time: the key check and the insert agree.
    The buyer's organization comes in the same round trip."""
    buyer = session.scalars(LOCKED_BUYER, {"user_id": actor.user_id}).one()
    return buyer.organization


def _card_to_use(organization: Organization, payment_method: str | None) -> str:
    method = payment_method or organization.payment_method_id
    if method is None:
        raise Conflict("there is no saved card: give a payment_method", "payment_method_required")
    return method


@dataclass(frozen=True)
class _Line:
    subscription_id: int
    active_seats: int
    offer: Quote


LOCK_PLANS = text(
    "SELECT id FROM subscriptions WHERE id = ANY(CAST(:plans AS bigint[])) ORDER BY id FOR SHARE"
)
"""The purchase's plans, held until it is stored: a charger finishing with one of them
(which locks them, in id order too) either waits for the purchase, and then sees it waiting,
or has committed before `STORE` looks, and then is not ahead of it (no lost wake-up)."""
STORE = text(
    """
    WITH stored AS (
        INSERT INTO purchases (organization_id, user_id, idempotency_key, status, currency,
            confirmed_amount, amount_due, payment_method_id, new_card, attempts,
            card_sync_pending, request_fingerprint, retry_of_id, waiting_since)
        VALUES (:organization_id, :user_id, :key, :status, :currency,
            :confirmed_amount, :amount_due, :method, :new_card, 0, false, :fingerprint,
            :retry_of, (SELECT now() WHERE EXISTS (
                SELECT 1 FROM subscriptions plan JOIN purchases holder
                    ON holder.id = plan.charging_purchase_id
                WHERE plan.id = ANY(CAST(:plans AS bigint[]))
                    AND holder.status NOT IN ('succeeded', 'failed')
            ) OR EXISTS (
                SELECT 1 FROM purchase_items line JOIN purchases older
                    ON older.id = line.purchase_id
                WHERE line.subscription_id = ANY(CAST(:plans AS bigint[]))
                    AND older.status = 'pending' AND older.attention IS NULL
            )))
        RETURNING id, waiting_since
    ), items AS (
        INSERT INTO purchase_items (purchase_id, subscription_id, active_seats, seats_to_buy,
            subtotal, proration_coupon, amount_due, renews_at)
        SELECT stored.id, line.* FROM stored, unnest(
            CAST(:plans AS bigint[]), CAST(:counts AS integer[]), CAST(:to_buy AS integer[]),
            CAST(:subtotals AS bigint[]), CAST(:coupons AS bigint[]), CAST(:dues AS bigint[]),
            CAST(:renews AS date[])
        ) AS line
    ), emptied AS (
        DELETE FROM cart_items WHERE id = ANY(CAST(:emptied AS bigint[]))
    )
    SELECT id, waiting_since IS NOT NULL AS queued FROM stored
    """
)
"""The purchase, its lines and the cart lines it empties: one round trip, compiled once.
Behind another purchase of one of its plans (one holding it, or one still to charge: the
charger's own test, `charging._claim_and_price`), it is stored waiting: the one ahead wakes
it when done, so no charge task has to find that out first."""


class Accepted(NamedTuple):
    """A purchase stored (or given back for its key). `queued`: it waits behind another
    purchase of its plan, which wakes it; no charge needs sending for it now."""

    purchase_id: int
    status: str
    queued: bool = False


def _store(
    session: Session,
    actor: Actor,
    key: str,
    organization: Organization,
    method: str,
    lines: list[_Line],
    fingerprint: str,
    confirmed_amount: int,
    retry_of: int | None = None,
    emptied: Sequence[int] = (),
) -> tuple[int, bool]:
    """The new purchase's id, and whether it is queued behind another of its plans."""
    offers = [line.offer for line in lines]
    session.execute(LOCK_PLANS, {"plans": sorted({line.subscription_id for line in lines})})
    stored = session.execute(
        STORE,
        {
            "organization_id": actor.organization_id,
            "user_id": actor.user_id,
            "key": key,
            "status": PurchaseStatus.PENDING.value,
            "currency": offers[0].currency,
            "confirmed_amount": confirmed_amount,
            "amount_due": sum(offer.amount_due for offer in offers),
            "method": method,
            "new_card": method != organization.payment_method_id,
            "fingerprint": fingerprint,
            "retry_of": retry_of,
            "plans": [line.subscription_id for line in lines],
            "counts": [line.active_seats for line in lines],
            "to_buy": [offer.seats_to_buy for offer in offers],
            "subtotals": [offer.subtotal for offer in offers],
            "coupons": [offer.proration_coupon for offer in offers],
            "dues": [offer.amount_due for offer in offers],
            "renews": [offer.renews_at for offer in offers],
            "emptied": list(emptied),
        },
    ).one()
    return int(stored.id), bool(stored.queued)


def _check_same_request(
    session: Session, actor: Actor, purchase: Purchase, fingerprint: str, now: datetime | None
) -> None:
    """Like Stripe: a key names one request; another body under it is a client bug, not a retry.

    An empty cart is the normal retry (the first call emptied it); a cart that holds other lines
    means the caller is buying something else. NULL fingerprints predate the check: they match.
    """
    reused = _reused()
    if purchase.retry_of_id is not None:
        raise reused
    if purchase.request_fingerprint not in (None, fingerprint):
        raise reused
    in_cart = {  # lines the first call left behind (a plan due for renewal) do not count
        (line.item.subscription_id, line.item.active_seats)
        for line in priced_lines(session, actor.user_id, now)
        if line.problem is None
    }
    bought = {(item.subscription_id, item.active_seats) for item in purchase.items}
    if in_cart and in_cart != bought:
        raise reused


def checkout(
    uow: UnitOfWork,
    actor: Actor,
    idempotency_key: str | None,
    payment_method: str | None,
    now: datetime | None = None,
) -> Accepted:
    """Store the purchase and empty the cart in one transaction; the same key gives it back."""
    require_manager(actor.role)
    key = check_idempotency_key(idempotency_key)
    _check_card(payment_method)
    with uow:
        session = uow.session
        organization = _lock_buyer(session, actor)
        fingerprint = request_fingerprint(payment_method)
        existing = _existing(session, actor, key)
        if existing is not None:
            _check_same_request(session, actor, existing, fingerprint, now)
            return Accepted(existing.id, existing.status)
        method = _card_to_use(organization, payment_method)
        lines = priced_lines(session, actor.user_id, now, lock=True)
        buying = [line for line in lines if line.offer and line.offer.seats_to_buy > 0]
        blocked = [line for line in lines if line.problem is not None]
        for line in lines:
            if line.offer is not None and line.offer.seats_to_buy == 0:
                session.delete(line.item)  # bought meanwhile: nothing left to pay for
        if not buying:
            uow.commit()
            problem = blocked[0].problem if blocked else None
            if problem is not None:
                items = [line.item.id for line in blocked]
                raise Conflict(problem.message, problem.code, items=items)
            raise Conflict("your cart is empty: add seats before checking out", "cart_empty")
        chosen = [
            _Line(line.item.subscription_id, line.item.active_seats, line.offer)
            for line in buying
            if line.offer is not None
        ]
        purchase_id, queued = _store(
            session,
            actor,
            key,
            organization,
            method,
            chosen,
            fingerprint,
            confirmed_amount=sum(line.offer.amount_due for line in chosen),
            emptied=[line.item.id for line in buying],
        )
        uow.commit()
        return Accepted(purchase_id, PurchaseStatus.PENDING, queued)


def retry_purchase(
    uow: UnitOfWork,
    actor: Actor,
    purchase_id: int,
    idempotency_key: str | None,
    payment_method: str | None,
    now: datetime | None = None,
) -> Accepted:
    """Pay a failed purchase's lines again, with another card, in one step.

    A new purchase of the same plans and counts, priced again now (seats bought
    meanwhile are not bought twice) and never above what the buyer confirmed
    the first time; the cart is left alone. The same key gives it back.
    """
    with uow:
        session = uow.session
        failed = session.scalar(
            select(Purchase).where(
                Purchase.id == purchase_id, Purchase.organization_id == actor.organization_id
            )
        )
        if failed is None:
            raise NotFound("no such purchase", "not_found")
        require_manager(actor.role)
        if failed.user_id != actor.user_id:
            raise Forbidden("only the buyer who made this purchase may pay it again", "forbidden")
        key = check_idempotency_key(idempotency_key)
        _check_card(payment_method)
        organization = _lock_buyer(session, actor)
        fingerprint = request_fingerprint(payment_method, retry_of=failed.id)
        existing = _existing(session, actor, key)
        if existing is not None:
            if existing.retry_of_id != failed.id or existing.request_fingerprint != fingerprint:
                raise _reused()
            return Accepted(existing.id, existing.status)
        if failed.status != PurchaseStatus.FAILED:
            raise Conflict(
                f"purchase {failed.id} is {failed.status}: only a failed purchase is paid again",
                "not_failed",
            )
        again = session.scalar(
            select(Purchase.id)
            .where(Purchase.retry_of_id == failed.id, Purchase.status != PurchaseStatus.FAILED)
            .order_by(Purchase.id)
            .limit(1)
        )
        if again is not None:
            raise Conflict(
                f"purchase {failed.id} is already being paid again by purchase {again}",
                "already_retried",
                purchase_id=again,
            )
        method = _card_to_use(organization, payment_method)
        lines = []
        for item in failed.items:
            plan = subscription_for(session, actor, item.subscription_id, manage=True)
            offer = price(plan, item.active_seats, now)
            if offer.seats_to_buy > 0:
                lines.append(_Line(item.subscription_id, item.active_seats, offer))
        if not lines:
            raise Conflict(
                "these seats have been bought since: there is nothing left to pay",
                "nothing_to_buy",
            )
        total = sum(line.offer.amount_due for line in lines)
        if total > failed.confirmed_amount:
            raise Conflict(
                f"these seats now cost {plain_amount(total, failed.currency)}, more than the "
                f"{plain_amount(failed.confirmed_amount, failed.currency)} you confirmed: "
                "add them to your cart again to see the new price",
                "quote_expired",
            )
        purchase_id, queued = _store(
            session,
            actor,
            key,
            organization,
            method,
            lines,
            fingerprint,
            confirmed_amount=failed.confirmed_amount,
            retry_of=failed.id,
        )
        uow.commit()
        return Accepted(purchase_id, PurchaseStatus.PENDING, queued)
