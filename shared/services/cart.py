"""Each buyer's cart: one line per plan, priced with its prorated coupon."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, Integer, bindparam, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, joinedload

from shared.domain.errors import Conflict, NotFound
from shared.domain.money import Quote, plain_amount
from shared.domain.seats import check_seat_count, require_manager
from shared.services.access import Actor, organization_of, subscription_for
from shared.services.seats import price
from shared.services.views import CartLineView, CartView, to_json
from shared.store.db import UnitOfWork
from shared.store.models import CART_ITEMS, CartItem, Subscription


@dataclass(frozen=True)
class Line:
    """A cart line priced today, or the reason it cannot be bought today."""

    item: CartItem
    offer: Quote | None
    problem: Conflict | None = None


LINES = (
    select(CartItem)
    .where(CartItem.user_id == bindparam("user_id"))
    .order_by(CartItem.id)
    .options(
        joinedload(CartItem.subscription, innerjoin=True).joinedload(
            Subscription.organization, innerjoin=True
        )
    )
)
"""A buyer's lines with their plans and organizations, built once (every add and checkout)."""
LOCKED_LINES = LINES.with_for_update(key_share=True, of=CartItem)
_OTHER_CURRENCY = (
    select(CartItem.id)
    .join(Subscription, Subscription.id == CartItem.subscription_id)
    .where(CartItem.user_id == bindparam("user_id"), Subscription.currency != bindparam("currency"))
)
_NEW_LINE = select(
    bindparam("user_id", type_=BigInteger),
    bindparam("subscription_id", type_=BigInteger),
    bindparam("active_seats", type_=Integer),
).where(~_OTHER_CURRENCY.exists())
_UPSERT = insert(CART_ITEMS).from_select(["user_id", "subscription_id", "active_seats"], _NEW_LINE)
UPSERT_LINE = _UPSERT.on_conflict_do_update(
    index_elements=["user_id", "subscription_id"],
    set_={"active_seats": _UPSERT.excluded.active_seats},
).returning(CART_ITEMS.c.id)
"""The line added or its seat count changed, in one statement, unless the buyer's cart holds
a plan of another currency (then no row comes back). Two first adds at once both land on
the same line (no unique violation)."""


def priced_lines(
    session: Session, user_id: int, now: datetime | None, lock: bool = False
) -> list[Line]:
    """Lines are priced when read, so the cart always shows today's prorated amount.

    Each line is priced on its own: a plan due for renewal blocks its own line,
    never the rest of the cart.
    """
    lines = []
    for item in session.scalars(LOCKED_LINES if lock else LINES, {"user_id": user_id}):
        try:
            lines.append(Line(item, price(item.subscription, item.active_seats, now)))
        except Conflict as problem:
            lines.append(Line(item, None, problem))
    return lines


def cart_view(session: Session, actor: Actor, now: datetime | None) -> CartView:
    lines = priced_lines(session, actor.user_id, now)
    currency = (
        lines[0].item.subscription.currency if lines else organization_of(session, actor).currency
    )
    return CartView(
        items=[
            CartLineView.of(
                line.item,
                line.offer,
                line.problem.code if line.problem else None,
                line.problem.message if line.problem else None,
            )
            for line in lines
        ],
        total_due=sum(line.offer.amount_due for line in lines if line.offer),
        currency=currency,
    )


def get_cart(uow: UnitOfWork, actor: Actor, now: datetime | None = None) -> CartView:
    with uow:
        return cart_view(uow.session, actor, now)


def add_item(
    uow: UnitOfWork,
    actor: Actor,
    subscription_id: int,
    target: int,
    confirmed: bool,
    now: datetime | None = None,
) -> CartView:
    """Seats above the paid count go in the cart only once the buyer said yes to the quote.

    Each statement stands alone (no BEGIN/COMMIT round trips): the upsert is the only
    write, and the cart is read after it, so the answer holds whatever another tab of the
    same buyer committed meanwhile (a checkout that took the lines, another add).
    """
    check_seat_count(target)
    with uow.single() as alone:
        subscription = subscription_for(alone.session, actor, subscription_id, manage=True)
        offer = price(subscription, target, now)
        if offer.seats_to_buy == 0:
            raise Conflict(
                f"{target} seats are already paid for: change the seat count directly, for free",
                "nothing_to_buy",
            )
        if not confirmed:
            raise Conflict(
                f"buying {offer.seats_to_buy} more seats costs "
                f"{plain_amount(offer.amount_due, offer.currency)} after the prorated coupon "
                f"({offer.remaining_days} days left of {offer.period_days}); "
                'send "confirm": true to add them to the cart',
                "confirmation_required",
                quote=to_json(offer),
            )
        line = {
            "user_id": actor.user_id,
            "subscription_id": subscription_id,
            "active_seats": target,
            "currency": subscription.currency,
        }
        if alone.session.scalar(UPSERT_LINE, line) is None:
            raise Conflict("a cart holds plans of one currency only", "currency_mismatch")
        alone.session.expire_all()  # the plan read above is priced again as it is now
        return cart_view(alone.session, actor, now)


def remove_item(uow: UnitOfWork, actor: Actor, item_id: int) -> None:
    """Tenant before role, as everywhere: another's line or none at all is a 404, not a 403."""
    with uow:
        item = uow.session.scalar(
            select(CartItem).where(CartItem.id == item_id, CartItem.user_id == actor.user_id)
        )
        if item is None:
            raise NotFound("no such item in your cart", "not_found")
        require_manager(actor.role)
        uow.session.delete(item)
        uow.commit()
