"""Signed webhook bodies that are hostile, huge or from the future: a known answer, never a 500.

Signed with the real secret, so each reaches the code behind the signature check. No worker is
needed: where an event must be handled, the test calls the handler as the worker would.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests
import stripe
from sqlalchemy import select

from shared.bootstrap import Runtime
from shared.services import webhooks
from shared.store.models import OperatorAlert, WebhookEvent
from tests.conftest import Server

LIMIT = webhooks.MAX_EVENT_BYTES


@pytest.fixture
def secret(runtime: Runtime) -> str:
    return str(runtime.settings.stripe_webhook_secret)


def new_id() -> str:
    return f"evt_{secrets.token_hex(8)}"


def event(event_id: str, obj: Any, kind: str = "customer.updated") -> dict[str, Any]:
    return {"id": event_id, "object": "event", "type": kind, "data": {"object": obj}}


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    return stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp)


def post(
    web: Server, body: bytes, header: str | None, *, chunked: bool = False
) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 16 * 1024):
            yield body[start : start + 16 * 1024]

    data: Any = pieces() if chunked else body
    return requests.post(f"{web.url}/webhooks/stripe", data=data, headers=headers, timeout=30)


def stored(runtime: Runtime, event_id: str) -> WebhookEvent | None:
    with runtime.uow() as uow:
        found = uow.session.get(WebhookEvent, event_id)
        if found is not None:
            uow.session.expunge(found)
        return found


def alerts(runtime: Runtime, event_id: str) -> list[tuple[str, int | None]]:
    with runtime.uow() as uow:
        return [
            (alert.kind, alert.amount)
            for alert in uow.session.scalars(
                select(OperatorAlert).where(OperatorAlert.event_id == event_id)
            )
        ]


def assert_refused(answer: requests.Response, status: int, code: str | None = None) -> None:
    assert "Traceback" not in answer.text
    assert answer.status_code == status, (answer.status_code, answer.text)
    body = answer.json()
    assert {"error", "message"} <= set(body), body
    if code is not None:
        assert body["error"] == code, body


def around(obj: str, kind: str = "customer.updated") -> str:
    """An event's text around an object's text; `{id}` stands for the event id."""
    return '{"id": "{id}", "type": "' + kind + '", "data": {"object": ' + obj + "}}"


def nested(depth: int) -> str:
    """An event whose deepest value sits `depth` levels down (the event itself is level 1)."""
    return around('{"deep": ' + "[" * (depth - 3) + "]" * (depth - 3) + "}")


# --- not a Stripe event: 400 malformed_event, nothing stored ------------------------------------

NOT_EVENTS = {
    "NaN": around('{"balance": NaN}'),
    "Infinity": around('{"balance": Infinity}'),
    "-Infinity": around('{"balance": -Infinity}'),
    "a float past double": around('{"balance": 1e400}'),
    "3000 deep": nested(3000),
    "65 deep": nested(65),
    "object not an object": around("[]"),
    "data not an object": '{"id": "{id}", "type": "customer.updated", "data": []}',
    "type with capitals": around("{}", "Customer.Updated"),
    "type with a space": around("{}", "customer updated"),
    "type empty": around("{}", ""),
    "type too long": around("{}", "a" * 251),
    "type with a newline": around("{}", "customer.updated\\n"),
    "type not a string": '{"id": "{id}", "type": 5, "data": {"object": {}}}',
}
BAD_IDS = {
    "id too long": "evt_" + "a" * 251,
    "id empty suffix": "evt_",
    "id with a space": "evt_a b",
    "id with a newline": "evt_abc\n",
    "id with a NUL": "evt_abc\x00",
    "id not evt": "ch_abc",
}


@pytest.mark.parametrize("case", list(NOT_EVENTS))
def test_a_signed_body_that_is_not_a_stripe_event_is_400(
    web: Server, runtime: Runtime, secret: str, case: str
) -> None:
    event_id = new_id()
    body = NOT_EVENTS[case].replace("{id}", event_id).encode()
    assert_refused(post(web, body, sign(body, secret)), 400, "malformed_event")
    assert stored(runtime, event_id) is None


@pytest.mark.parametrize("case", list(BAD_IDS))
def test_a_signed_event_with_a_bad_id_is_400(
    web: Server, runtime: Runtime, secret: str, case: str
) -> None:
    body = json.dumps(event(BAD_IDS[case], {"id": "cus_1"})).encode()
    assert_refused(post(web, body, sign(body, secret)), 400, "malformed_event")
    for seen in {BAD_IDS[case].replace("\x00", mark) for mark in ("", "\ufffd")}:
        assert stored(runtime, seen) is None  # (a NUL cannot even be looked up)


def test_an_event_64_levels_deep_is_still_an_event(
    web: Server, runtime: Runtime, secret: str
) -> None:
    event_id = new_id()
    body = nested(64).replace("{id}", event_id).encode()
    answer = post(web, body, sign(body, secret))
    assert answer.status_code == 200, answer.text
    assert stored(runtime, event_id) is not None


def test_brackets_inside_strings_are_not_nesting(
    web: Server, runtime: Runtime, secret: str
) -> None:
    event_id = new_id()
    body = json.dumps(event(event_id, {"id": "cus_1", "name": "[{" * 3000 + '"\\'})).encode()
    answer = post(web, body, sign(body, secret))
    assert answer.status_code == 200, answer.text
    assert stored(runtime, event_id) is not None


# --- an event our database cannot hold as sent: stored `invalid` at once, with an alert ---------

UNSTORABLE = {
    "NUL in a value": ('{"id": "cus_1", "name": "a\\u0000b"}', "a\ufffdb"),
    "lone surrogate in a value": ('{"id": "cus_1", "name": "a\\ud800b"}', "a\ufffdb"),
    "lone low surrogate": ('{"id": "cus_1", "name": "\\udfff"}', "\ufffd"),
    "NUL in a key": ('{"id": "cus_1", "na\\u0000me": "x"}', "x"),
    "NUL in the object id": ('{"id": "cus_\\u0000", "name": "x"}', "x"),
}


@pytest.mark.parametrize("case", list(UNSTORABLE))
def test_a_well_formed_event_with_characters_postgres_refuses_is_stored_invalid(
    web: Server, runtime: Runtime, secret: str, case: str
) -> None:
    obj, name = UNSTORABLE[case]
    event_id = new_id()
    body = around(obj).replace("{id}", event_id).encode()
    for _ in range(2):  # Stripe may deliver it again: still one row, one alert
        answer = post(web, body, sign(body, secret))
        assert answer.status_code == 200, answer.text
    found = stored(runtime, event_id)
    assert found is not None
    assert found.outcome == "invalid" and found.processed_at is not None
    assert found.error
    text = json.dumps(found.payload, ensure_ascii=False)
    assert "\x00" not in text and "\\u0000" not in text
    assert name in found.payload["data"]["object"].values()
    assert found.object_id is None or "\x00" not in found.object_id
    assert alerts(runtime, event_id) == [("invalid_event", None)]
    # it counts as done: neither the sweep nor a second delivery's handling takes it up again
    assert event_id not in webhooks.unprocessed_events(runtime.uow(), older_than=-60)
    assert webhooks.process_event(runtime.uow(), runtime.gateway, event_id) == ("invalid", [])
    assert stored(runtime, event_id).attempts == found.attempts  # type: ignore[union-attr]


# --- amounts past what we can hold: the handler marks the event invalid, no retry forever -------

BAD_AMOUNTS: dict[str, Any] = {
    "past bigint": 2**70,
    "just past bigint": 2**63,
    "negative": -1,
    "a string": "100",
    "a float": 1.5,
    "a boolean": True,
    "missing": None,
}


@pytest.mark.parametrize("kind", ["charge.refunded", "charge.dispute.created"])
@pytest.mark.parametrize("case", list(BAD_AMOUNTS))
def test_an_amount_we_cannot_hold_makes_the_event_invalid_not_failed(
    web: Server, runtime: Runtime, secret: str, kind: str, case: str
) -> None:
    field = "amount_refunded" if kind == "charge.refunded" else "amount"
    obj: dict[str, Any] = {"id": "ch_big", "currency": "cad", "payment_intent": "pi_none"}
    if BAD_AMOUNTS[case] is not None:
        obj[field] = BAD_AMOUNTS[case]
    event_id = new_id()
    body = json.dumps(event(event_id, obj, kind)).encode()
    assert post(web, body, sign(body, secret)).status_code == 200
    assert webhooks.process_event(runtime.uow(), runtime.gateway, event_id) == ("invalid", [])
    found = stored(runtime, event_id)
    assert found is not None and found.outcome == "invalid", found and found.error
    assert found.error and field in found.error
    assert alerts(runtime, event_id) == [("invalid_event", None)]
    assert event_id not in webhooks.unprocessed_events(runtime.uow(), older_than=-60)
    assert webhooks.process_event(runtime.uow(), runtime.gateway, event_id) == ("invalid", [])


def test_the_largest_amount_we_hold_is_still_a_refund(
    web: Server, runtime: Runtime, secret: str
) -> None:
    obj = {"id": "ch_max", "currency": "cad", "amount_refunded": 2**63 - 1}
    event_id = new_id()
    body = json.dumps(event(event_id, obj, "charge.refunded")).encode()
    assert post(web, body, sign(body, secret)).status_code == 200
    assert webhooks.process_event(runtime.uow(), runtime.gateway, event_id) == ("processed", [])
    assert alerts(runtime, event_id) == [("refund", 2**63 - 1)]


# --- size: 413 past 256 KiB, also when the body is streamed (chunked) ---------------------------


def padded(event_id: str, size: int) -> bytes:
    """A valid event of exactly `size` bytes."""
    empty = json.dumps(event(event_id, {"id": "cus_pad", "pad": ""})).encode()
    body = json.dumps(event(event_id, {"id": "cus_pad", "pad": "x" * (size - len(empty))}))
    assert len(body) == size
    return body.encode()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_256_kib_is_413(
    web: Server, runtime: Runtime, secret: str, chunked: bool
) -> None:
    for size in (LIMIT + 1, 300 * 1024):
        event_id = new_id()
        body = padded(event_id, size)
        assert_refused(post(web, body, sign(body, secret), chunked=chunked), 413)
        assert stored(runtime, event_id) is None


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_of_up_to_256_kib_is_read(
    web: Server, runtime: Runtime, secret: str, chunked: bool
) -> None:
    for size in (200, LIMIT):
        event_id = new_id()
        body = padded(event_id, size)
        answer = post(web, body, sign(body, secret), chunked=chunked)
        assert answer.status_code == 200, (size, answer.text)
        assert stored(runtime, event_id) is not None


# --- a signature from the future is as bad as a stale one ---------------------------------------


@pytest.mark.parametrize("ahead", [3600, 400, 10**12])
def test_a_signature_timestamp_far_in_the_future_is_400(
    web: Server, runtime: Runtime, secret: str, ahead: int
) -> None:
    event_id = new_id()
    body = json.dumps(event(event_id, {"id": "cus_1"})).encode()
    answer = post(web, body, sign(body, secret, int(time.time()) + ahead))
    assert_refused(answer, 400, "bad_signature")
    assert stored(runtime, event_id) is None


def test_a_signature_timestamp_a_little_ahead_is_accepted(
    web: Server, runtime: Runtime, secret: str
) -> None:
    """Clocks drift: within the same 5 minutes either way, Stripe's time is fine."""
    event_id = new_id()
    body = json.dumps(event(event_id, {"id": "cus_1"})).encode()
    answer = post(web, body, sign(body, secret, int(time.time()) + 60))
    assert answer.status_code == 200, answer.text
    assert stored(runtime, event_id) is not None


