"""The web's wake-up call for stored events: one drain on its way at a time, on real Redis."""

from __future__ import annotations

from typing import Any

import redis

from shared import queues
from web.enqueue import drain_gate


def recording(client: redis.Redis) -> tuple[queues.Dispatcher, list[str]]:
    sent: list[str] = []
    return queues.Dispatcher(lambda name, **_: sent.append(name), drain_gate(client)), sent


def test_events_stored_while_a_drain_is_on_its_way_ride_on_it(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.delete(queues.DRAIN_ARMED)
    dispatcher, sent = recording(client)
    for _ in range(3):
        dispatcher.drain_events()
    assert sent == [queues.DRAIN_EVENTS]
    assert 0 < client.ttl(queues.DRAIN_ARMED) <= queues.DRAIN_ARMED_SECONDS  # never stuck
    client.delete(queues.DRAIN_ARMED)  # the drain started: the next event sends another
    dispatcher.drain_events()
    assert sent == [queues.DRAIN_EVENTS] * 2
    dispatcher.drain_events(more=True)  # a full batch: another at once, mark or not
    assert sent == [queues.DRAIN_EVENTS] * 3
    client.delete(queues.DRAIN_ARMED)


def test_without_redis_a_drain_is_sent_anyway() -> None:
    unreachable = redis.Redis(port=1, socket_connect_timeout=0.2)
    sent: list[Any] = []
    queues.Dispatcher(lambda name, **_: sent.append(name), drain_gate(unreachable)).drain_events()
    assert sent == [queues.DRAIN_EVENTS]
