"""Renewal rules: a plan's standing, and when a failed renewal is tried again."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from enum import StrEnum

from shared.domain.periods import start_of_day


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    PAST_DUE = "past_due"
    SUSPENDED = "suspended"


class RenewalStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    REQUIRES_ACTION = "requires_action"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def renewal_amount(active_seats: int, unit_amount: int) -> int:
    """At renewal the plan is charged for the seats in use, in full (no proration)."""
    return active_seats * unit_amount


def next_attempt(
    period_start: date, dunning_days: tuple[int, ...], tz_name: str, now: datetime
) -> datetime | None:
    """The next scheduled retry after `now`, or None when the schedule is used up (the plan
    is then suspended). The schedule is on the calendar (1, 3, 5, 7 days after the renewal
    date, at the start of the day in the billing time zone), so a retry asked for by the
    customer (a new card) never shortens it."""
    for days in sorted(dunning_days):
        moment = start_of_day(period_start + timedelta(days=days), tz_name)
        if moment > now:
            return moment
    return None
