"""A saved payment method as we keep it: its processor id, brand and last four digits."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Card:
    """Never the number: cards are entered in Stripe.js, and we keep only what a person
    needs to recognise theirs ("visa ending 4242")."""

    id: str
    brand: str | None
    last4: str | None
