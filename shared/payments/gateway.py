"""What the billing services need from a card processor, in domain terms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.domain.cards import Card
from shared.domain.ids import id_from_text


@dataclass(frozen=True)
class PaymentRequest:
    """One charge we ask for. `reference` names it in our books ("purchase-12"): with the
    amount it makes the idempotency key, and it goes with the payment as metadata."""

    reference: str
    amount: int
    currency: str
    customer_id: str
    payment_method_id: str
    metadata: dict[str, str]
    one_per_reference: bool = False
    """True: one intent per reference whatever the amount (a renewal's period); False: the
    amount is in the key, so a purchase priced again after it was parked gets a new
    intent, never Stripe's idempotency error."""

    @property
    def idempotency_key(self) -> str:
        if self.one_per_reference:
            return f"{self.reference}-intent"
        return f"{self.reference}-intent-{self.amount}"


@dataclass(frozen=True)
class Payment:
    """A payment attempt as the processor sees it (a Stripe PaymentIntent)."""

    id: str
    status: str
    amount: int
    currency: str
    customer_id: str | None = None
    payment_method_id: str | None = None
    client_secret: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def purchase_id(self) -> int | None:
        """The purchase this payment names (anyone can write metadata: check it is ours)."""
        return id_from_text(self.metadata.get("purchase_id"))


@dataclass(frozen=True)
class CardSetup:
    """A card being saved for later (a Stripe SetupIntent): the browser confirms it with
    Stripe.js using `client_secret` and gets back a PaymentMethod id."""

    id: str
    client_secret: str


class PaymentRefused(Exception):
    """The processor said no for good: a decline, an unknown card, an invalid amount."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class PaymentUnavailable(Exception):
    """The processor could not answer now (network, rate limit, outage, or the same
    idempotency key still in flight): try again later."""


class PaymentGateway(Protocol):
    def create_customer(self, organization_id: int, name: str) -> str: ...

    def attach_card(self, payment_method_id: str, customer_id: str) -> Card: ...

    def create_card_setup(self, customer_id: str, metadata: dict[str, str]) -> CardSetup:
        """Start saving a new card for off-session use (renewals) for this customer."""
        ...

    def create_payment(self, request: PaymentRequest) -> Payment: ...

    def confirm_payment(
        self, payment_id: str, *, off_session: bool = False, attempt: int = 1
    ) -> Payment:
        """`attempt` numbers the confirmations of one intent (a renewal tried again after a
        decline), each its own idempotent request; `off_session`: the customer is away."""
        ...

    def update_payment(
        self, payment_id: str, *, amount: int, payment_method_id: str, attempt: int
    ) -> Payment:
        """Change what an unpaid intent charges and with which card, before confirming it
        again."""
        ...

    def get_payment(self, payment_id: str) -> Payment: ...

    def cancel_payment(self, payment_id: str) -> Payment: ...

    def refund_payment(self, payment_id: str) -> str:
        """Give the whole payment back once, however often it is asked; return the refund id."""
        ...

    def set_default_card(self, customer_id: str, payment_method_id: str) -> None: ...

    def get_card(self, payment_method_id: str) -> Card: ...

    def default_card(self, customer_id: str) -> Card | None:
        """The customer's default for renewals, never a card detached from it."""
        ...

    def list_events(self, created_after: int) -> list[dict[str, Any]]: ...


FRIENDLY = {
    "card_declined": "Your card was declined. Try another card or contact your bank.",
    "expired_card": "Your card has expired. Try another card.",
    "incorrect_cvc": "The card's security code is incorrect.",
    "insufficient_funds": "Your card has insufficient funds. Try another card.",
    "processing_error": "The card could not be charged because of a processing error. Try again.",
    "resource_missing": "We could not find this card. Enter the card again.",
    "payment_method_unknown": "We could not find this card. Enter the card again.",
    "authentication_required": "Your bank needs you to confirm this payment.",
    "payment_canceled": "The payment was not confirmed with your bank in time, so it was "
    "canceled and nothing was charged. Check out again to retry.",
    "payment_intent_authentication_failure": "The card's 3-D Secure check failed. Try again.",
    "amount_too_small": "The amount is below the card processor's minimum charge.",
    "amount_too_large": "The amount is above the card processor's maximum charge.",
}


def friendly_message(code: str, fallback: str | None = None) -> str:
    """A message a person understands, whatever the processor's wording."""
    return FRIENDLY.get(code) or fallback or "The payment could not be completed."
