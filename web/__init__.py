"""The Flask application factory: thin adapters over the services in `shared`."""

from __future__ import annotations

import logging

import redis
from flask import Flask

from shared import log_lines, queues
from shared.bootstrap import Runtime, build, require_production
from shared.config import Settings
from web import errors, extensions, i18n, security
from web.api import api
from web.enqueue import dispatcher
from web.health import health
from web.metrics import metrics, observe, scrape_registry
from web.ops import ops
from web.pages import pages
from web.webhooks import stripe_webhooks

MAX_BODY = 64 * 1024


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    settings = settings or (runtime.settings if runtime else Settings.from_env())
    if runtime is None:  # production: gunicorn 'web:create_app()'
        require_production(settings)
        log_lines.configure("web")
        runtime = build(settings)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key, MAX_CONTENT_LENGTH=MAX_BODY, JSON_SORT_KEYS=False
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    broker = redis.Redis.from_url(
        settings.redis_url or queues.LOCAL_REDIS, socket_timeout=2, socket_connect_timeout=2
    )
    registry = scrape_registry(runtime, broker)
    secrets = (settings.stripe_webhook_secret or "").split(",")
    extensions.install(
        app,
        extensions.Parts(
            runtime=runtime,
            dispatcher=dispatcher(settings.redis_url, broker),
            broker=broker,
            metrics=registry,
            webhook_secrets=tuple(secret.strip() for secret in secrets if secret.strip()),
        ),
    )
    start, finish = observe()
    app.before_request(start)
    app.after_request(finish)
    errors.register(app)
    security.install(app, settings.stripe_js_url, settings.public_url.startswith("https://"))
    i18n.install(app)
    for machine_facing in (api, health, metrics, stripe_webhooks):  # tokens, signatures
        security.csrf.exempt(machine_facing)
    security.csrf.exempt(ops)  # checked by the ops gate, once it knows an operator asks
    app.register_blueprint(api)
    app.register_blueprint(health)
    app.register_blueprint(metrics)
    app.register_blueprint(stripe_webhooks)
    app.register_blueprint(pages)
    app.register_blueprint(ops)
    logging.getLogger("seats").setLevel(logging.INFO)
    return app
