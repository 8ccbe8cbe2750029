"""The money rule (README "The money rule") and the calendar it stands on: pure, no I/O."""

from __future__ import annotations

import calendar
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain.money import Quote, RenewalPending, prorate, quote, round_half_up
from shared.domain.periods import add_months, is_timezone, next_renewal, today_in
from shared.services.views import to_json

FAST = settings(max_examples=120, deadline=None)

MAX_SEATS = 100_000
MAX_UNIT = 10**11

dates = st.dates(min_value=date(1990, 1, 1), max_value=date(2199, 12, 31))
intervals = st.sampled_from(["month", "year"])
unit_amounts = st.integers(min_value=1, max_value=MAX_UNIT)
seat_counts = st.integers(min_value=1, max_value=MAX_SEATS)


def reference_amount(subtotal: int, remaining_days: int, period_days: int) -> int:
    """Independent reference: the exact fraction, halves (and more) round up."""
    exact = Fraction(subtotal) * Fraction(remaining_days, period_days)
    whole, rest = divmod(exact.numerator, exact.denominator)
    return whole + (1 if Fraction(rest, exact.denominator) >= Fraction(1, 2) else 0)


@dataclass(frozen=True)
class Purchase:
    """A real billing period, a day inside it and a raise of the seat count."""

    target_seats: int
    paid_seats: int
    unit_amount: int
    current_period_start: date
    renews_at: date
    today: date

    @property
    def period_days(self) -> int:
        return (self.renews_at - self.current_period_start).days

    def priced(self, **changes: Any) -> Quote:
        p = replace(self, **changes)
        return quote(
            target_seats=p.target_seats,
            paid_seats=p.paid_seats,
            unit_amount=p.unit_amount,
            currency="cad",
            current_period_start=p.current_period_start,
            renews_at=p.renews_at,
            today=p.today,
        )


@st.composite
def purchases(draw: st.DrawFn) -> Purchase:
    start = draw(dates)
    renews_at = next_renewal(start, draw(intervals))
    period_days = (renews_at - start).days
    paid = draw(st.integers(1, MAX_SEATS - 1))
    return Purchase(
        target_seats=draw(st.integers(paid + 1, MAX_SEATS)),
        paid_seats=paid,
        unit_amount=draw(unit_amounts),
        current_period_start=start,
        renews_at=renews_at,
        today=start + timedelta(days=draw(st.integers(0, period_days - 1))),
    )


# --- round_half_up and prorate -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(0), 0),
        (Fraction(1, 2), 1),
        (Fraction(3, 2), 2),
        (Fraction(5, 2), 3),  # banker's rounding would give 2
        (Fraction(7, 2), 4),
        (Fraction(49, 100), 0),
        (Fraction(51, 100), 1),
        (Fraction(7, 3), 2),
        (Fraction(8, 3), 3),
        (Fraction(10), 10),
    ],
)
def test_round_half_up_examples(value: Fraction, expected: int) -> None:
    result = round_half_up(value)
    assert result == expected
    assert type(result) is int


def test_round_half_up_refuses_negative_amounts() -> None:
    with pytest.raises(ValueError):
        round_half_up(Fraction(-1, 2))


def test_half_a_cent_rounds_up() -> None:
    # subtotal 1 cent, 1 day left of 2: exactly half a cent is due -> 1 cent.
    assert prorate(1, 1, 2) == 1
    # 3 cents, 1 day of 2 = 1.5 -> 2; 5 cents -> 2.5 -> 3 (never round-half-even).
    assert prorate(3, 1, 2) == 2
    assert prorate(5, 1, 2) == 3
    # Just under a half goes down: 1 cent * 1/3 = 0.33 -> 0; 1 cent * 2/3 -> 1.
    assert prorate(1, 1, 3) == 0
    assert prorate(1, 2, 3) == 1


@pytest.mark.parametrize(
    ("subtotal", "remaining", "period"),
    [(100, 1, 0), (100, 0, -5), (100, 31, 30), (100, -1, 30), (-1, 1, 30)],
)
def test_prorate_refuses_impossible_inputs(subtotal: int, remaining: int, period: int) -> None:
    with pytest.raises(ValueError):
        prorate(subtotal, remaining, period)


