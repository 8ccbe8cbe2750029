"""A PostgreSQL outage is a 503 with Retry-After, never a 500 (found by the chaos run)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import replace

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from shared.bootstrap import Runtime
from shared.cli.embedded import free_port
from shared.store.db import make_engine, make_session_factory
from tests.conftest import Client, Server, Tenant


def test_a_database_outage_answers_503_database_unavailable_with_retry_after(
    runtime: Runtime, web: Server
) -> None:
    from web import create_app

    shop = Tenant(runtime, web.url)
    token = shop.owner.session.headers["Authorization"]
    dead = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone", pool_size=1)
    down = Server(
        create_app(runtime=replace(runtime, engine=dead, sessions=make_session_factory(dead)))
    )
    event = json.dumps({"id": "evt_outage1", "type": "customer.updated", "data": {"object": {}}})
    stamp = int(time.time())
    secret = str(runtime.settings.stripe_webhook_secret).encode()
    signature = hmac.new(secret, f"{stamp}.{event}".encode(), hashlib.sha256).hexdigest()
    try:
        client = Client(down.url, None)
        client.session.headers["Authorization"] = token
        answers = [
            client.get(f"/api/subscriptions/{shop.sub}"),
            client.put(f"/api/subscriptions/{shop.sub}/seats", json={"active_seats": 2}),
            client.post(
                "/webhooks/stripe",
                data=event,
                headers={"Stripe-Signature": f"t={stamp},v1={signature}"},
            ),
        ]
    finally:
        down.close()
        dead.dispose()
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "database_unavailable"
        assert answer.headers["Retry-After"] == "5"
    # nothing changed while it was down; the real database still answers
    assert shop.owner.get(f"/api/subscriptions/{shop.sub}").json()["active_seats"] == 3


@pytest.mark.parametrize("state", ["40P01", "40001", "55P03", "57014", "54000", "53100"])
def test_a_statement_that_fails_on_a_reachable_database_is_a_500_not_an_outage(
    runtime: Runtime, state: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A deadlock or a timeout is a bug to see in the logs with its trace, not a 503."""
    from web import create_app
    from web.errors import database_down

    with pytest.raises(OperationalError) as raised, runtime.engine.connect() as connection:
        connection.execute(
            text(f"DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = '{state}'; END $$")
        )
    with create_app(runtime=runtime).test_request_context():
        answer = database_down(raised.value)
    assert answer.status_code == 500
    assert answer.get_json()["error"] == "internal_error"
    assert "Retry-After" not in answer.headers
    assert "unexpected error" in caplog.text
