"""A worker's task timings: tallied in the process, written to Redis together, read back
by every scrape as the same histograms."""

from __future__ import annotations

import secrets
import socket

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared import queues
from shared.services import queue_stats
from worker import telemetry


def keys(task: str) -> list[str]:
    return [
        f"{queues.METRIC_KEYS}{metric}:{task}" for metric in ("task_seconds", "queue_wait_seconds")
    ]


def test_tallied_timings_read_back_as_the_histograms_a_scrape_shows(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    task = f"seats.test_{secrets.token_hex(4)}"
    try:
        for _ in range(2):  # a second write adds to the first
            totals: queue_stats.Totals = {}
            for seconds in (0.003, 0.2, 400.0):
                queue_stats.tally(totals, "task_seconds", task, seconds)
            queue_stats.tally(totals, "queue_wait_seconds", task, 0.01)
            queue_stats.record(client, totals)
        [ran] = [h for h in queue_stats.histograms(client, "task_seconds") if h.task == task]
        cumulative = dict(ran.cumulative)
        assert (cumulative["0.005"], cumulative["0.25"], cumulative["300.0"]) == (2, 4, 4)
        assert (cumulative["+Inf"], ran.count) == (6, 6)
        assert ran.sum == pytest.approx(2 * 400.203)
        [waited] = [
            h for h in queue_stats.histograms(client, "queue_wait_seconds") if h.task == task
        ]
        assert (dict(waited.cumulative)["0.01"], waited.count) == (2, 2)
    finally:
        client.delete(*keys(task))


def test_timings_a_failed_write_held_go_with_the_next_one(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis away for a while: nothing counted twice, nothing lost once it is back."""
    task = f"seats.test_{secrets.token_hex(4)}"
    timings = telemetry.Timings()
    for seconds in (0.02, 0.03):
        queue_stats.tally(timings.totals, "task_seconds", task, seconds)
    away = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    monkeypatch.setattr(telemetry, "_client", away)
    timings.write()
    queue_stats.tally(timings.totals, "task_seconds", task, 2.0)
    client = redis.Redis.from_url(redis_url)
    monkeypatch.setattr(telemetry, "_client", client)
    try:
        timings.write()
        timings.write()  # nothing new: nothing written again
        [ran] = [h for h in queue_stats.histograms(client, "task_seconds") if h.task == task]
        assert (dict(ran.cumulative)["0.025"], ran.count) == (1, 3)
        assert ran.sum == pytest.approx(2.05)
        assert timings.totals == {}
    finally:
        client.delete(*keys(task))


def test_timings_whose_write_timed_out_are_never_written_twice(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that took the write but did not answer in time may have applied it: those
    timings are let go rather than counted twice."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    task = f"seats.test_{secrets.token_hex(4)}"
    timings = telemetry.Timings()
    queue_stats.tally(timings.totals, "task_seconds", task, 0.02)
    port = silent.getsockname()[1]
    quiet = redis.Redis(port=port, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    monkeypatch.setattr(telemetry, "_client", quiet)
    client = redis.Redis.from_url(redis_url)
    try:
        timings.write()
        assert timings.totals == {}
        queue_stats.tally(timings.totals, "task_seconds", task, 3.0)
        monkeypatch.setattr(telemetry, "_client", client)
        timings.write()
        [ran] = [h for h in queue_stats.histograms(client, "task_seconds") if h.task == task]
        assert (ran.count, ran.sum) == (1, 3.0)
    finally:
        silent.close()
        client.delete(*keys(task))
