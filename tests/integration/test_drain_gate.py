"""The web's wake-up call for stored events: one drain on its way at a time, on real Redis."""

from __future__ import annotations

import json
from typing import Any

import redis

from shared import queues
from shared.cli.embedded import free_port, start_redis
from web.enqueue import dispatcher, drain_gate


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


def test_the_web_publisher_leaves_each_message_where_a_worker_takes_it() -> None:
    """On a broker no worker has declared its queues on yet (a fresh Redis), every message
    waits in its queue though the publisher declares nothing, and names the task's arguments
    for Flower as Celery's own (slower) repr would (`argsrepr`)."""
    port = free_port()
    server = start_redis(port)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        sender = dispatcher(url, client)
        sender.charge(7, 9)
        sender.renew(8, force=True)
        waiting = {
            queue: [json.loads(raw)["headers"] for raw in client.lrange(queue, 0, -1)]
            for queue in (queues.ROUTES[queues.CHARGE_PURCHASE], queues.ROUTES[queues.RENEW])
        }
    finally:
        server.terminate()
        server.wait()
    charges, renewals = waiting.values()
    assert sorted((h["task"], h["argsrepr"], h["kwargsrepr"]) for h in charges) == [
        (queues.CHARGE_PURCHASE, "[7]", "{}"),
        (queues.CHARGE_PURCHASE, "[9]", "{}"),
    ]
    assert [(h["task"], h["argsrepr"]) for h in renewals] == [(queues.RENEW, "[8, True]")]
