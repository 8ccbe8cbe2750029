"""A saved payment method as we keep it: its processor id, brand and last four digits."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.domain.errors import Invalid

PAYMENT_METHOD = re.compile(r"pm_[A-Za-z0-9_]{1,200}")


def check_payment_method(value: str) -> str:
    """A Stripe PaymentMethod id as Stripe.js gives it; never a card number."""
    if not PAYMENT_METHOD.fullmatch(value):
        raise Invalid(
            "payment_method must be a Stripe PaymentMethod id (pm_...)", "invalid_payment_method"
        )
    return value


@dataclass(frozen=True)
class Card:
    """Never the number: cards are entered in Stripe.js, and we keep only what a person
    needs to recognise theirs ("visa ending 4242")."""

    id: str
    brand: str | None
    last4: str | None