@FAST
@given(
    subtotal=st.integers(0, MAX_UNIT * MAX_SEATS),
    period=st.integers(1, 366),
    data=st.data(),
)
def test_prorate_matches_exact_fraction_reference(
    subtotal: int, period: int, data: st.DataObject
) -> None:
    remaining = data.draw(st.integers(0, period))
    amount = prorate(subtotal, remaining, period)
    assert type(amount) is int
    assert amount == reference_amount(subtotal, remaining, period)
    # A second, integer-only formula of the same rule.
    assert amount == (2 * subtotal * remaining + period) // (2 * period)
    assert 0 <= amount <= subtotal


@FAST
@given(
    subtotal=st.integers(0, MAX_UNIT * MAX_SEATS),
    period=st.integers(1, 366),
    data=st.data(),
)
def test_prorate_is_monotone_in_remaining_days(
    subtotal: int, period: int, data: st.DataObject
) -> None:
    fewer = data.draw(st.integers(0, period))
    more = data.draw(st.integers(fewer, period))
    assert prorate(subtotal, fewer, period) <= prorate(subtotal, more, period)
    assert prorate(subtotal, period, period) == subtotal
    assert prorate(subtotal, 0, period) == 0


@FAST
@given(period=st.integers(1, 366), data=st.data())
def test_one_cent_is_due_from_half_the_period_on(period: int, data: st.DataObject) -> None:
    remaining = data.draw(st.integers(1, period))
    expected = 1 if 2 * remaining >= period else 0
    assert prorate(1, remaining, period) == expected


# --- quote: properties ---------------------------------------------------------------


@FAST
@given(purchases())
def test_quote_matches_the_contract_formula(p: Purchase) -> None:
    q = p.priced()
    remaining_days = (p.renews_at - p.today).days
    seats = p.target_seats - p.paid_seats
    subtotal = seats * p.unit_amount

    assert q.period_days == p.period_days
    assert q.remaining_days == remaining_days
    assert 1 <= q.remaining_days <= q.period_days
    assert q.seats_to_buy == seats
    assert q.unit_amount == p.unit_amount
    assert q.subtotal == subtotal
    assert q.amount_due == reference_amount(subtotal, remaining_days, p.period_days)
    assert 0 <= q.amount_due <= q.subtotal
    assert q.proration_coupon + q.amount_due == q.subtotal
    assert q.proration_coupon >= 0
    assert q.renews_at == p.renews_at
    assert q.currency == "cad"
    for name in (
        "seats_to_buy",
        "unit_amount",
        "subtotal",
        "proration_coupon",
        "amount_due",
        "remaining_days",
        "period_days",
    ):
        assert type(getattr(q, name)) is int, name
    for key, value in to_json(q).items():
        assert not isinstance(value, float), key


@FAST
@given(purchases(), st.integers(1, 400))
def test_full_price_on_first_day_and_before_the_period(p: Purchase, days_before: int) -> None:
    start = p.current_period_start
    for today in (start, start - timedelta(days=days_before)):
        q = p.priced(today=today)
        assert q.amount_due == q.subtotal
        assert q.proration_coupon == 0
        assert q.remaining_days == q.period_days


@FAST
@given(purchases(), st.data())
def test_quote_amount_never_grows_as_the_period_goes_by(p: Purchase, data: st.DataObject) -> None:
    earlier = data.draw(st.integers(0, p.period_days - 1))
    later = data.draw(st.integers(earlier, p.period_days - 1))
    early = p.priced(today=p.current_period_start + timedelta(days=earlier))
    late = p.priced(today=p.current_period_start + timedelta(days=later))
    assert early.remaining_days >= late.remaining_days
    assert early.amount_due >= late.amount_due
    assert early.proration_coupon <= late.proration_coupon


@FAST
@given(purchases(), st.integers(0, 1000))
def test_renewal_pending_on_or_after_renews_at(p: Purchase, days_after: int) -> None:
    with pytest.raises(RenewalPending):
        p.priced(today=p.renews_at + timedelta(days=days_after))


@FAST
@given(purchases(), st.data())
def test_nothing_to_buy_when_target_is_not_above_paid(p: Purchase, data: st.DataObject) -> None:
    q = p.priced(target_seats=data.draw(st.integers(1, p.paid_seats)))
    assert q.seats_to_buy == 0
    assert q.subtotal == 0
    assert q.amount_due == 0
    assert q.proration_coupon == 0


