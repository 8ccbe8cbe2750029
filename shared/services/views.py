"""What the outside sees: small typed read models, and the one place they become JSON.

Services return these (or domain values such as a Quote); the web API and the
command line both print them with `to_json`, so a field is named and shaped
once. A field marked `OPTIONAL` is left out while it is None (the API's
`failure_code`, `client_secret`, `waiting`...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from typing import Any

from shared.domain.cards import Card
from shared.domain.money import Quote
from shared.store.models import (
    CartItem,
    Organization,
    Purchase,
    PurchaseItem,
    Renewal,
    Subscription,
)

OPTIONAL = {"omit_if_none": True}
"""Field metadata: leave the field out of the JSON while it is None."""


def to_json(value: Any) -> Any:
    """Read models, domain values, dates and enums as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            item.name: to_json(getattr(value, item.name))
            for item in dataclasses.fields(value)
            if not (item.metadata.get("omit_if_none") and getattr(value, item.name) is None)
        }
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    return value


def take(cls: type[Any], source: object, **given: Any) -> Any:
    """A read model whose fields not `given` are read off `source` by the same names."""
    names = [item.name for item in dataclasses.fields(cls) if item.name not in given]
    return cls(**{name: getattr(source, name) for name in names}, **given)


@dataclass(frozen=True)
class RenewalView:
    """Why a plan is past due or suspended, and what comes next."""

    attempts: int
    next_attempt_at: datetime | None
    failure_code: str | None
    failure_message: str | None
    client_secret: str | None = field(default=None, metadata=OPTIONAL)

    @classmethod
    def of(cls, renewal: Renewal, show_secret: bool) -> RenewalView:
        view: RenewalView = take(
            cls, renewal, client_secret=renewal.client_secret if show_secret else None
        )
        return view


@dataclass(frozen=True)
class SubscriptionView:
    id: int
    product: str
    unit_amount: int
    currency: str
    interval: str
    current_period_start: date
    renews_at: date
    paid_seats: int
    active_seats: int
    payment_method: Card | None
    status: str
    renewal: RenewalView | None = field(default=None, metadata=OPTIONAL)

    @classmethod
    def of(
        cls,
        subscription: Subscription,
        organization: Organization,
        renewal: RenewalView | None = None,
    ) -> SubscriptionView:
        view: SubscriptionView = take(
            cls, subscription, payment_method=organization.saved_card, renewal=renewal
        )
        return view


@dataclass(frozen=True)
class CartLineView:
    """A line priced today; a line that cannot be bought today says why (`error`)."""

    id: int
    subscription_id: int
    product: str
    active_seats: int
    seats_to_buy: int
    unit_amount: int
    subtotal: int
    proration_coupon: int
    amount_due: int
    remaining_days: int
    period_days: int
    error: str | None = field(default=None, metadata=OPTIONAL)
    message: str | None = field(default=None, metadata=OPTIONAL)

    @classmethod
    def of(
        cls, item: CartItem, offer: Quote | None, error: str | None, message: str | None
    ) -> CartLineView:
        priced = ("seats_to_buy", "subtotal", "proration_coupon", "amount_due")
        days = ("remaining_days", "period_days")
        amounts = {name: getattr(offer, name) if offer else 0 for name in priced + days}
        view: CartLineView = take(
            cls,
            item,
            product=item.subscription.product,
            unit_amount=item.subscription.unit_amount,
            error=error,
            message=message,
            **amounts,
        )
        return view


@dataclass(frozen=True)
class CartView:
    items: list[CartLineView]
    total_due: int
    currency: str


@dataclass(frozen=True)
class PurchaseLineView:
    subscription_id: int
    product: str
    active_seats: int
    seats_to_buy: int
    subtotal: int
    proration_coupon: int
    amount_due: int

    @classmethod
    def of(cls, item: PurchaseItem) -> PurchaseLineView:
        view: PurchaseLineView = take(cls, item, product=item.subscription.product)
        return view


@dataclass(frozen=True)
class Waiting:
    """Why a purchase is still `pending`, for a person."""

    code: str
    message: str


@dataclass(frozen=True)
class PurchaseView:
    id: int
    status: str
    amount_due: int
    confirmed_amount: int
    currency: str
    items: list[PurchaseLineView]
    created_at: datetime
    failure_code: str | None = field(default=None, metadata=OPTIONAL)
    failure_message: str | None = field(default=None, metadata=OPTIONAL)
    client_secret: str | None = field(default=None, metadata=OPTIONAL)
    waiting: Waiting | None = field(default=None, metadata=OPTIONAL)
    retry_of: int | None = field(default=None, metadata=OPTIONAL)
    """The failed purchase whose lines this one pays again."""

    @classmethod
    def of(cls, purchase: Purchase, show_secret: bool, waiting: Waiting | None) -> PurchaseView:
        view: PurchaseView = take(
            cls,
            purchase,
            items=[PurchaseLineView.of(item) for item in purchase.items],
            failure_message=purchase.failure_message if purchase.failure_code else None,
            client_secret=purchase.client_secret if show_secret else None,
            waiting=waiting,
            retry_of=purchase.retry_of_id,
        )
        return view


@dataclass(frozen=True)
class CardSetupView:
    """What the browser needs to confirm a new card with Stripe.js."""

    client_secret: str


@dataclass(frozen=True)
class ProfileView:
    """Who is signed in, and the organization's plans (the Profile page)."""

    user_id: int
    email: str
    role: str
    organization: str
    subscriptions: list[SubscriptionView]
