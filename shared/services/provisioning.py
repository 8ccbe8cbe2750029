"""Setting up organizations, users and plans (what the `seats` command line does)."""

from __future__ import annotations

import re
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from shared.domain.errors import Conflict, Invalid, NotFound
from shared.domain.periods import INTERVALS, is_timezone, next_renewal
from shared.domain.seats import MAX_SEATS, MAX_UNIT_AMOUNT, Role, SeatCounts
from shared.domain.tokens import hash_token, new_token
from shared.services.seats import record_change
from shared.store.db import UnitOfWork
from shared.store.models import Organization, Subscription, User

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
CURRENCY = re.compile(r"^[a-z]{3}$")


def create_organization(uow: UnitOfWork, name: str, currency: str, timezone: str) -> int:
    name = name.strip()
    if not name or len(name) > 200:
        raise Invalid("the name must have 1 to 200 characters", "invalid_name")
    currency = currency.lower()
    if not CURRENCY.match(currency):
        raise Invalid(
            "the currency must be a three-letter ISO code such as cad", "invalid_currency"
        )
    if not is_timezone(timezone):
        raise Invalid(f"unknown time zone {timezone!r}", "invalid_timezone")
    with uow:
        organization = Organization(name=name, currency=currency, timezone=timezone)
        uow.session.add(organization)
        uow.session.flush()
        uow.commit()
        return organization.id


def create_user(uow: UnitOfWork, organization_id: int, email: str, role: str) -> tuple[int, str]:
    """Return the user id and the API token; the token is not kept and cannot be shown again."""
    email = email.strip()
    if not EMAIL.match(email) or len(email) > 320:
        raise Invalid(f"{email!r} is not an email address", "invalid_email")
    if role not in set(Role):
        raise Invalid("the role must be owner, buyer or member", "invalid_role")
    token = new_token()
    with uow:
        if uow.session.get(Organization, organization_id) is None:
            raise NotFound(f"no organization {organization_id}", "not_found")
        taken = uow.session.scalar(
            select(User.id).where(
                User.organization_id == organization_id,
                func.lower(User.email) == email.lower(),
            )
        )
        if taken is not None:
            raise Conflict(f"{email} is already a user of this organization", "email_taken")
        user = User(
            organization_id=organization_id, email=email, role=role, token_hash=hash_token(token)
        )
        uow.session.add(user)
        try:
            uow.session.flush()
        except IntegrityError as error:
            raise Conflict(
                f"{email} is already a user of this organization", "email_taken"
            ) from error
        uow.commit()
        return user.id, token


def create_subscription(
    uow: UnitOfWork,
    organization_id: int,
    product: str,
    unit_amount: int,
    interval: str,
    seats: int,
    period_start: date,
    renews_at: date | None = None,
) -> int:
    product = product.strip()
    if not product or len(product) > 200:
        raise Invalid("the product must have 1 to 200 characters", "invalid_product")
    if not 1 <= unit_amount <= MAX_UNIT_AMOUNT:
        raise Invalid(
            f"the unit amount is in minor units, from 1 to {MAX_UNIT_AMOUNT}", "invalid_amount"
        )
    if interval not in INTERVALS:
        raise Invalid("the interval must be month or year", "invalid_interval")
    if not 1 <= seats <= MAX_SEATS:
        raise Invalid(f"seats must be between 1 and {MAX_SEATS}", "invalid_seats")
    anchor_day = renews_at.day if renews_at is not None else period_start.day
    if renews_at is None:
        try:
            renews_at = next_renewal(period_start, interval)
        except ValueError:  # one interval after late 9999 is past the last date
            raise Invalid(
                f"one {interval} after {period_start} is past the last supported date: "
                "give the renewal date",
                "invalid_period",
            ) from None
    if renews_at <= period_start:
        raise Invalid("the renewal date must come after the period start", "invalid_period")
    with uow:
        organization = uow.session.get(Organization, organization_id)
        if organization is None:
            raise NotFound(f"no organization {organization_id}", "not_found")
        subscription = Subscription(
            organization_id=organization_id,
            product=product,
            unit_amount=unit_amount,
            currency=organization.currency,
            interval=interval,
            current_period_start=period_start,
            renews_at=renews_at,
            paid_seats=seats,
            active_seats=seats,
            anchor_day=anchor_day,
        )
        uow.session.add(subscription)
        uow.session.flush()
        record_change(uow.session, subscription, SeatCounts(seats, seats), "subscription created")
        uow.commit()
        return subscription.id
