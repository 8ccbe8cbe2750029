"""The money rule (README "The money rule"): exact proration in integer minor units."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from fractions import Fraction

from shared.domain.seats import seats_to_buy

ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


def minor_digits(currency: str) -> int:
    """How many digits of an amount are below the unit (2 for CAD: 50000 = 500.00)."""
    code = currency.lower()
    return 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2


def plain_amount(amount: int, currency: str) -> str:
    """A locale-neutral rendering for logs and operator messages: `576.00 CAD`."""
    digits = minor_digits(currency)
    sign = "-" if amount < 0 else ""
    whole, part = divmod(abs(amount), 10**digits)
    text = f"{whole:,}" + (f".{part:0{digits}d}" if digits else "")
    return f"{sign}{text} {currency.upper()}"


class RenewalPending(Exception):
    """The period has ended and the renewal has not been processed yet."""


def round_half_up(value: Fraction) -> int:
    """Round a non-negative exact fraction to the nearest integer, halves up."""
    if value < 0:
        raise ValueError("amounts are never negative")
    return int((value + Fraction(1, 2)).__floor__())


def prorate(subtotal: int, remaining_days: int, period_days: int) -> int:
    """What the customer pays for the days left: one rounding, on the exact fraction."""
    if period_days <= 0:
        raise ValueError("period_days must be positive")
    if not 0 <= remaining_days <= period_days:
        raise ValueError("remaining_days must be within the period")
    if subtotal < 0:
        raise ValueError("subtotal must not be negative")
    return round_half_up(Fraction(subtotal * remaining_days, period_days))


@dataclass(frozen=True)
class Quote:
    seats_to_buy: int
    unit_amount: int
    subtotal: int
    proration_coupon: int
    amount_due: int
    currency: str
    remaining_days: int
    period_days: int
    renews_at: date


def quote(
    *,
    target_seats: int,
    paid_seats: int,
    unit_amount: int,
    currency: str,
    current_period_start: date,
    renews_at: date,
    today: date,
) -> Quote:
    """Price raising a plan to `target_seats` on `today`.

    A target at or below the paid count costs nothing. Before the period starts
    the whole period remains, so the full price is due.
    """
    if today >= renews_at:
        raise RenewalPending(f"the period ended on {renews_at.isoformat()}")
    period_days = (renews_at - current_period_start).days
    remaining_days = min((renews_at - today).days, period_days)
    buying = seats_to_buy(paid_seats, target_seats)
    subtotal = buying * unit_amount
    amount_due = prorate(subtotal, remaining_days, period_days)
    return Quote(
        seats_to_buy=buying,
        unit_amount=unit_amount,
        subtotal=subtotal,
        proration_coupon=subtotal - amount_due,
        amount_due=amount_due,
        currency=currency,
        remaining_days=remaining_days,
        period_days=period_days,
        renews_at=renews_at,
    )
