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


def next_renewal(period_start: date, interval: str) -> date:
    if interval == "month":
        return add_months(period_start, 1)
    if interval == "year":
        return add_months(period_start, 12)
    raise ValueError(f"interval must be one of {', '.join(INTERVALS)}")


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
