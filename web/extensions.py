"""What the app keeps for its views, in one place: typed access to `app.extensions`."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import Flask, current_app
from prometheus_client import CollectorRegistry

from shared.bootstrap import Runtime
from shared.queues import Dispatcher

KEY = "seats"


@dataclass(frozen=True)
class Parts:
    runtime: Runtime
    dispatcher: Dispatcher
    broker: redis.Redis
    metrics: CollectorRegistry
    webhook_secrets: tuple[str, ...]


def install(app: Flask, parts: Parts) -> None:
    app.extensions[KEY] = parts


def parts() -> Parts:
    """The current app's parts; only valid inside a request or an app context."""
    found: Parts = current_app.extensions[KEY]
    return found


def runtime() -> Runtime:
    return parts().runtime


def dispatcher() -> Dispatcher:
    return parts().dispatcher
