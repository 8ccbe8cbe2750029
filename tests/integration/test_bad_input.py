"""Bad requests over the real socket: a clear JSON refusal, never a 500, and nothing changed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.domain.seats import MAX_SEATS
from tests.conftest import Client, Server, Tenant

JSON_HEADERS = {"Content-Type": "application/json"}
MAX_BODY = 64 * 1024

# (name, method, path for the tenant's plan, body around an active_seats value)
Body = Callable[[Tenant, Any], dict[str, Any]]
SEAT_ENDPOINTS: list[tuple[str, str, Callable[[Tenant], str], Body]] = [
    (
        "seats",
        "PUT",
        lambda t: f"/api/subscriptions/{t.sub}/seats",
        lambda t, v: {"active_seats": v},
    ),
    (
        "quote",
        "POST",
        lambda t: f"/api/subscriptions/{t.sub}/quote",
        lambda t, v: {"active_seats": v},
    ),
    (
        "cart",
        "POST",
        lambda t: "/api/cart/items",
        lambda t, v: {"subscription_id": t.sub, "active_seats": v, "confirm": True},
    ),
]
ALL_ENDPOINTS = [(name, method, path) for name, method, path, _ in SEAT_ENDPOINTS] + [
    ("checkout", "POST", lambda t: "/api/checkout"),
]
SEAT_IDS = [name for name, *_ in SEAT_ENDPOINTS]
ALL_IDS = [name for name, *_ in ALL_ENDPOINTS]


def send(
    client: Client, method: str, path: str, raw: bytes | str | None = None, **kwargs: Any
) -> requests.Response:
    headers = {**JSON_HEADERS, "Idempotency-Key": "bad-input-test", **kwargs.pop("headers", {})}
    return client.request(method, path, data=raw, headers=headers, **kwargs)


def assert_error(
    answer: requests.Response, status: int, *, code: str | None = None, naming: str | None = None
) -> dict[str, Any]:
    """What a client relies on: the status, a JSON {"error", "message"}, no stack trace."""
    assert "Traceback" not in answer.text, answer.text
    assert answer.status_code == status, (answer.status_code, answer.text)
    assert answer.headers["Content-Type"].startswith("application/json"), answer.headers
    body = answer.json()
    assert isinstance(body, dict) and {"error", "message"} <= set(body), body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    if code is not None:
        assert body["error"] == code, body
    if naming is not None:
        assert naming in body["message"], body
    return body


def assert_untouched(tenant: Tenant) -> None:
    """The user's check: the plan still shows 3 of 3 and the cart is still empty."""
    plan = tenant.owner.get(f"/api/subscriptions/{tenant.sub}")
    assert plan.status_code == 200, plan.text
    assert (plan.json()["paid_seats"], plan.json()["active_seats"]) == (3, 3)
    for role in ("owner", "buyer"):
        cart = tenant.clients[role].get("/api/cart")
        assert cart.status_code == 200, cart.text
        assert cart.json()["items"] == []


@pytest.fixture
def plan(tenant: Tenant) -> Iterator[Tenant]:
    yield tenant
    assert_untouched(tenant)


# --- 400: not JSON, or JSON that is not an object -----------------------------------------------

MALFORMED = [
    b"{",
    b'{"active_seats": 2',
    b"{'active_seats': 2}",
    b'{"active_seats": 2}}',
    b'{"active_seats": 2,}',
    b"active_seats=2",
    b"\xff\xfe\xfa",
    b'{"active_seats": 2} {"active_seats": 3}',
]


@pytest.mark.parametrize(("name", "method", "path"), ALL_ENDPOINTS, ids=ALL_IDS)
@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_json_is_400(
    plan: Tenant, name: str, method: str, path: Callable[[Tenant], str], raw: bytes
) -> None:
    assert_error(send(plan.buyer, method, path(plan), raw), 400)


@pytest.mark.parametrize(("name", "method", "path"), ALL_ENDPOINTS, ids=ALL_IDS)
@pytest.mark.parametrize("value", [[], [{"active_seats": 2}], "active_seats", "5", 5, True, None])
def test_json_that_is_not_an_object_is_400(
    plan: Tenant, name: str, method: str, path: Callable[[Tenant], str], value: Any
) -> None:
    body = assert_error(send(plan.buyer, method, path(plan), json.dumps(value)), 400)
    assert "object" in body["message"]


def test_deeply_nested_json_is_400_not_a_crash(plan: Tenant) -> None:
    depth = 5_000  # under the size limit, far over the parser's recursion limit
    for raw in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        assert len(raw) < MAX_BODY
        answer = send(plan.buyer, "PUT", f"/api/subscriptions/{plan.sub}/seats", raw)
        assert_error(answer, 400)


