"""schemathesis against the API's own description (README "The API's description"), on the app
over a real socket: every operation, valid and invalid requests, sent with each role's token
(owner, buyer, member), another organization's owner, a wrong token and none, at this
organization's ids and at the other's. Never a 5xx, every answer as described, and a refused
request (4xx) changes nothing.

SEATS_FUZZ_EXAMPLES sets the examples per operation and mode (25 by default: about 12 s).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
import requests
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core import NOT_SET
from sqlalchemy import text

from shared.bootstrap import Runtime
from shared.payments.fake_stripe import FakeStripe
from shared.services import provisioning
from tests.conftest import Client, Server, Tenant
from tests.integration.test_plan_status import renewal_failed

EXAMPLES = int(os.environ.get("SEATS_FUZZ_EXAMPLES", "25"))

CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]
NEGATIVE_CHECKS = [*CHECKS, schemathesis.checks.negative_data_rejection]

TABLES = (
    "organizations",
    "subscriptions",
    "renewals",
    "seat_changes",
    "cart_items",
    "purchases",
    "purchase_items",
)
"""What a request may change: a refused one must leave every row of these as it was."""


def described_operations() -> list[Any]:
    """The description's operations, read without a server (for the test ids), in both
    modes; an operation that takes nothing (no token, parameter or body) has no invalid
    request to make."""
    from web.api import api
    from web.openapi import document

    app = Flask(__name__)
    app.register_blueprint(api)
    with app.test_request_context():
        paths = document()["paths"]
    cases = []
    for path, item in paths.items():
        for method, operation in item.items():
            takes = operation["parameters"] or "requestBody" in operation
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if mode == GenerationMode.POSITIVE or takes or operation.get("security") != []:
                    cases.append(
                        pytest.param(
                            f"{method.upper()} {path}",
                            mode,
                            id=f"{method.upper()} {path} {mode.value}",
                        )
                    )
    return cases


@dataclass
class World:
    """Two organizations with plans, carts and purchases, and who may knock."""

    home: Tenant
    away: Tenant
    tokens: dict[str, str | None]
    ids: dict[str, list[int]]
    seen: Counter[tuple[str, str, int]]


def purchase(tenant: Tenant, client: Client, seats: int, key: str) -> int:
    added = client.post(
        "/api/cart/items",
        json={"subscription_id": tenant.sub, "active_seats": seats, "confirm": True},
    )
    assert added.status_code == 201, added.text
    paid = client.post("/api/checkout", json={}, headers={"Idempotency-Key": key})
    assert paid.status_code == 202, paid.text
    made: int = paid.json()["purchase_id"]
    return made


def cart_line(tenant: Tenant, client: Client, seats: int) -> int:
    added = client.post(
        "/api/cart/items",
        json={"subscription_id": tenant.sub, "active_seats": seats, "confirm": True},
    )
    assert added.status_code == 201, added.text
    line: int = added.json()["items"][0]["id"]
    return line


def token_of(client: Client) -> str:
    return client.session.headers["Authorization"].removeprefix("Bearer ")


def dress(tenant: Tenant, runtime: Runtime, fake_stripe: FakeStripe) -> dict[str, list[int]]:
    """A saved card, a pending and a failed purchase, cart lines, a past-due second plan."""
    saved = tenant.owner.put("/api/payment-method", json={"payment_method": fake_stripe.card()})
    assert saved.status_code == 200, saved.text
    pending = purchase(tenant, tenant.owner, 5, f"pending-{tenant.org}")
    failed = purchase(tenant, tenant.buyer, 6, f"failed-{tenant.org}")
    with runtime.engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE purchases SET status = 'failed', failure_code = 'card_declined', "
                "failure_message = 'Your card was declined.' WHERE id = :id"
            ),
            {"id": failed},
        )
    lines = [cart_line(tenant, tenant.owner, 4), cart_line(tenant, tenant.buyer, 7)]
    late = provisioning.create_subscription(
        runtime.uow(), tenant.org, "XLGL", 1200, "month", 2, date.today() - timedelta(days=40)
    )
    renewal_failed(cast(Tenant, SimpleNamespace(runtime=runtime, sub=late)), "past_due")
    return {"subscription": [tenant.sub, late], "purchase": [pending, failed], "item": lines}


@pytest.fixture(scope="module")
def world(fake_runtime: Runtime, quiet_web: Server, fake_stripe: FakeStripe) -> World:
    home = Tenant(fake_runtime, quiet_web.url)
    away = Tenant(fake_runtime, quiet_web.url)
    ids: dict[str, list[int]] = {}
    for tenant in (home, away):
        for kind, found in dress(tenant, fake_runtime, fake_stripe).items():
            ids.setdefault(kind, []).extend(found)
    tokens: dict[str, str | None] = {
        role: token_of(home.clients[role]) for role in ("owner", "buyer", "member")
    }
    tokens["outsider"] = token_of(away.owner)
    tokens["wrong token"] = "seat_" + "0" * 40
    tokens["no token"] = None
    return World(home, away, tokens, ids, Counter())


@pytest.fixture(scope="module")
def schema(quiet_web: Server, world: World) -> Any:
    return schemathesis.openapi.from_url(f"{quiet_web.url}/api/openapi.json")


def snapshot(runtime: Runtime) -> dict[str, str]:
    """Every row of the tables a request may change, as text."""
    with runtime.engine.connect() as connection:
        return {
            table: connection.scalar(
                text(
                    f"SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t.id), '') FROM {table} t"  # noqa: S608
                )
            )
            for table in TABLES
        }


def test_every_success_answers_as_described(
    schema: Any, fake_runtime: Runtime, quiet_web: Server, fake_stripe: FakeStripe
) -> None:
    """The README's walk through, each answer checked against the description (random
    requests seldom find the way to a 201 or a retry's 202)."""
    shop = Tenant(fake_runtime, quiet_web.url)
    ids = dress(shop, fake_runtime, fake_stripe)
    sub, late = ids["subscription"]
    owner = {"Authorization": f"Bearer {token_of(shop.owner)}"}
    buyer = {"Authorization": f"Bearer {token_of(shop.buyer)}"}
    walk: list[tuple[str, dict[str, Any], dict[str, Any], int]] = [
        ("GET /api/subscriptions/{subscription_id}", {"subscription_id": sub}, {}, 200),
        ("GET /api/subscriptions/{subscription_id}", {"subscription_id": late}, {}, 200),
        ("POST /api/subscriptions/{subscription_id}/quote", {"subscription_id": sub},
         {"body": {"active_seats": 9}}, 200),
        ("PUT /api/subscriptions/{subscription_id}/seats", {"subscription_id": sub},
         {"body": {"active_seats": 2}}, 200),
        ("PUT /api/subscriptions/{subscription_id}/seats", {"subscription_id": sub},
         {"body": {"active_seats": 9}}, 409),
        ("POST /api/cart/items", {},
         {"body": {"subscription_id": sub, "active_seats": 9, "confirm": False}}, 409),
        ("POST /api/cart/items", {},
         {"body": {"subscription_id": sub, "active_seats": 9, "confirm": True}}, 201),
        ("GET /api/cart", {}, {}, 200),
        ("DELETE /api/cart/items/{item_id}", {"item_id": ids["item"][1]}, {"headers": buyer}, 204),
        ("POST /api/checkout", {},
         {"body": {"payment_method": fake_stripe.card()}, "headers": {"Idempotency-Key": "a"}},
         202),
        ("GET /api/purchases/{purchase_id}", {"purchase_id": ids["purchase"][0]}, {}, 200),
        ("PUT /api/payment-method", {}, {"body": {"payment_method": fake_stripe.card()}}, 200),
        ("GET /api/openapi.json", {}, {}, 200),
    ]  # fmt: skip
    for label, path, extra, status in walk:
        operation = schema.find_operation_by_label(label)
        case = operation.Case(
            path_parameters=path or None,
            body=extra.get("body", NOT_SET),
            headers={**owner, **extra.get("headers", {})},
        )
        response = case.call(base_url=quiet_web.url)
        assert response.status_code == status, (label, response.text)
        case.validate_response(response, checks=CHECKS, headers=case.headers)
    # a failed purchase paid again, by its own buyer
    operation = schema.find_operation_by_label("POST /api/purchases/{purchase_id}/retry")
    case = operation.Case(
        path_parameters={"purchase_id": ids["purchase"][1]},
        body={"payment_method": fake_stripe.card()},
        headers={**buyer, "Idempotency-Key": "again"},
    )
    response = case.call(base_url=quiet_web.url)
    assert response.status_code == 202, response.text
    assert response.json()["retry_of"] == ids["purchase"][1]
    case.validate_response(response, checks=CHECKS, headers=case.headers)


