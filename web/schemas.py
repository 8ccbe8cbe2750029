"""What the JSON API answers, as pydantic models: the OpenAPI description (web/openapi.py) is
generated from these and from the request bodies (web/bodies.py), never typed by hand.

They describe the JSON that `shared.services.views.to_json` makes of the read models; the
views do not build their answers through them. tests/integration/test_openapi_fuzz.py checks
every answer against them. A field the read model leaves out while it is None
(`views.OPTIONAL`) is `omitted()` here: not required, and never null when present.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from shared.domain.renewals import SubscriptionStatus
from shared.domain.seats import PurchaseStatus
from shared.services.checkout import IDEMPOTENCY_KEY


def omitted() -> Any:
    """A field left out of the answer while it has no value (never sent as null)."""
    return Field(default=None, json_schema_extra=_no_default)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Card(Answer):
    """A saved card: never its number."""

    id: str
    brand: str | None
    last4: str | None


class Renewal(Answer):
    """Why a plan is past due or suspended, and what comes next."""

    attempts: int
    next_attempt_at: datetime | None
    failure_code: str | None
    failure_message: str | None
    client_secret: str = omitted()


class Subscription(Answer):
    id: int
    product: str
    unit_amount: int = Field(description="per seat and period, in the currency's minor unit")
    currency: str
    interval: Literal["month", "year"]
    current_period_start: date
    renews_at: date
    paid_seats: int
    active_seats: int
    payment_method: Card | None
    status: SubscriptionStatus
    renewal: Renewal = omitted()


class Quote(Answer):
    """The money rule (contract section 2), one line."""

    seats_to_buy: int
    unit_amount: int
    subtotal: int
    proration_coupon: int
    amount_due: int
    currency: str
    remaining_days: int
    period_days: int
    renews_at: date


class CartLine(Answer):
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
    error: str = omitted()
    message: str = omitted()


class Cart(Answer):
    items: list[CartLine]
    total_due: int
    currency: str


class PurchaseLine(Answer):
    subscription_id: int
    product: str
    active_seats: int
    seats_to_buy: int
    subtotal: int
    proration_coupon: int
    amount_due: int


class Waiting(Answer):
    """Why a purchase is still `pending`, for a person."""

    code: str
    message: str


class Purchase(Answer):
    id: int
    status: PurchaseStatus
    amount_due: int
    confirmed_amount: int
    currency: str
    items: list[PurchaseLine]
    created_at: datetime
    failure_code: str = omitted()
    failure_message: str = omitted()
    client_secret: str = omitted()
    waiting: Waiting = omitted()
    retry_of: int = omitted()


class PurchaseAccepted(Answer):
    """A checkout or a retry stored and queued; follow it at `Location`."""

    purchase_id: int
    status: PurchaseStatus
    retry_of: int = omitted()


class SavedCard(Answer):
    payment_method: Card
    renewals_retried: int


class Error(Answer):
    """Every refusal: `error` for programs, `message` for people, and what the code needs."""

    error: str
    message: str
    quote: Quote = omitted()
    items: list[int] = omitted()
    purchase_id: int = omitted()


class Document(RootModel[dict[str, Any]]):
    """An OpenAPI 3.1 document."""


class IdempotencyKey(BaseModel):
    """A checkout or a retry names itself: the same key and body give the same purchase."""

    idempotency_key: str = Field(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY.pattern,
        description="1 to 255 visible ASCII characters, new for each new checkout",
    )
