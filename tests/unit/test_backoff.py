"""Retry delays (README "Parked purchases"): exponential, capped at 60 s, with full jitter."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from worker.tasks import backoff

DRAWS = 400


@pytest.fixture(autouse=True)
def seeded() -> Iterator[None]:
    """The same draws on every run; the global generator is left as it was found."""
    state = random.getstate()
    random.seed(20240601)
    yield
    random.setstate(state)


@pytest.mark.parametrize("retries", range(12))
def test_a_delay_is_drawn_from_zero_to_the_capped_exponential(retries: int) -> None:
    ceiling = min(60.0, 2.0**retries)
    delays = [backoff(retries) for _ in range(DRAWS)]
    assert all(0 <= delay <= ceiling for delay in delays), (min(delays), max(delays))
    # full jitter: spread over the whole range, not a fixed delay or a jitter on top of one
    assert len(set(delays)) > DRAWS * 0.9
    assert min(delays) < ceiling * 0.1
    assert max(delays) > ceiling * 0.9
    below_half = sum(delay < ceiling / 2 for delay in delays)
    assert DRAWS * 0.35 < below_half < DRAWS * 0.65


def test_the_cap_is_reached_and_kept() -> None:
    """From 2**6 = 64 s on, the ceiling is 60 s and stays there: never an hour-long wait."""
    assert max(backoff(6) for _ in range(DRAWS)) > 54
    assert max(backoff(40) for _ in range(DRAWS)) <= 60


def test_two_failures_at_once_do_not_retry_in_step() -> None:
    first = [backoff(5) for _ in range(50)]
    second = [backoff(5) for _ in range(50)]
    assert first != second