@pytest.mark.parametrize(("label", "mode"), described_operations())
def test_no_5xx_answers_as_described_and_refusals_change_nothing(
    label: str,
    mode: GenerationMode,
    schema: Any,
    world: World,
    fake_runtime: Runtime,
    quiet_web: Server,
) -> None:
    operation = schema.find_operation_by_label(label)
    assert operation is not None, label
    path_names = [p.name for p in operation.path_parameters]
    known = [i for name in path_names for i in world.ids[name.removesuffix("_id")]]
    if label == "POST /api/cart/items":
        known = world.ids["subscription"]
    session = requests.Session()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        # half the time someone who may change things, three times in four a real id
        who=st.one_of(st.sampled_from(["owner", "buyer"]), st.sampled_from(sorted(world.tokens))),
        at=st.one_of(st.sampled_from(known or [0]), st.sampled_from(known or [0]), st.none()),
    )
    def knock(case: Any, who: str, at: int | None) -> None:
        if at is not None and mode == GenerationMode.POSITIVE:
            # a real id of either organization, not only the generated ones
            if path_names:
                case.path_parameters = {**(case.path_parameters or {}), path_names[0]: at}
            elif isinstance(case.body, dict) and "subscription_id" in case.body:
                case.body = {**case.body, "subscription_id": at}
        token = world.tokens[who]
        headers = dict(case.headers or {})
        headers.pop("Authorization", None)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        case.headers = headers
        before = snapshot(fake_runtime)
        response = case.call(base_url=quiet_web.url, session=session)
        world.seen[(label, who, response.status_code)] += 1
        case.validate_response(
            response,
            checks=NEGATIVE_CHECKS if mode == GenerationMode.NEGATIVE else CHECKS,
            headers=headers,
        )
        if 400 <= response.status_code < 500:
            after = snapshot(fake_runtime)
            changed = [table for table in TABLES if before[table] != after[table]]
            assert not changed, (label, who, response.status_code, response.text, changed)

    knock()


def test_the_fuzzing_reached_past_the_door(world: World) -> None:
    """Each kind of answer came back at least once (when the whole module ran)."""
    operations = {label for label, _, _ in world.seen}
    if len(operations) < len(described_operations()) // 2 or EXAMPLES < 10:
        pytest.skip("only part of the fuzzing ran")
    codes = {status for _, _, status in world.seen}
    assert {200, 400, 401, 403, 404, 409, 422} <= codes, world.seen
    assert codes & {201, 202, 204}, world.seen
    print(f"fuzzing: {sum(world.seen.values())} requests, answers {sorted(codes)}")