def test_a_second_timestamp_from_the_future_is_refused_too(
    web: Server, runtime: Runtime, secret: str
) -> None:
    event_id = new_id()
    body = json.dumps(event(event_id, {"id": "cus_1"})).encode()
    header = sign(body, secret) + f",t={int(time.time()) + 3600}"
    assert_refused(post(web, body, header), 400, "bad_signature")
    assert stored(runtime, event_id) is None


def test_a_type_with_digits_is_an_event(web: Server, runtime: Runtime, secret: str) -> None:
    """Stripe has types such as `v1.billing.meter.error_report_triggered`; refusing them
    would make Stripe retry them for days."""
    event_id = new_id()
    body = around("{}", "v1.billing.meter.error_report_triggered").replace("{id}", event_id)
    answer = post(web, body.encode(), sign(body.encode(), secret))
    assert answer.status_code == 200, answer.text
    assert stored(runtime, event_id) is not None


# --- a secret roll: STRIPE_WEBHOOK_SECRET=old,new -----------------------------------------------


@pytest.fixture
def rolling_web(runtime: Runtime) -> Iterator[tuple[Server, str, str]]:
    """The app of a server whose webhook endpoint is in the middle of a secret roll."""
    from web import create_app

    old, new = f"whsec_old_{secrets.token_hex(8)}", f"whsec_new_{secrets.token_hex(8)}"
    settings = replace(runtime.settings, stripe_webhook_secret=f"{old},{new}")
    rolled = replace(runtime, settings=settings)
    server = Server(create_app(runtime=rolled))
    yield server, old, new
    server.close()


