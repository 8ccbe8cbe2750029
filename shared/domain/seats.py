"""Seat rules and purchase states, in plain Python."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.domain.errors import Forbidden, Invalid

MAX_SEATS = 100_000
MAX_UNIT_AMOUNT = 100_000_000_000


class Role(StrEnum):
    OWNER = "owner"
    BUYER = "buyer"
    MEMBER = "member"


MANAGING_ROLES = frozenset({Role.OWNER, Role.BUYER})


def require_manager(role: str) -> None:
    """Only owners and buyers may change counts, fill the cart, pay or pick the card."""
    if role not in MANAGING_ROLES:
        raise Forbidden("only an owner or a buyer of the organization may do this", "forbidden")


class PurchaseStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    REQUIRES_ACTION = "requires_action"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


TERMINAL = frozenset({PurchaseStatus.SUCCEEDED, PurchaseStatus.FAILED})


def seats_to_buy(paid_seats: int, target: int) -> int:
    """How many seats raising to `target` buys: none at or below the paid count."""
    return max(target - paid_seats, 0)


@dataclass(frozen=True)
class PurchaseNeeded:
    """Raising above the paid count: `seats_to_buy` seats must be paid for first."""

    target: int
    seats_to_buy: int


@dataclass(frozen=True)
class SeatCounts:
    paid_seats: int
    active_seats: int

    def __post_init__(self) -> None:
        if not 1 <= self.active_seats <= self.paid_seats:
            raise ValueError("1 <= active_seats <= paid_seats must hold")

    def seats_to_buy(self, target: int) -> int:
        return seats_to_buy(self.paid_seats, target)

    def change_to(self, target: int) -> SeatCounts | PurchaseNeeded:
        """The one place that decides: any count from 1 up to what is already paid is
        free and immediate; above it, the extra seats must be bought first."""
        check_seat_count(target)
        if target > self.paid_seats:
            return PurchaseNeeded(target, self.seats_to_buy(target))
        return SeatCounts(self.paid_seats, target)

    def after_purchase(self, target: int) -> SeatCounts:
        """A paid purchase sets both counts to its target at once."""
        if target <= self.paid_seats:
            raise ValueError("a purchase must raise the paid count")
        return SeatCounts(target, target)

    def renewed(self, charged_seats: int) -> SeatCounts:
        """At renewal the customer paid for the seats in use when charged: those are the
        new paid seats (and no more than them stay active, should a retry have charged
        fewer)."""
        if charged_seats < 1:
            raise ValueError("a renewal charges at least one seat")
        return SeatCounts(charged_seats, min(self.active_seats, charged_seats))


def check_seat_count(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid("active_seats must be a whole number", "invalid_seats")
    if not 1 <= value <= MAX_SEATS:
        raise Invalid(f"active_seats must be between 1 and {MAX_SEATS}", "invalid_seats")
