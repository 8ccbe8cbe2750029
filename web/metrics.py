"""Prometheus figures that add up across processes and machines.

State (purchases, renewals, events, queues, workers, task timings) is read at scrape
time from PostgreSQL and Redis, which every web process shares. The HTTP counters of
this process's requests use prometheus-client's multiprocess mode when
`PROMETHEUS_MULTIPROC_DIR` is set (`web/gunicorn.conf.py` sets it), so every gunicorn
worker's requests are counted in every scrape; counters never go backwards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from uuid import uuid4

import redis
import structlog
from flask import Blueprint, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from shared import log_lines
from shared.bootstrap import Runtime
from shared.services import monitoring, queue_stats
from web.extensions import parts

metrics = Blueprint("metrics", __name__)


def _gauge(name: str, text: str, values: Mapping[str, float], label: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class StateCollector(Collector):
    """One database transaction and one Redis round trip or two per scrape."""

    def __init__(self, runtime: Runtime, broker: redis.Redis) -> None:
        self.runtime = runtime
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        yield from self._database()
        try:
            yield from self._broker()
        except redis.RedisError:
            return

    def _database(self) -> Iterator[Metric]:
        f = monitoring.figures(self.runtime.uow())
        yield _gauge("seats_purchases", "Purchases by status", f.purchases, "status")
        yield GaugeMetricFamily(
            "seats_purchases_parked", "Purchases waiting for an operator", value=f.purchases_parked
        )
        yield GaugeMetricFamily(
            "seats_purchase_oldest_unfinished_seconds",
            "Age of the oldest purchase not yet succeeded or failed (0: none)",
            value=f.oldest_unfinished_purchase_seconds,
        )
        yield _gauge(
            "seats_purchase_failures", "Failed purchases by code", f.charge_failures, "code"
        )
        yield _gauge("seats_renewals", "Renewals by status", f.renewals, "status")
        yield GaugeMetricFamily(
            "seats_renewal_oldest_unfinished_seconds",
            "Age of the oldest renewal not yet succeeded (0: none)",
            value=f.oldest_unfinished_renewal_seconds,
        )
        yield _gauge(
            "seats_subscriptions",
            "Plans by standing (active, past_due, suspended)",
            f.subscriptions,
            "status",
        )
        yield GaugeMetricFamily(
            "seats_renewals_due",
            "Plans whose renewal date has come and whose period has not moved yet",
            value=f.renewals_due,
        )
        yield _gauge("seats_webhook_events", "Stored events by outcome", f.events, "outcome")
        yield GaugeMetricFamily(
            "seats_webhook_oldest_pending_seconds",
            "Age of the oldest stored event not handled yet (0: none)",
            value=f.oldest_pending_event_seconds,
        )
        yield _gauge(
            "seats_webhook_lag_seconds",
            "Receipt to processed, over the last hour, by quantile",
            f.event_lag_seconds,
            "quantile",
        )
        yield _gauge("seats_alerts_open", "Open operator alerts by kind", f.alerts_open, "kind")

    def _broker(self) -> Iterator[Metric]:
        figures = queue_stats.queue_figures(self.broker)
        depth = {q.name: float(q.depth) for q in figures}
        age = {q.name: q.oldest_age_seconds or 0.0 for q in figures}
        yield _gauge("seats_queue_depth", "Messages waiting per queue", depth, "queue")
        yield _gauge(
            "seats_queue_oldest_seconds", "Age of the oldest message per queue", age, "queue"
        )
        yield GaugeMetricFamily(
            "seats_workers_online",
            "Worker processes whose heartbeat is fresh",
            value=len(queue_stats.workers_online(self.broker)),
        )
        for metric, text in (
            ("task_seconds", "Task run time, per task"),
            ("queue_wait_seconds", "Time from send to start, per task"),
        ):
            family = HistogramMetricFamily(f"seats_{metric}", text, labels=["task"])
            for histogram in queue_stats.histograms(self.broker, metric):
                family.add_metric([histogram.task], histogram.cumulative, sum_value=histogram.sum)
            yield family


def http_metrics() -> tuple[Counter, Histogram]:
    """Created once per process; in multiprocess mode they write to its files."""
    shared_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    registry = None if shared_dir else CollectorRegistry()
    return (
        Counter(
            "seats_http_requests",
            "HTTP requests",
            ["method", "endpoint", "status"],
            registry=registry,
        ),
        Histogram(
            "seats_http_request_seconds", "HTTP request latency", ["endpoint"], registry=registry
        ),
    )


_http: tuple[Counter, Histogram] | None = None


def scrape_registry(runtime: Runtime, broker: redis.Redis) -> CollectorRegistry:
    """The registry `/metrics` renders: state at scrape time, plus every process's HTTP
    counters (multiprocess) or this process's (single process: tests, `flask run`)."""
    global _http
    if _http is None:
        _http = http_metrics()
    registry = CollectorRegistry()
    registry.register(StateCollector(runtime, broker))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        for metric in _http:
            registry.register(metric)
    return registry


def observe() -> tuple[Callable[[], None], Callable[[Response], Response]]:
    assert _http is not None, "scrape_registry() first"
    requests_total, latency = _http

    def start() -> None:
        g.started = time.perf_counter()
        # each request logs with its own id (a caller's X-Request-Id when it sends one)
        structlog.contextvars.clear_contextvars()
        given = request.headers.get("X-Request-Id", "")
        log_lines.bind(request_id=given[:64] if given.isprintable() and given else uuid4().hex)

    def finish(response: Response) -> Response:
        endpoint = request.endpoint or "unknown"
        requests_total.labels(request.method, endpoint, str(response.status_code)).inc()
        if "started" in g:
            latency.labels(endpoint).observe(time.perf_counter() - g.started)
        return response

    return start, finish


@metrics.get("/metrics")
def scrape() -> Response:
    return Response(generate_latest(parts().metrics), mimetype=CONTENT_TYPE_LATEST)
