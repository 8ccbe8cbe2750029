"""Health for load balancers and Prometheus figures for operators."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import redis
from flask import Blueprint, Response, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text

from shared import queues
from shared.bootstrap import Runtime
from shared.services import monitoring
from web.extensions import parts

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz() -> Response:
    checks = {"web": "ok", "database": "ok", "broker": "ok"}
    try:
        with parts().runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:
        checks["database"] = "unavailable"
    try:
        parts().broker.ping()
    except Exception:
        checks["broker"] = "unavailable"
    healthy = all(value == "ok" for value in checks.values())
    response = jsonify({"status": "ok" if healthy else "degraded", **checks})
    response.status_code = 200 if healthy else 503
    return response


class StateCollector(Collector):
    """Read at scrape time from the database and the broker, so every web process agrees."""

    def __init__(self, runtime: Runtime, broker: redis.Redis) -> None:
        self.runtime = runtime
        self.broker = broker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        purchases = GaugeMetricFamily("seats_purchases", "Purchases by status", labels=["status"])
        for status, count in monitoring.purchase_counts(self.runtime.uow()).items():
            purchases.add_metric([status], count)
        yield purchases
        yield GaugeMetricFamily(
            "seats_purchases_parked",
            "Purchases waiting for an operator",
            value=monitoring.parked_purchases(self.runtime.uow()),
        )
        events = GaugeMetricFamily(
            "seats_webhook_events", "Stored events by outcome", labels=["outcome"]
        )
        for outcome, count in monitoring.event_counts(self.runtime.uow()).items():
            events.add_metric([outcome], count)
        yield events
        depth = GaugeMetricFamily(
            "seats_queue_depth", "Messages waiting per queue", labels=["queue"]
        )
        for queue in queues.ALL:
            try:
                depth.add_metric([queue], int(self.broker.llen(queue)))
            except redis.RedisError:
                continue
        yield depth
        renewals = GaugeMetricFamily(
            "seats_renewals", "Renewals by status (one per plan and period)", labels=["status"]
        )
        for status, count in monitoring.renewal_counts(self.runtime.uow()).items():
            renewals.add_metric([status], count)
        yield renewals
        plans = GaugeMetricFamily(
            "seats_subscriptions",
            "Plans by standing (active, past_due, suspended)",
            labels=["status"],
        )
        for status, count in monitoring.subscription_counts(self.runtime.uow()).items():
            plans.add_metric([status], count)
        yield plans
        yield GaugeMetricFamily(
            "seats_renewals_due",
            "Plans whose renewal date has come and whose period has not moved yet",
            value=monitoring.renewals_due(self.runtime.uow()),
        )


def install_metrics(
    app_registry: CollectorRegistry, runtime: Runtime, broker: redis.Redis
) -> tuple[Counter, Histogram]:
    app_registry.register(StateCollector(runtime, broker))
    requests_total = Counter(
        "seats_http_requests",
        "HTTP requests",
        ["method", "endpoint", "status"],
        registry=app_registry,
    )
    latency = Histogram(
        "seats_http_request_seconds", "HTTP request latency", ["endpoint"], registry=app_registry
    )
    return requests_total, latency


@health.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(parts().metrics), mimetype=CONTENT_TYPE_LATEST)


def observe(
    requests_total: Counter, latency: Histogram
) -> tuple[Callable[[], None], Callable[[Response], Response]]:
    def start() -> None:
        g.started = time.perf_counter()

    def finish(response: Response) -> Response:
        endpoint = request.endpoint or "unknown"
        requests_total.labels(request.method, endpoint, str(response.status_code)).inc()
        if "started" in g:
            latency.labels(endpoint).observe(time.perf_counter() - g.started)
        return response

    return start, finish
