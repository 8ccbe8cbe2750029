"""Reading a purchase as its buyer follows it: status, amounts, and why it waits."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.domain.errors import NotFound
from shared.domain.seats import PurchaseStatus
from shared.services.access import Actor
from shared.services.charging import next_in_line
from shared.services.views import PurchaseView, Waiting
from shared.store.db import UnitOfWork
from shared.store.models import Purchase, Subscription

WAITING = {
    "parked": "Charging this purchase is paused after repeated errors reaching the card "
    "processor. Our team has been told and will retry it; nothing was charged yet.",
    "behind_authentication": "Another purchase of the same plan is waiting for its buyer to "
    "confirm the payment with their bank. Yours is priced and charged right after it, for the "
    "seats still to buy (never more than you confirmed).",
    "behind_parked": "Another purchase of the same plan is held up by errors reaching the card "
    "processor, and our team has been told. Yours is priced and charged right after it.",
    "plan_busy": "Another purchase of the same plan is being charged. Yours is priced and "
    "charged right after it, for the seats still to buy (never more than you confirmed).",
}


def _waiting(session: Session, purchase: Purchase) -> Waiting | None:
    """Why a purchase is still `pending`, in words a buyer understands."""
    if purchase.status != PurchaseStatus.PENDING:
        return None
    if purchase.attention:
        code = "parked"
    else:
        plan_ids = [item.subscription_id for item in purchase.items]
        holders = list(
            session.scalars(
                select(Purchase)
                .join(Subscription, Subscription.charging_purchase_id == Purchase.id)
                .where(Subscription.id.in_(plan_ids), Purchase.id != purchase.id)
            )
        )
        ahead = next_in_line(session, plan_ids, before=purchase.id)
        if any(h.status == PurchaseStatus.REQUIRES_ACTION for h in holders):
            code = "behind_authentication"
        elif any(h.attention for h in holders):
            code = "behind_parked"
        elif holders or ahead:
            code = "plan_busy"
        else:
            return None
    return Waiting(code, WAITING[code])


def get_purchase(uow: UnitOfWork, actor: Actor, purchase_id: int) -> PurchaseView:
    with uow:
        purchase = uow.session.scalar(
            select(Purchase).where(
                Purchase.id == purchase_id, Purchase.organization_id == actor.organization_id
            )
        )
        if purchase is None:
            raise NotFound("no such purchase", "not_found")
        return PurchaseView.of(
            purchase,
            show_secret=actor.user_id == purchase.user_id,
            waiting=_waiting(uow.session, purchase),
        )


def bought_by(uow: UnitOfWork, actor: Actor, purchase_id: int) -> int:
    """The user who made the purchase (only they may pay it again after a failure)."""
    with uow:
        buyer = uow.session.scalar(
            select(Purchase.user_id).where(
                Purchase.id == purchase_id, Purchase.organization_id == actor.organization_id
            )
        )
        if buyer is None:
            raise NotFound("no such purchase", "not_found")
        return buyer
