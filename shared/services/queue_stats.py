"""What the broker knows: queue depths and ages, workers online, task timings.

Read at scrape time (by `/metrics`, `/readyz`, `seats ops status`) from Redis, so
every web process and the command line report the same figures. The workers keep
their heartbeat and their task histograms there for this reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from shared import queues

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
HEARTBEAT_SECONDS = 10
HEARTBEAT_TTL = 30


@dataclass(frozen=True)
class QueueFigure:
    name: str
    depth: int
    oldest_age_seconds: float | None


@dataclass(frozen=True)
class WorkerFigure:
    hostname: str
    pid: int | None
    queues: list[str]
    seen_seconds_ago: float


def _sent_at(raw: bytes | None) -> float | None:
    """The oldest message's send time, from the header the Dispatcher adds."""
    if raw is None:
        return None
    try:
        value = json.loads(raw).get("headers", {}).get(queues.SENT_AT)
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def queue_figures(client: redis.Redis, now: float | None = None) -> list[QueueFigure]:
    """Depth and oldest message age of each queue (kombu pushes left, pops right)."""
    now = now or time.time()
    pipe = client.pipeline(transaction=False)
    for name in queues.ALL:
        pipe.llen(name)
        pipe.lindex(name, -1)
    answers = pipe.execute()
    figures = []
    for index, name in enumerate(queues.ALL):
        depth, oldest = int(answers[2 * index]), _sent_at(answers[2 * index + 1])
        age = max(0.0, now - oldest) if oldest is not None else None
        figures.append(QueueFigure(name, depth, age))
    return figures


def behind(figures: list[QueueFigure], stuck_after: float) -> set[str]:
    """Queues whose oldest waiting message has waited longer than `stuck_after`: the workers
    are not keeping up with them. A message without our send time (beat's own sweep or
    scan) says nothing about the queue, so it never holds the sweep back. The sweep sends nothing
    there: what it would re-send is most likely still waiting in that queue, and copies of
    hundreds of messages every few seconds only make it fall further behind. Once the
    queue drains, the next sweep re-sends whatever the broker really lost."""
    return {
        figure.name
        for figure in figures
        if figure.depth > 0
        and figure.oldest_age_seconds is not None
        and figure.oldest_age_seconds > stuck_after
    }


def beat(client: redis.Redis, hostname: str, pid: int, consumed: list[str]) -> None:
    """A worker says it is alive; the key expires if it stops saying so."""
    record = {"pid": pid, "queues": consumed, "at": time.time()}
    client.setex(f"{queues.WORKER_KEYS}{hostname}", HEARTBEAT_TTL, json.dumps(record))


def gone(client: redis.Redis, hostname: str) -> None:
    client.delete(f"{queues.WORKER_KEYS}{hostname}")


def workers_online(client: redis.Redis, now: float | None = None) -> list[WorkerFigure]:
    now = now or time.time()
    keys = sorted(client.scan_iter(match=f"{queues.WORKER_KEYS}*", count=100))
    values = client.mget(keys) if keys else []
    found = []
    for key, value in zip(keys, values, strict=True):
        if value is None:
            continue
        try:
            record = json.loads(value)
        except ValueError:
            continue
        hostname = key.decode()[len(queues.WORKER_KEYS) :] if isinstance(key, bytes) else key
        found.append(
            WorkerFigure(
                hostname=str(hostname),
                pid=record.get("pid"),
                queues=list(record.get("queues") or []),
                seen_seconds_ago=max(0.0, now - float(record.get("at") or now)),
            )
        )
    return found


Totals = dict[str, dict[str, float]]
"""Histogram increments not yet written: {Redis key: {bucket, "sum" or "count": amount}}."""


def tally(totals: Totals, metric: str, task: str, seconds: float) -> None:
    """Count one (metric, task, seconds) observation in `totals`, to be `record`ed later."""
    fields = totals.setdefault(f"{queues.METRIC_KEYS}{metric}:{task}", {})
    bucket = next((str(bound) for bound in BUCKETS if seconds <= bound), "+Inf")
    for field, amount in ((bucket, 1), ("sum", seconds), ("count", 1)):
        fields[field] = fields.get(field, 0) + amount


def merge(into: Totals, totals: Totals) -> None:
    """Add `totals` (a write that failed) back into `into`, to go with the next one."""
    for key, fields in totals.items():
        kept = into.setdefault(key, {})
        for field, amount in fields.items():
            kept[field] = kept.get(field, 0) + amount


def record(client: redis.Redis, totals: Totals) -> None:
    """Add the tallied observations to the histograms: one round trip, all or nothing."""
    if not totals:
        return
    pipe = client.pipeline(transaction=True)
    for key, fields in totals.items():
        for field, amount in fields.items():
            if field == "sum":
                pipe.hincrbyfloat(key, field, amount)
            else:
                pipe.hincrby(key, field, int(amount))
    pipe.execute()


@dataclass(frozen=True)
class Histogram:
    task: str
    cumulative: list[tuple[str, int]]
    sum: float
    count: int


def histograms(client: redis.Redis, metric: str) -> list[Histogram]:
    prefix = f"{queues.METRIC_KEYS}{metric}:"
    keys = sorted(client.scan_iter(match=f"{prefix}*", count=100))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    found = []
    for key, fields in zip(keys, pipe.execute(), strict=True):
        values = {k.decode(): v.decode() for k, v in fields.items()}
        running, cumulative = 0, []
        for bound in [*map(str, BUCKETS), "+Inf"]:
            running += int(values.get(bound, 0))
            cumulative.append((bound, running))
        task = key.decode()[len(prefix) :]
        found.append(
            Histogram(task, cumulative, float(values.get("sum", 0)), int(values.get("count", 0)))
        )
    return found
