"""Who is asking, and what they may see: tenant first (404), then role (403)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, joinedload

from shared.domain.errors import NotFound
from shared.domain.seats import require_manager
from shared.domain.tokens import hash_token
from shared.store.models import Organization, Subscription, User


@dataclass(frozen=True)
class Actor:
    user_id: int
    organization_id: int
    role: str


def actor_for_token(session: Session, token: str) -> Actor | None:
    user = session.scalar(select(User).where(User.token_hash == hash_token(token)))
    if user is None:
        return None
    return Actor(user.id, user.organization_id, user.role)


def actor_for_user(session: Session, user_id: int) -> Actor | None:
    """The actor a page session names (the user may have been removed since)."""
    user = session.get(User, user_id)
    if user is None:
        return None
    return Actor(user.id, user.organization_id, user.role)


TENANTS_PLAN = (
    select(Subscription)
    .where(
        Subscription.id == bindparam("subscription_id"),
        Subscription.organization_id == bindparam("organization_id"),
    )
    .options(joinedload(Subscription.organization, innerjoin=True))  # its time zone prices
)
"""Built once, like every statement a purchase runs: building costs more than sending."""
TENANTS_LOCKED_PLAN = TENANTS_PLAN.with_for_update(key_share=True, of=Subscription)


def subscription_for(
    session: Session, actor: Actor, subscription_id: int, *, manage: bool, lock: bool = False
) -> Subscription:
    """Another tenant's plan is indistinguishable from one that does not exist."""
    subscription = session.scalar(
        TENANTS_LOCKED_PLAN if lock else TENANTS_PLAN,
        {"subscription_id": subscription_id, "organization_id": actor.organization_id},
    )
    if subscription is None:
        raise NotFound("no such subscription", "not_found")
    if manage:
        require_manager(actor.role)
    return subscription


def organization_of(session: Session, actor: Actor) -> Organization:
    return session.get_one(Organization, actor.organization_id)
