"""Turning a cart into a purchase: stored first, charged later by a worker."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.domain.cards import check_payment_method
from shared.domain.errors import Conflict, Invalid
from shared.domain.seats import PurchaseStatus, require_manager
from shared.services.access import Actor, organization_of
from shared.services.cart import priced_lines
from shared.store.db import UnitOfWork
from shared.store.models import Purchase, PurchaseItem, User

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


def _existing(session: Session, actor: Actor, key: str) -> Purchase | None:
    return session.scalar(
        select(Purchase).where(Purchase.user_id == actor.user_id, Purchase.idempotency_key == key)
    )


def request_fingerprint(payment_method: str | None) -> str:
    """What of the body decides the purchase (the card; null for the saved one), canonically."""
    canonical = json.dumps(
        {"payment_method": payment_method}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_same_request(
    session: Session, actor: Actor, purchase: Purchase, fingerprint: str, now: datetime | None
) -> None:
    """Like Stripe: a key names one request; another body under it is a client bug, not a retry.

    An empty cart is the normal retry (the first call emptied it); a cart that holds other lines
    means the caller is buying something else. NULL fingerprints predate the check: they match.
    """
    reused = Conflict(
        "this Idempotency-Key was used for another request: use a new key for a new checkout",
        "idempotency_key_reused",
    )
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
) -> tuple[int, str]:
    """Store the purchase and empty the cart in one transaction; the same key gives it back."""
    require_manager(actor.role)
    key = check_idempotency_key(idempotency_key)
    if payment_method is not None:
        check_payment_method(payment_method)
    with uow:
        session = uow.session
        session.scalars(
            select(User).where(User.id == actor.user_id).with_for_update(key_share=True)
        ).one()
        fingerprint = request_fingerprint(payment_method)
        existing = _existing(session, actor, key)
        if existing is not None:
            _check_same_request(session, actor, existing, fingerprint, now)
            return existing.id, existing.status
        organization = organization_of(session, actor)
        method = payment_method or organization.payment_method_id
        if method is None:
            raise Conflict(
                "there is no saved card: give a payment_method", "payment_method_required"
            )
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
        purchase = Purchase(
            organization_id=actor.organization_id,
            user_id=actor.user_id,
            idempotency_key=key,
            status=PurchaseStatus.PENDING,
            currency=buying[0].item.subscription.currency,
            confirmed_amount=sum(line.offer.amount_due for line in buying if line.offer),
            amount_due=sum(line.offer.amount_due for line in buying if line.offer),
            payment_method_id=method,
            new_card=method != organization.payment_method_id,
            attempts=0,
            request_fingerprint=fingerprint,
        )
        session.add(purchase)
        session.flush()
        for line in buying:
            assert line.offer is not None
            session.add(
                PurchaseItem(
                    purchase_id=purchase.id,
                    subscription_id=line.item.subscription_id,
                    active_seats=line.item.active_seats,
                    seats_to_buy=line.offer.seats_to_buy,
                    subtotal=line.offer.subtotal,
                    proration_coupon=line.offer.proration_coupon,
                    amount_due=line.offer.amount_due,
                    renews_at=line.offer.renews_at,
                )
            )
            session.delete(line.item)
        uow.commit()
        return purchase.id, purchase.status
