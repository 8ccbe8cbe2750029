"""Signed bodies of any shape posted to /webhooks/stripe (hypothesis): events with odd or
garbage objects, huge numbers, wrong types for ids and types, JSON that is not an event,
bytes that are not JSON. Each is signed with the endpoint's secret, so it reaches the code
behind the signature check, as only Stripe could make it reach.

Never a 5xx. A body that is not an event is a 400 and stores nothing; an event is stored
(`invalid` at once when our database cannot hold it as sent) and then, handled as the
worker handles it, ends `processed`, `ignored` or `invalid`: never an exception the worker
would retry until it gives up.

SEATS_FUZZ_EXAMPLES sets the examples (25 by default, times four here: one post is cheap).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from typing import Any

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from shared import queues
from shared.bootstrap import Runtime
from shared.payments.fake_stripe import FakeStripe
from shared.services import webhooks
from shared.store.models import WebhookEvent
from tests.conftest import Server, Tenant
from tests.strategies import anything

EXAMPLES = int(os.environ.get("SEATS_FUZZ_EXAMPLES", "25")) * 4

stripe_ids = st.from_regex(r"(pi|ch|cus|pm|dp)_[A-Za-z0-9]{1,24}", fullmatch=True)
objects = st.fixed_dictionaries(
    {"id": st.one_of(stripe_ids, stripe_ids, anything)},
    optional={
        "object": anything,
        "payment_intent": st.one_of(stripe_ids, anything),
        "amount": st.one_of(st.integers(0, 10**9), st.integers(), anything),
        "amount_refunded": st.one_of(st.integers(0, 10**9), st.integers(), anything),
        "currency": anything,
        "customer": st.one_of(stripe_ids, anything),
        "metadata": st.one_of(
            anything,
            st.dictionaries(
                st.sampled_from(["purchase_id", "renewal_id"]),
                st.one_of(st.integers(min_value=0, max_value=50).map(str), anything),
                max_size=2,
            ),
        ),
        "invoice_settings": st.one_of(
            anything,
            st.fixed_dictionaries({"default_payment_method": st.one_of(stripe_ids, anything)}),
        ),
    },
)
events = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"evt_[A-Za-z0-9]{16}", fullmatch=True),
        "type": st.one_of(
            st.sampled_from(sorted(webhooks.HANDLERS)),
            st.sampled_from(["invoice.paid", "charge.succeeded"]),
        ),
        "data": st.fixed_dictionaries({"object": objects}),
    },
    optional={"object": st.just("event"), "created": st.integers(), "livemode": anything},
)
"""Well formed: stored, then handled (whatever their objects hold)."""
not_events = st.one_of(
    st.fixed_dictionaries({"id": anything, "type": anything, "data": anything}),
    anything,
)
garbage = st.one_of(
    not_events.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
    st.integers(min_value=1, max_value=5000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.sampled_from([b"1e400", b"NaN", b'{"id": "evt_1", "type": "x", "data": {"object": 1e999}}']),
)
"""Not an event: refused."""
bodies = st.integers(min_value=0, max_value=9).flatmap(
    lambda n: events.map(lambda event: json.dumps(event).encode()) if n < 7 else garbage
)


def sign(body: bytes, secret: str) -> str:
    """Stripe's scheme over the raw bytes (whatever they are)."""
    stamp = int(time.time())
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def stored_outcome(runtime: Runtime, event_id: str) -> tuple[bool, str | None]:
    with runtime.uow() as uow:
        row = uow.session.execute(
            select(WebhookEvent.outcome).where(WebhookEvent.id == event_id)
        ).one_or_none()
    return (row is not None, row[0] if row else None)


def test_any_signed_body_gets_a_known_answer_and_a_stored_event_ends_handled(
    fake_runtime: Runtime, quiet_web: Server, fake_stripe: FakeStripe
) -> None:
    shop = Tenant(fake_runtime, quiet_web.url)
    saved = shop.owner.put("/api/payment-method", json={"payment_method": fake_stripe.card()})
    assert saved.status_code == 200, saved.text
    secret = str(fake_runtime.settings.stripe_webhook_secret).split(",")[0]
    session = requests.Session()
    answers: dict[int | str, int] = {}  # statuses, and what the worker made of the events

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=bodies)
    def posted(body: bytes) -> None:
        try:  # each example an event of its own: a duplicate would say nothing new
            event: Any = json.loads(body)
            if isinstance(event, dict) and isinstance(event.get("id"), str):
                event["id"] = event["id"] + secrets.token_hex(4)
                body = json.dumps(event).encode()
        except (ValueError, UnicodeDecodeError, RecursionError):
            event = None
        answer = session.post(
            f"{quiet_web.url}/webhooks/stripe",
            data=body,
            headers={"Stripe-Signature": sign(body, secret), "Content-Type": "application/json"},
            timeout=30,
        )
        answers[answer.status_code] = answers.get(answer.status_code, 0) + 1
        assert answer.status_code in (200, 400, 413), (body[:300], answer.text)
        assert answer.headers["Content-Type"] == "application/json"
        event_id = event.get("id") if isinstance(event, dict) else None
        if answer.status_code != 200:
            assert "error" in answer.json()
            if isinstance(event_id, str):
                assert stored_outcome(fake_runtime, event_id) == (False, None), body[:300]
            return
        assert answer.json() == {"received": True, "duplicate": False}
        assert isinstance(event_id, str)
        found, outcome = stored_outcome(fake_runtime, event_id)
        assert found and outcome in (None, "ignored", "invalid"), (body[:300], outcome)
        if outcome is None:  # the worker's turn
            handled, _ = webhooks.process_event(fake_runtime.uow(), fake_stripe, event_id)
            assert handled in ("processed", "ignored", "invalid"), body[:300]
            answers[handled] = answers.get(handled, 0) + 1

    posted()
    assert answers.get(200) and answers.get(400), answers
    # new events were handed to the worker (a drain; kept here: no broker message is left)
    assert any(name == queues.DRAIN_EVENTS for name, _ in quiet_web.sent)  # type: ignore[attr-defined]
