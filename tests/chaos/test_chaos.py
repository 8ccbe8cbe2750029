"""The short chaos run (`bench/chaos` is the long one): see tests/chaos/harness.py."""

from __future__ import annotations

import pytest

from tests.chaos.harness import Params, log, run

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]


@pytest.mark.timeout(900)
def test_a_chaos_run_loses_nothing_and_charges_nothing_twice(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tally = run(Params.from_env(), tmp_path_factory.mktemp("chaos"))
    for line in tally.lines():
        log(line)
    for problem in tally.mismatches:
        log(f"MISMATCH {problem}")
    assert tally.mismatches == []
    assert tally.purchases_succeeded + tally.purchases_failed >= Params.from_env().purchases
    assert tally.kills >= 1 and tally.redis_flushes == 1 and tally.postgres_stops >= 1
    assert sum(tally.faults.values()) > 0