@FAST
@given(purchases())
def test_last_day_of_the_period_counts_as_one_day(p: Purchase) -> None:
    q = p.priced(today=p.renews_at - timedelta(days=1))
    assert q.remaining_days == 1
    assert q.amount_due == reference_amount(q.subtotal, 1, q.period_days)


# --- quote: concrete examples --------------------------------------------------------


def test_help_article_example() -> None:
    # 3 paid seats of XLGL at 500.00 CAD a year; period 2025-01-01 .. 2026-01-01 (365 days).
    # On 2025-07-01 the buyer raises the plan to 5 seats: 2 seats to buy.
    # remaining = 2026-01-01 - 2025-07-01 = 184 days (Jul..Dec: 31+31+30+31+30+31).
    # subtotal = 2 * 50000 = 100000 cents
    # amount   = 100000 * 184 / 365 = 18400000 / 365 = 50410 rest 350 (0.9589) -> 50411
    # coupon   = 100000 - 50411 = 49589
    q = quote(
        target_seats=5,
        paid_seats=3,
        unit_amount=50000,
        currency="cad",
        current_period_start=date(2025, 1, 1),
        renews_at=date(2026, 1, 1),
        today=date(2025, 7, 1),
    )
    assert q == Quote(
        seats_to_buy=2,
        unit_amount=50000,
        subtotal=100000,
        proration_coupon=49589,
        amount_due=50411,
        currency="cad",
        remaining_days=184,
        period_days=365,
        renews_at=date(2026, 1, 1),
    )
    assert to_json(q) == {
        "seats_to_buy": 2,
        "unit_amount": 50000,
        "subtotal": 100000,
        "proration_coupon": 49589,
        "amount_due": 50411,
        "currency": "cad",
        "remaining_days": 184,
        "period_days": 365,
        "renews_at": "2026-01-01",
    }


def test_leap_year_period_has_366_days() -> None:
    # 2023-03-01 .. 2024-03-01 contains Feb 29 2024: a 366-day year.
    q = quote(
        target_seats=2,
        paid_seats=1,
        unit_amount=36600,
        currency="cad",
        current_period_start=date(2023, 3, 1),
        renews_at=date(2024, 3, 1),
        today=date(2024, 2, 28),
    )
    # 2 days left (Feb 28, today, counts; then Feb 29): 36600 * 2 / 366 = 200 exactly.
    assert (q.period_days, q.remaining_days, q.amount_due, q.proration_coupon) == (
        366,
        2,
        200,
        36400,
    )


def test_monthly_period_starting_feb_29() -> None:
    # Feb 29 2024 + 1 month = Mar 29 2024: 29 days. Bought on Mar 15: 14 days left.
    # 3 seats * 2900 = 8700; 8700 * 14 / 29 = 4200 exactly.
    renews_at = next_renewal(date(2024, 2, 29), "month")
    assert renews_at == date(2024, 3, 29)
    q = quote(
        target_seats=4,
        paid_seats=1,
        unit_amount=2900,
        currency="usd",
        current_period_start=date(2024, 2, 29),
        renews_at=renews_at,
        today=date(2024, 3, 15),
    )
    assert (q.period_days, q.remaining_days, q.subtotal, q.amount_due) == (29, 14, 8700, 4200)


def test_half_cent_rounds_up_in_a_quote() -> None:
    # 1 seat at 1 cent, 1 day left of a 2-day period: exactly 0.5 cent -> 1 cent, no coupon.
    q = quote(
        target_seats=2,
        paid_seats=1,
        unit_amount=1,
        currency="cad",
        current_period_start=date(2026, 1, 1),
        renews_at=date(2026, 1, 3),
        today=date(2026, 1, 2),
    )
    assert (q.subtotal, q.amount_due, q.proration_coupon) == (1, 1, 0)