def test_during_a_secret_roll_both_secrets_are_accepted_and_no_other(
    rolling_web: tuple[Server, str, str], runtime: Runtime, secret: str
) -> None:
    server, old, new = rolling_web
    for signer in (old, new):
        event_id = new_id()
        body = json.dumps(event(event_id, {"id": "cus_roll"}, "customer.created")).encode()
        answer = post(server, body, sign(body, signer))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"received": True, "duplicate": False}
        assert stored(runtime, event_id) is not None
    for signer in (f"whsec_third_{secrets.token_hex(8)}", secret, f"{old},{new}"):
        event_id = new_id()
        body = json.dumps(event(event_id, {"id": "cus_roll"}, "customer.created")).encode()
        assert_refused(post(server, body, sign(body, signer)), 400, "bad_signature")
        assert stored(runtime, event_id) is None


def test_an_object_id_too_long_for_an_index_is_stored_not_a_5xx(
    web: Server, runtime: Runtime, secret: str
) -> None:
    """PostgreSQL refuses a btree entry over about 2.7 KB: the event is stored without it."""
    event_id = new_id()
    obj = {"id": "pi_" + secrets.token_hex(3000), "object": "payment_intent"}
    body = json.dumps(event(event_id, obj, "payment_intent.succeeded")).encode()
    answer = post(web, body, sign(body, secret))
    assert answer.status_code == 200, answer.text
    row = stored(runtime, event_id)
    assert row is not None and row.object_id is None
    assert row.payload["data"]["object"]["id"] == obj["id"]
