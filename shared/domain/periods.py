"""Calendar arithmetic for billing periods, kept free of any library quirks."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

INTERVALS = ("month", "year")


def add_months(start: date, months: int) -> date:
    """Add months, clamping to the month's last day (Jan 31 + 1 month = Feb 28/29)."""
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return date(year, month, day)


def next_renewal(period_start: date, interval: str, anchor_day: int | None = None) -> date:
    """One interval after `period_start`, on the plan's anchor day when the month has it,
    else on the month's last day: an anchor of 31 gives Jan 31 -> Feb 28 (29) -> Mar 31,
    and a Feb 29 yearly plan gives Feb 28 in common years and Feb 29 again in leap years."""
    months = {"month": 1, "year": 12}.get(interval)
    if months is None:
        raise ValueError(f"interval must be one of {', '.join(INTERVALS)}")
    moved = add_months(period_start, months)
    if anchor_day is None:
        return moved
    last = calendar.monthrange(moved.year, moved.month)[1]
    return moved.replace(day=min(anchor_day, last))


def start_of_day(day: date, tz_name: str) -> datetime:
    """The moment a date begins in a billing time zone (renewals are due then)."""
    return datetime.combine(day, datetime.min.time(), ZoneInfo(tz_name)).astimezone(UTC)


NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})
"""Files a system's zoneinfo folder may hold that name no place: `localtime` is whatever zone
the server runs in, `posixrules` a tz build detail, `Factory` tz's placeholder for "not set"."""


@cache
def zone_names() -> frozenset[str]:
    """IANA names (links such as US/Eastern included); read once, the folder walk is slow."""
    return frozenset(available_timezones()) - NOT_ZONES


def is_timezone(name: str) -> bool:
    """Only listed names: opening the file would also take "localtime" or a region folder."""
    return name in zone_names()


def today_in(tz_name: str, now: datetime | None = None) -> date:
    """The organization's "today": the billing time zone, not the server's, decides."""
    moment = now if now is not None else datetime.now(UTC)
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return moment.astimezone(ZoneInfo(tz_name)).date()
