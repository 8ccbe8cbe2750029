"""Reading a plan, quoting extra seats and free seat changes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.domain.errors import Conflict
from shared.domain.money import Quote, RenewalPending, quote
from shared.domain.periods import today_in
from shared.domain.renewals import SubscriptionStatus
from shared.domain.seats import MANAGING_ROLES, PurchaseNeeded, SeatCounts, check_seat_count
from shared.services.access import Actor, subscription_for
from shared.services.views import ProfileView, RenewalView, SubscriptionView, to_json
from shared.store.db import UnitOfWork
from shared.store.models import Organization, Renewal, SeatChange, Subscription, User

PAST_DUE = (
    "This plan's renewal could not be paid, so seats cannot be bought until it is: save a "
    "card to renew it. Lowering seats, and raising them back up to the paid count, still work."
)
SUSPENDED = (
    "This plan is suspended because its renewal could not be paid: save a card to renew it. "
    "Until then its seats can be read but not changed."
)


def refuse_unless_active(subscription: Subscription, *, buying: bool) -> None:
    """A past-due plan refuses purchases; a suspended one refuses every change."""
    if subscription.status == SubscriptionStatus.SUSPENDED:
        raise Conflict(SUSPENDED, "suspended")
    if buying and subscription.status == SubscriptionStatus.PAST_DUE:
        raise Conflict(PAST_DUE, "past_due")


def price(subscription: Subscription, target: int, now: datetime | None = None) -> Quote:
    """Quote against the plan as it is now, on the organization's own calendar."""
    refuse_unless_active(subscription, buying=True)
    try:
        return quote(
            target_seats=target,
            paid_seats=subscription.paid_seats,
            unit_amount=subscription.unit_amount,
            currency=subscription.currency,
            current_period_start=subscription.current_period_start,
            renews_at=subscription.renews_at,
            today=today_in(subscription.organization.timezone, now),
        )
    except RenewalPending as refusal:
        raise Conflict(
            f"this plan is due for renewal ({refusal}); seats can be bought after it renews",
            "renewal_pending",
        ) from refusal


def record_change(
    session: Session,
    subscription: Subscription,
    after: SeatCounts,
    reason: str,
    *,
    actor_user_id: int | None = None,
    purchase_id: int | None = None,
) -> None:
    """Change the counts and write the audit row in the same transaction."""
    session.add(
        SeatChange(
            subscription_id=subscription.id,
            actor_user_id=actor_user_id,
            purchase_id=purchase_id,
            reason=reason,
            paid_before=subscription.paid_seats,
            paid_after=after.paid_seats,
            active_before=subscription.active_seats,
            active_after=after.active_seats,
        )
    )
    subscription.paid_seats = after.paid_seats
    subscription.active_seats = after.active_seats


def get_subscription(uow: UnitOfWork, actor: Actor, subscription_id: int) -> SubscriptionView:
    """The plan; when it is not active, its renewal's state (the client secret of a payment
    waiting for the bank only to those who may pay)."""
    with uow:
        subscription = subscription_for(uow.session, actor, subscription_id, manage=False)
        return _view(uow.session, subscription, actor)


def billing_timezone(uow: UnitOfWork, actor: Actor) -> str:
    """The organization's time zone: the day a renewal is tried again is a day there."""
    with uow:
        return uow.session.get_one(Organization, actor.organization_id).timezone


def _view(session: Session, subscription: Subscription, actor: Actor) -> SubscriptionView:
    renewal = None
    if subscription.status != SubscriptionStatus.ACTIVE:
        current = session.scalar(
            select(Renewal).where(
                Renewal.subscription_id == subscription.id,
                Renewal.period_start == subscription.renews_at,
            )
        )
        if current is not None:
            renewal = RenewalView.of(current, show_secret=actor.role in MANAGING_ROLES)
    return SubscriptionView.of(subscription, subscription.organization, renewal)


def get_profile(uow: UnitOfWork, actor: Actor) -> ProfileView:
    """Who is signed in and every plan of their organization, by product then id."""
    with uow:
        user = uow.session.get_one(User, actor.user_id)
        plans = uow.session.scalars(
            select(Subscription)
            .where(Subscription.organization_id == actor.organization_id)
            .order_by(Subscription.product, Subscription.id)
        )
        return ProfileView(
            user_id=user.id,
            email=user.email,
            role=user.role,
            organization=user.organization.name,
            subscriptions=[SubscriptionView.of(plan, user.organization) for plan in plans],
        )


def quote_seats(
    uow: UnitOfWork, actor: Actor, subscription_id: int, target: int, now: datetime | None = None
) -> Quote:
    check_seat_count(target)
    with uow:
        subscription = subscription_for(uow.session, actor, subscription_id, manage=False)
        return price(subscription, target, now)


def change_seats(
    uow: UnitOfWork, actor: Actor, subscription_id: int, target: int, now: datetime | None = None
) -> SubscriptionView:
    """Free changes apply at once; above the paid count the caller gets the quote to confirm."""
    check_seat_count(target)
    with uow:
        subscription = subscription_for(uow.session, actor, subscription_id, manage=True, lock=True)
        refuse_unless_active(subscription, buying=False)
        counts = SeatCounts(subscription.paid_seats, subscription.active_seats)
        decision = counts.change_to(target)
        if isinstance(decision, PurchaseNeeded):
            offer = price(subscription, target, now)
            raise Conflict(
                f"{target} seats is more than the {counts.paid_seats} already paid: "
                f"confirm buying {offer.seats_to_buy} more",
                "purchase_required",
                quote=to_json(offer),
            )
        if decision != counts:
            record_change(
                uow.session, subscription, decision, "free change", actor_user_id=actor.user_id
            )
        view = _view(uow.session, subscription, actor)
        uow.commit()
        return view
