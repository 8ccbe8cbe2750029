"""Health for load balancers: /healthz (web, database, broker) and /readyz (and a worker)."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from shared.services import queue_stats
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


@health.get("/readyz")
def readyz() -> Response:
    """Healthy, and at least one worker answers (its heartbeat is fresh): work will flow."""
    base = healthz()
    try:
        workers = len(queue_stats.workers_online(parts().broker))
    except redis.RedisError:
        workers = 0
    body = dict(base.get_json() or {})
    body["workers"] = workers
    ready = base.status_code == 200 and workers > 0
    body["status"] = "ok" if ready else "not_ready"
    response = jsonify(body)
    response.status_code = 200 if ready else 503
    return response
