"""Seat rules, roles, purchase states, tokens and settings: pure, no I/O."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from shared.config import Settings, normalize_database_url
from shared.domain.errors import Forbidden, Invalid, Refused
from shared.domain.seats import (
    MAX_SEATS,
    TERMINAL,
    PurchaseNeeded,
    PurchaseStatus,
    Role,
    SeatCounts,
    check_seat_count,
    require_manager,
)
from shared.domain.tokens import hash_token, new_token

FAST = settings(max_examples=100, deadline=None)


@st.composite
def seat_counts(draw: st.DrawFn) -> SeatCounts:
    paid = draw(st.integers(1, MAX_SEATS))
    return SeatCounts(paid_seats=paid, active_seats=draw(st.integers(1, paid)))


# --- SeatCounts ------------------------------------------------------------------------


def test_seat_counts_keeps_both_counts() -> None:
    counts = SeatCounts(paid_seats=5, active_seats=3)
    assert (counts.paid_seats, counts.active_seats) == (5, 3)


@pytest.mark.parametrize(
    ("paid", "active"),
    [(3, 0), (0, 0), (3, -1), (3, 4), (1, 2), (0, 1)],
)
def test_seat_counts_refuses_broken_invariants(paid: int, active: int) -> None:
    with pytest.raises(ValueError, match="active_seats"):
        SeatCounts(paid_seats=paid, active_seats=active)


def test_free_change_down_and_back_up_to_paid() -> None:
    counts = SeatCounts(paid_seats=5, active_seats=5)
    down = counts.change_to(2)
    assert down == SeatCounts(paid_seats=5, active_seats=2)
    assert isinstance(down, SeatCounts)
    assert down.change_to(5) == SeatCounts(paid_seats=5, active_seats=5)
    assert counts.change_to(1) == SeatCounts(paid_seats=5, active_seats=1)
    # The original is untouched (frozen value object).
    assert counts == SeatCounts(paid_seats=5, active_seats=5)


def test_above_paid_a_purchase_is_needed_for_the_difference() -> None:
    counts = SeatCounts(paid_seats=3, active_seats=2)
    assert counts.change_to(4) == PurchaseNeeded(target=4, seats_to_buy=1)
    assert counts.change_to(9) == PurchaseNeeded(target=9, seats_to_buy=6)


@pytest.mark.parametrize("target", [0, -1, -100, MAX_SEATS + 1, 10**9])
def test_a_change_refuses_out_of_range_counts(target: int) -> None:
    counts = SeatCounts(paid_seats=3, active_seats=2)
    with pytest.raises(Invalid) as caught:
        counts.change_to(target)
    assert caught.value.code == "invalid_seats"


@pytest.mark.parametrize("target", [True, False, 2.0, "2", None])
def test_a_change_refuses_values_that_are_not_whole_numbers(target: object) -> None:
    counts = SeatCounts(paid_seats=3, active_seats=2)
    with pytest.raises(Invalid) as caught:
        counts.change_to(target)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_seats"


def test_above_max_seats_is_invalid_not_a_purchase() -> None:
    counts = SeatCounts(paid_seats=MAX_SEATS, active_seats=1)
    assert counts.change_to(MAX_SEATS) == SeatCounts(MAX_SEATS, MAX_SEATS)
    with pytest.raises(Invalid):
        counts.change_to(MAX_SEATS + 1)


def test_check_seat_count_bounds() -> None:
    check_seat_count(1)
    check_seat_count(MAX_SEATS)
    for bad in (0, MAX_SEATS + 1, True):
        with pytest.raises(Invalid):
            check_seat_count(bad)


@FAST
@given(seat_counts(), st.data())
def test_free_change_never_touches_paid_seats(counts: SeatCounts, data: st.DataObject) -> None:
    target = data.draw(st.integers(1, counts.paid_seats))
    changed = counts.change_to(target)
    assert isinstance(changed, SeatCounts)
    assert changed.paid_seats == counts.paid_seats
    assert changed.active_seats == target


@FAST
@given(seat_counts(), st.data())
def test_above_paid_is_always_a_purchase_of_the_difference(
    counts: SeatCounts, data: st.DataObject
) -> None:
    assume(counts.paid_seats < MAX_SEATS)
    target = data.draw(st.integers(counts.paid_seats + 1, MAX_SEATS))
    decision = counts.change_to(target)
    assert decision == PurchaseNeeded(target, target - counts.paid_seats)
    assert counts.seats_to_buy(target) == decision.seats_to_buy


def test_after_purchase_sets_both_counts_to_the_target() -> None:
    counts = SeatCounts(paid_seats=3, active_seats=2)
    assert counts.after_purchase(5) == SeatCounts(paid_seats=5, active_seats=5)
    assert counts.after_purchase(4) == SeatCounts(paid_seats=4, active_seats=4)


@pytest.mark.parametrize("target", [3, 2, 1])
def test_after_purchase_must_raise_the_paid_count(target: int) -> None:
    with pytest.raises(ValueError):
        SeatCounts(paid_seats=3, active_seats=2).after_purchase(target)


@FAST
@given(seat_counts(), st.integers(1, 1000))
def test_after_purchase_property(counts: SeatCounts, extra: int) -> None:
    target = counts.paid_seats + extra
    after = counts.after_purchase(target)
    assert after.paid_seats == target
    assert after.active_seats == target


def test_renewed_pays_for_what_is_in_use() -> None:
    assert SeatCounts(paid_seats=5, active_seats=2).renewed(2) == SeatCounts(2, 2)
    assert SeatCounts(paid_seats=4, active_seats=4).renewed(4) == SeatCounts(4, 4)
    # a retry that charged fewer seats than are now in use keeps only those paid for
    assert SeatCounts(paid_seats=5, active_seats=4).renewed(3) == SeatCounts(3, 3)
    with pytest.raises(ValueError):
        SeatCounts(paid_seats=5, active_seats=4).renewed(0)


@FAST
@given(seat_counts())
def test_renewed_property(counts: SeatCounts) -> None:
    renewed = counts.renewed(counts.active_seats)
    assert renewed.paid_seats == counts.active_seats
    assert renewed.active_seats == counts.active_seats


# --- roles and purchase states ------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "buyer", Role.OWNER, Role.BUYER])
def test_managers_may_change_seats(role: str) -> None:
    require_manager(role)  # does not raise


@pytest.mark.parametrize("role", ["member", Role.MEMBER, "", "admin", "Owner", "OWNER"])
def test_others_may_not_change_seats(role: str) -> None:
    with pytest.raises(Forbidden) as caught:
        require_manager(role)
    assert caught.value.code == "forbidden"
    assert isinstance(caught.value, Refused)


def test_roles_have_the_contract_names() -> None:
    assert {r.value for r in Role} == {"owner", "buyer", "member"}


def test_purchase_statuses_match_the_contract() -> None:
    assert [s.value for s in PurchaseStatus] == [
        "pending",
        "processing",
        "requires_action",
        "succeeded",
        "failed",
    ]
    assert PurchaseStatus("requires_action") is PurchaseStatus.REQUIRES_ACTION
    assert str(PurchaseStatus.SUCCEEDED) == "succeeded"


def test_only_succeeded_and_failed_are_terminal() -> None:
    assert frozenset({"succeeded", "failed"}) == TERMINAL
    assert PurchaseStatus.PENDING not in TERMINAL
    assert PurchaseStatus.PROCESSING not in TERMINAL
    assert PurchaseStatus.REQUIRES_ACTION not in TERMINAL


# --- tokens --------------------------------------------------------------------------


def test_tokens_are_unique() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200


def test_token_shape() -> None:
    token = new_token()
    assert token.startswith("seat_")
    assert len(token) >= 40  # 32 random bytes, url-safe base64
    assert re.fullmatch(r"seat_[A-Za-z0-9_-]+", token)


def test_hash_is_64_hex_chars_deterministic_and_not_the_token() -> None:
    token = new_token()
    digest = hash_token(token)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert hash_token(token) == digest
    assert digest != token
    assert token not in digest
    assert hash_token(new_token()) != digest


def test_hash_is_sha256_of_the_token() -> None:
    # sha256("abc"), the FIPS 180-2 test vector.
    assert hash_token("abc") == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


# --- config --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@db:5432/seats", "postgresql+psycopg://u:p@db:5432/seats"),
        ("postgresql://u:p@db/seats", "postgresql+psycopg://u:p@db/seats"),
        ("postgresql+psycopg://u@db/seats", "postgresql+psycopg://u@db/seats"),
        ("sqlite:///tmp/seats.db", "sqlite:///tmp/seats.db"),
        ("mysql://u@db/seats", "mysql://u@db/seats"),
    ],
)
def test_normalize_database_url(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


def test_settings_defaults_from_an_empty_environment() -> None:
    s = Settings.from_env({})
    assert s.database_url is None
    assert s.redis_url is None
    assert s.stripe_api_key is None
    assert s.stripe_api_base is None
    assert s.stripe_webhook_secret is None
    assert s.port == 8000
    assert s.stripe_test_mode is True
    assert re.fullmatch(r"[0-9a-f]{64}", s.secret_key)
    # A generated development key, never a fixed one shared by every install.
    assert Settings.from_env({}).secret_key != s.secret_key
    assert s.sweep_interval == 15.0
    assert s.stuck_after == 60.0
    assert s.charge_retries == 5
    assert s.requires_action_ttl == 3600.0
    assert s.stripe_timeout == 20.0


def test_the_stripe_timeout_reaches_the_gateway() -> None:
    from shared.payments.stripe_adapter import StripeGateway

    s = Settings.from_env({"SEATS_STRIPE_TIMEOUT": "2.5"})
    assert s.stripe_timeout == 2.5
    assert StripeGateway("sk_test_x", timeout=s.stripe_timeout)._timeout == 2.5


def test_settings_read_the_environment() -> None:
    s = Settings.from_env(
        {
            "DATABASE_URL": "postgres://u:p@db/seats",
            "REDIS_URL": "redis://cache:6379/0",
            "STRIPE_API_KEY": "sk_live_abc",
            "STRIPE_API_BASE": "http://localhost:8420",
            "STRIPE_WEBHOOK_SECRET": "whsec_x",
            "SECRET_KEY": "s3cret",
            "PORT": "9001",
        }
    )
    assert s.database_url == "postgresql+psycopg://u:p@db/seats"
    assert s.redis_url == "redis://cache:6379/0"
    assert s.stripe_api_key == "sk_live_abc"
    assert s.stripe_api_base == "http://localhost:8420"
    assert s.stripe_webhook_secret == "whsec_x"
    assert s.secret_key == "s3cret"
    assert s.port == 9001
    assert s.stripe_test_mode is False


def test_test_mode_follows_the_key() -> None:
    assert Settings.from_env({"STRIPE_API_KEY": "sk_test_123"}).stripe_test_mode is True
    assert Settings.from_env({"STRIPE_API_KEY": "sk_live_123"}).stripe_test_mode is False


@pytest.mark.parametrize(("raw", "expected"), [("8000", 8000), ("5001", 5001), ("", 8000)])
def test_port_parsing(raw: str, expected: int) -> None:
    port = Settings.from_env({"PORT": raw}).port
    assert port == expected
    assert type(port) is int


def test_empty_variables_count_as_unset() -> None:
    s = Settings.from_env({"DATABASE_URL": "", "REDIS_URL": "", "STRIPE_API_KEY": ""})
    assert (s.database_url, s.redis_url, s.stripe_api_key) == (None, None, None)


def test_non_numeric_port_is_refused() -> None:
    with pytest.raises(ValueError):
        Settings.from_env({"PORT": "http"})


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "inf", "abc", "1e999"])
def test_seconds_settings_refuse_what_would_look_like_an_outage_later(raw: str) -> None:
    for name in ("SEATS_STRIPE_TIMEOUT", "SEATS_SWEEP_INTERVAL", "SEATS_STUCK_AFTER"):
        with pytest.raises(ValueError, match=f"{name}='{raw}': give a number of seconds"):
            Settings.from_env({name: raw})


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("SEATS_WORKER_CONCURRENCY", "0"),
        ("SEATS_WEBHOOK_BATCH", "0"),
        ("SEATS_CHARGE_RETRIES", "-1"),
        ("PORT", "eighty"),
    ],
)
def test_whole_number_settings_say_which_variable_is_wrong(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=f"{name}='{raw}': give a whole number"):
        Settings.from_env({name: raw})
    assert Settings.from_env({"SEATS_CHARGE_RETRIES": "0"}).charge_retries == 0
