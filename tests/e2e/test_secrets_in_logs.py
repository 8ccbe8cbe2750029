"""README "Security": secrets (Stripe key, webhook secret, API tokens) are never logged, and
card numbers never reach us. A purchase and its webhook run end to end, then every log line
the web (this process) and the worker (its log file) wrote is searched for them."""

from __future__ import annotations

import logging
import secrets
import threading
from pathlib import Path

import pytest
import redis

from shared.bootstrap import Runtime
from tests.conftest import Client, Server, Tenant, Worker
from tests.e2e.stripe_helpers import GOOD, buy, new_card, stripe_client, wait_for
from tests.e2e.test_webhooks import event_around, intent_of, post_event, sign, wait_processed

pytestmark = pytest.mark.e2e


def test_no_secret_is_ever_logged(
    stack_runtime: Runtime,
    stack_web: Server,
    worker_env: dict[str, str],
    tmp_path: Path,
    stripe_base: str,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("seats", "werkzeug"):
        caplog.set_level(logging.DEBUG, logger=name)
    stripe_key = f"sk_test_{secrets.token_hex(16)}"  # one no other process uses
    webhook_secret = str(stack_runtime.settings.stripe_webhook_secret)
    redis.Redis.from_url(redis_url).flushdb()
    worker = Worker(worker_env, tmp_path / "worker.log")
    worker.start(STRIPE_API_KEY=stripe_key)
    try:
        shop = Tenant(stack_runtime, stack_web.url)
        token = str(shop.buyer.session.headers["Authorization"]).removeprefix("Bearer ")
        purchase = buy(shop.buyer, shop.sub, 5, "no-secrets", new_card(stripe_base, GOOD))
        assert wait_for(shop.buyer, purchase)["status"] == "succeeded"

        intent = stripe_client(stripe_base).v1.payment_intents.retrieve(
            intent_of(stack_runtime, purchase)
        )
        event_id = f"evt_no_secrets_{purchase}"
        body = event_around(intent.to_dict(), "payment_intent.succeeded", event_id)
        assert post_event(stack_web, body, sign(body, webhook_secret)).status_code == 200
        assert wait_processed(stack_runtime, event_id).outcome == "processed"
        # refusals are where a careless handler logs what it was given
        forged = sign(body.replace(b"no_secrets", b"no_secretz"), "whsec_" + webhook_secret)
        assert post_event(stack_web, body, forged).status_code == 400
        wrong = Client(stack_web.url, token[::-1])
        assert wrong.get(f"/api/purchases/{purchase}").status_code == 401
        assert shop.buyer.get("/api/purchases/999999999").status_code == 404
    finally:
        worker.stop()
    worker_log = worker.log.read_text(errors="replace")
    # the worker did the work this test looks at
    assert "seats.charge_purchase" in worker_log and "seats.drain_events" in worker_log
    # the web serves each request in a thread of its own; this thread is the test's browser
    # (Stripe.js sends the card number to Stripe) and auditor, whose client logs are not ours
    web_log = "\n".join(
        f"{caplog.handler.format(record)} {record.__dict__}"
        for record in caplog.records
        if record.threadName != threading.current_thread().name
    )
    assert "/webhooks/stripe" in web_log and "/api/checkout" in web_log
    for name, value in [
        ("the Stripe key", stripe_key),
        ("the webhook secret", webhook_secret),
        ("the API token", token),
        ("the card number", GOOD),
    ]:
        assert value not in worker_log, f"{name} is in the worker's log"
        assert value not in web_log, f"{name} is in the web's log"