def test_one_cent_seat_on_a_yearly_plan() -> None:
    # 1 cent a year, 182 of 365 days left: 0.4986 -> 0; 183 days: 0.5014 -> 1.
    plan = Purchase(
        target_seats=2,
        paid_seats=1,
        unit_amount=1,
        current_period_start=date(2025, 1, 1),
        renews_at=date(2026, 1, 1),
        today=date(2025, 1, 1),
    )
    at_182 = plan.priced(today=date(2026, 1, 1) - timedelta(days=182))
    at_183 = plan.priced(today=date(2026, 1, 1) - timedelta(days=183))
    assert (at_182.remaining_days, at_182.amount_due, at_182.proration_coupon) == (182, 0, 1)
    assert (at_183.remaining_days, at_183.amount_due, at_183.proration_coupon) == (183, 1, 0)


def test_huge_half_is_exact_where_a_float_is_not() -> None:
    # 99999 seats * 99_999_999_999 = 9_999_899_999_900_001 (odd, above 2**53),
    # 1 day left of 2: exactly 4_999_949_999_950_000.5 -> ...001. A float gives ...000.
    q = quote(
        target_seats=100_000,
        paid_seats=1,
        unit_amount=99_999_999_999,
        currency="cad",
        current_period_start=date(2026, 1, 1),
        renews_at=date(2026, 1, 3),
        today=date(2026, 1, 2),
    )
    assert q.subtotal == 9_999_899_999_900_001
    assert q.amount_due == 4_999_949_999_950_001
    assert q.proration_coupon == 4_999_949_999_950_000
    assert round(q.subtotal / 2) != q.amount_due  # the float path really is wrong here


def test_huge_yearly_amount_is_exact() -> None:
    # 99999 seats * 99_999_999_950 = 9_999_899_995_000_050; 364 of 365 days left.
    # 9_999_899_995_000_050 * 364 = 3_639_963_598_180_018_200; / 365 = 9_972_503_008_712_378
    # rest 230 (0.63) -> 9_972_503_008_712_379.
    q = quote(
        target_seats=100_000,
        paid_seats=1,
        unit_amount=99_999_999_950,
        currency="cad",
        current_period_start=date(2025, 1, 1),
        renews_at=date(2026, 1, 1),
        today=date(2025, 1, 2),
    )
    assert q.subtotal == 9_999_899_995_000_050
    assert (q.remaining_days, q.period_days) == (364, 365)
    assert q.amount_due == 9_972_503_008_712_379
    assert q.proration_coupon == q.subtotal - 9_972_503_008_712_379


@FAST
@given(seats=seat_counts, unit=unit_amounts, period=st.integers(1, 366), data=st.data())
def test_large_amounts_stay_exact(seats: int, unit: int, period: int, data: st.DataObject) -> None:
    remaining = data.draw(st.integers(1, period))
    start = date(2030, 1, 1)
    q = quote(
        target_seats=seats + 1,
        paid_seats=1,
        unit_amount=unit,
        currency="cad",
        current_period_start=start,
        renews_at=start + timedelta(days=period),
        today=start + timedelta(days=period - remaining),
    )
    assert q.subtotal == seats * unit
    assert q.amount_due == (2 * seats * unit * remaining + period) // (2 * period)
    assert type(q.amount_due) is int


def test_renewal_pending_on_the_renewal_day() -> None:
    with pytest.raises(RenewalPending):
        quote(
            target_seats=5,
            paid_seats=3,
            unit_amount=50000,
            currency="cad",
            current_period_start=date(2025, 1, 1),
            renews_at=date(2026, 1, 1),
            today=date(2026, 1, 1),
        )


# --- calendar ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (date(2025, 1, 31), 1, date(2025, 2, 28)),
        (date(2024, 1, 31), 1, date(2024, 2, 29)),
        (date(2025, 3, 31), 1, date(2025, 4, 30)),
        (date(2025, 5, 31), 1, date(2025, 6, 30)),
        (date(2025, 1, 15), 1, date(2025, 2, 15)),
        (date(2025, 12, 31), 1, date(2026, 1, 31)),
        (date(2025, 11, 30), 3, date(2026, 2, 28)),
        (date(2024, 2, 29), 12, date(2025, 2, 28)),
        (date(2024, 2, 29), 48, date(2028, 2, 29)),
        (date(2025, 8, 31), 6, date(2026, 2, 28)),
        (date(2025, 3, 31), -1, date(2025, 2, 28)),
        (date(2025, 1, 15), -1, date(2024, 12, 15)),
        (date(2025, 6, 10), 0, date(2025, 6, 10)),
    ],
)
def test_add_months_clamps_to_month_end(start: date, months: int, expected: date) -> None:
    assert add_months(start, months) == expected