def test_a_number_too_long_to_read_is_refused_not_a_crash(plan: Tenant) -> None:
    raw = '{"active_seats": ' + "9" * 5000 + "}"
    answer = send(plan.buyer, "PUT", f"/api/subscriptions/{plan.sub}/seats", raw)
    assert answer.status_code in (400, 422), answer.text
    assert_error(answer, answer.status_code)


# --- 422: a JSON object with a missing, unknown or wrong field ----------------------------------

BAD_SEATS = ["5", 5.0, True, None, 0, -1, 10**30, MAX_SEATS + 1, [2], {"n": 2}, 2.5, ""]


@pytest.mark.parametrize(("name", "method", "path", "body"), SEAT_ENDPOINTS, ids=SEAT_IDS)
@pytest.mark.parametrize("value", BAD_SEATS, ids=repr)
def test_a_wrong_active_seats_is_422_naming_the_field(
    plan: Tenant, name: str, method: str, path: Callable[[Tenant], str], body: Body, value: Any
) -> None:
    answer = send(plan.buyer, method, path(plan), json.dumps(body(plan, value)))
    assert_error(answer, 422, naming="active_seats")


@pytest.mark.parametrize(("name", "method", "path", "body"), SEAT_ENDPOINTS, ids=SEAT_IDS)
def test_a_missing_active_seats_is_422_naming_the_field(
    plan: Tenant, name: str, method: str, path: Callable[[Tenant], str], body: Body
) -> None:
    without = {k: v for k, v in body(plan, 2).items() if k != "active_seats"}
    answer = send(plan.buyer, method, path(plan), json.dumps(without))
    assert_error(answer, 422, naming="active_seats")
    empty = send(plan.buyer, method, path(plan), b"")
    assert_error(empty, 422, naming="active_seats")


@pytest.mark.parametrize(("name", "method", "path", "body"), SEAT_ENDPOINTS, ids=SEAT_IDS)
def test_an_unknown_field_is_422_naming_it(
    plan: Tenant, name: str, method: str, path: Callable[[Tenant], str], body: Body
) -> None:
    answer = send(plan.buyer, method, path(plan), json.dumps({**body(plan, 2), "paid_seats": 99}))
    assert_error(answer, 422, naming="paid_seats")


def test_cart_needs_a_valid_subscription_id_and_a_real_confirm(plan: Tenant) -> None:
    for bad in (
        {"active_seats": 5, "confirm": True},
        {"subscription_id": str(plan.sub), "active_seats": 5, "confirm": True},
    ):
        answer = send(plan.buyer, "POST", "/api/cart/items", json.dumps(bad))
        assert_error(answer, 422, naming="subscription_id")
    truthy = {"subscription_id": plan.sub, "active_seats": 5, "confirm": "yes"}
    answer = send(plan.buyer, "POST", "/api/cart/items", json.dumps(truthy))
    assert_error(answer, 422, naming="confirm")


def test_checkout_refuses_unknown_fields_and_wrong_types(plan: Tenant) -> None:
    for body, field in (
        ({"payment_method": 5}, "payment_method"),
        ({"payment_method": ["pm_card_visa"]}, "payment_method"),
        ({"card": "pm_card_visa"}, "card"),
    ):
        answer = send(plan.buyer, "POST", "/api/checkout", json.dumps(body))
        assert_error(answer, 422, naming=field)


def test_a_bad_body_is_refused_the_same_for_a_strangers_plan_and_a_missing_one(
    plan: Tenant, other_tenant: Tenant
) -> None:
    """Validation must not become a way to learn that another tenant's plan exists."""
    stranger = other_tenant.owner
    for raw in ('{"active_seats": "5"}', '{"active_seats": 2}', "[]", "{"):
        theirs = send(stranger, "PUT", f"/api/subscriptions/{plan.sub}/seats", raw)
        missing = send(stranger, "PUT", "/api/subscriptions/999999999/seats", raw)
        assert theirs.status_code in (400, 404, 422)
        assert (theirs.status_code, theirs.json()) == (missing.status_code, missing.json())
    assert_untouched(other_tenant)


# --- 404 for ids that cannot exist, unknown routes; 405; 413 ------------------------------------

IMPOSSIBLE_IDS = [2**70, 2**63, 2**63 - 1, 0, -1, -(2**70)]
ID_ROUTES = [
    ("GET", "/api/subscriptions/{}"),
    ("POST", "/api/subscriptions/{}/quote"),
    ("PUT", "/api/subscriptions/{}/seats"),
    ("DELETE", "/api/cart/items/{}"),
    ("GET", "/api/purchases/{}"),
]