@FAST
@given(dates, st.integers(-240, 240))
def test_add_months_lands_in_the_right_month(start: date, months: int) -> None:
    result = add_months(start, months)
    assert (result.year * 12 + result.month) - (start.year * 12 + start.month) == months
    last_day = calendar.monthrange(result.year, result.month)[1]
    assert result.day == min(start.day, last_day)


@pytest.mark.parametrize(
    ("start", "interval", "expected"),
    [
        (date(2025, 1, 31), "month", date(2025, 2, 28)),
        (date(2024, 1, 31), "month", date(2024, 2, 29)),
        (date(2025, 3, 31), "month", date(2025, 4, 30)),
        (date(2025, 12, 15), "month", date(2026, 1, 15)),
        (date(2024, 2, 29), "year", date(2025, 2, 28)),
        (date(2025, 1, 1), "year", date(2026, 1, 1)),
        (date(2023, 3, 1), "year", date(2024, 3, 1)),
    ],
)
def test_next_renewal(start: date, interval: str, expected: date) -> None:
    assert next_renewal(start, interval) == expected


@pytest.mark.parametrize("interval", ["week", "day", "", "Month", "yearly"])
def test_next_renewal_refuses_unknown_intervals(interval: str) -> None:
    with pytest.raises(ValueError):
        next_renewal(date(2025, 1, 1), interval)


@FAST
@given(st.integers(1990, 2199))
def test_yearly_period_from_january_has_366_days_in_leap_years(year: int) -> None:
    start = date(year, 1, 1)
    days = (next_renewal(start, "year") - start).days
    assert days == (366 if calendar.isleap(year) else 365)


@FAST
@given(dates)
def test_monthly_period_is_28_to_31_days(start: date) -> None:
    days = (next_renewal(start, "month") - start).days
    assert 28 <= days <= 31
    if start.day <= 28:  # no clamping: the period is as long as the starting month
        assert days == calendar.monthrange(start.year, start.month)[1]


def test_today_in_the_billing_time_zone_decides_the_date() -> None:
    moment = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
    # Toronto is UTC-5 in winter: 2026-02-28 22:00 there.
    assert today_in("America/Toronto", moment) == date(2026, 2, 28)
    # Paris is UTC+1: 2026-03-01 04:00 there.
    assert today_in("Europe/Paris", moment) == date(2026, 3, 1)
    assert today_in("UTC", moment) == date(2026, 3, 1)


def test_today_in_follows_daylight_saving_time() -> None:
    # Toronto is UTC-4 in summer: 03:30Z on Jul 1 is still Jun 30 (23:30), 04:30Z is Jul 1.
    assert today_in("America/Toronto", datetime(2026, 7, 1, 3, 30, tzinfo=UTC)) == date(2026, 6, 30)
    assert today_in("America/Toronto", datetime(2026, 7, 1, 4, 30, tzinfo=UTC)) == date(2026, 7, 1)


def test_today_in_accepts_any_aware_datetime() -> None:
    tokyo_morning = datetime(2026, 3, 1, 8, 0, tzinfo=timezone(timedelta(hours=9)))
    # 2026-02-28 23:00 UTC -> 18:00 in Toronto, still Feb 28.
    assert today_in("America/Toronto", tokyo_morning) == date(2026, 2, 28)


def test_today_in_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError):
        today_in("America/Toronto", datetime(2026, 3, 1, 3, 0))


def test_today_in_defaults_to_now() -> None:
    before = datetime.now(UTC)
    result = today_in("UTC")
    after = datetime.now(UTC)
    assert result in {before.date(), after.date()}


@pytest.mark.parametrize("name", ["America/Toronto", "Europe/Paris", "UTC", "Asia/Tokyo"])
def test_is_timezone_accepts_iana_names(name: str) -> None:
    assert is_timezone(name) is True


@pytest.mark.parametrize(
    "name", ["", "Mars/Olympus", "Toronto", "../etc/passwd", "/etc/localtime", "Europe/Paris "]
)
def test_is_timezone_refuses_other_names(name: str) -> None:
    assert is_timezone(name) is False