@pytest.mark.parametrize(("method", "route"), ID_ROUTES)
@pytest.mark.parametrize("ident", IMPOSSIBLE_IDS, ids=str)
def test_ids_out_of_range_are_404(plan: Tenant, method: str, route: str, ident: int) -> None:
    answer = send(plan.owner, method, route.format(ident), json.dumps({"active_seats": 2}))
    assert_error(answer, 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/nothing-here"),
        ("GET", "/nothing-here"),
        ("GET", "/api/subscriptions/abc"),
        ("PUT", "/api/subscriptions/1.5/seats"),
        ("POST", "/api/subscriptions/1/seats/extra"),
        ("GET", "/api/subscriptions/%F0%9F%92%A5"),
    ],
)
def test_unknown_routes_are_404_json(plan: Tenant, method: str, path: str) -> None:
    assert_error(send(plan.owner, method, path, "{}"), 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/checkout", "POST"),
        ("PUT", "/api/checkout", "POST"),
        ("DELETE", "/api/subscriptions/{sub}/seats", "PUT"),
        ("POST", "/api/subscriptions/{sub}/seats", "PUT"),
        ("GET", "/api/subscriptions/{sub}/quote", "POST"),
        ("PATCH", "/api/subscriptions/{sub}", "GET"),
        ("PUT", "/api/cart/items", "POST"),
    ],
)
def test_a_wrong_method_is_405_json_saying_which_are_allowed(
    plan: Tenant, method: str, path: str, allowed: str
) -> None:
    answer = send(plan.owner, method, path.format(sub=plan.sub), json.dumps({"active_seats": 1}))
    assert_error(answer, 405)
    assert allowed in answer.headers.get("Allow", ""), answer.headers


@pytest.mark.parametrize(("name", "method", "path"), ALL_ENDPOINTS, ids=ALL_IDS)
def test_a_body_over_64_kib_is_413_json(
    plan: Tenant, name: str, method: str, path: Callable[[Tenant], str]
) -> None:
    raw = json.dumps({"active_seats": 1, "padding": "x" * (MAX_BODY + 10)})
    assert_error(send(plan.buyer, method, path(plan), raw), 413)


def test_a_chunked_body_over_64_kib_is_413_json(plan: Tenant) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"active_seats": 1, "padding": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    answer = send(plan.buyer, "PUT", f"/api/subscriptions/{plan.sub}/seats", chunks())
    assert_error(answer, 413)


def test_a_chunked_body_is_not_cut_down_to_a_valid_request(plan: Tenant) -> None:
    def valid_start() -> Iterator[bytes]:
        """Its first 64 KiB alone would be a valid request: it must not be applied."""
        yield b'{"active_seats": 2}'
        for _ in range(10):
            yield b" " * 8192
        yield b"trailing garbage"

    answer = send(plan.buyer, "PUT", f"/api/subscriptions/{plan.sub}/seats", valid_start())
    assert_error(answer, 413)


def test_a_body_just_under_the_limit_is_read(plan: Tenant) -> None:
    raw = json.dumps({"active_seats": 2, "padding": "x" * (MAX_BODY - 100)})
    assert len(raw) < MAX_BODY
    answer = send(plan.buyer, "PUT", f"/api/subscriptions/{plan.sub}/seats", raw)
    assert_error(answer, 422, naming="padding")  # read and judged, not cut off as too large


# --- any JSON at all: a known answer, never a 500 -----------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
BODIES = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({"active_seats": JSON_VALUES}),
    st.fixed_dictionaries({"active_seats": st.integers(-3, 8)}),
    st.fixed_dictionaries(
        {"active_seats": st.integers(1, 6)}, optional={"confirm": st.booleans(), "active": SCALARS}
    ),
)


def expected_status(body: Any) -> int:
    """The contract, read as a client would: 400 not an object, 422 bad field, 200 or 409."""
    if not isinstance(body, dict):
        return 400
    if set(body) != {"active_seats"}:
        return 422
    value = body["active_seats"]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SEATS:
        return 422
    return 200 if value <= 3 else 409


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=BODIES)
def test_any_json_body_to_put_seats_gets_a_known_answer(
    tenant: Tenant, web: Server, body: Any
) -> None:
    answer = send(tenant.buyer, "PUT", f"/api/subscriptions/{tenant.sub}/seats", json.dumps(body))
    assert answer.status_code in {200, 400, 409, 422}, answer.text
    assert "Traceback" not in answer.text
    assert answer.status_code == expected_status(body), (body, answer.text)
    reply = answer.json()
    if answer.status_code == 200:
        assert (reply["paid_seats"], reply["active_seats"]) == (3, body["active_seats"])
    elif answer.status_code == 409:
        assert reply["error"] == "purchase_required"
        assert reply["quote"]["seats_to_buy"] == body["active_seats"] - 3
    else:
        assert_error(answer, answer.status_code)
    plan = tenant.owner.get(f"/api/subscriptions/{tenant.sub}").json()
    assert plan["paid_seats"] == 3  # nothing but a payment may raise what is paid
