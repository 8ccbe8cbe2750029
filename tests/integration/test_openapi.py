"""The API's OpenAPI description (README "The API's description") and Flask's routes agree:
every /api route is described with its methods, nothing described is missing, and each
operation lists the statuses its view answers."""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests
from flask import Flask

from tests.conftest import Server

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture(scope="module")
def document(web: Server) -> dict[str, Any]:
    response = requests.get(f"{web.url}/api/openapi.json", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    described: dict[str, Any] = response.json()
    return described


@pytest.fixture(scope="module")
def app(runtime: Any) -> Flask:
    from web import create_app

    return create_app(runtime=runtime)


def openapi_path(rule: str) -> str:
    """Flask's /api/purchases/<int:purchase_id> as OpenAPI's /api/purchases/{purchase_id}."""
    return re.sub(r"<(?:[a-z]+(?:\([^)]*\))?:)?([a-z_]+)>", r"{\1}", rule)


def routes(app: Flask) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/") or rule.rule == "/api":
            found.setdefault(openapi_path(rule.rule), set()).update(
                (rule.methods or set()) & METHODS
            )
    return found


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method.upper()): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def test_it_is_openapi_3_1_and_public(web: Server, document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "Seat billing API"
    assert document["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer"}
    }
    assert document["security"] == [{"bearer": []}]
    # no token, and a wrong one: the description is the same for everybody
    stranger = requests.get(
        f"{web.url}/api/openapi.json", headers={"Authorization": "Bearer nope"}, timeout=30
    )
    assert stranger.status_code == 200
    assert stranger.json() == document


def test_every_api_route_is_described_with_its_methods_and_nothing_else(
    app: Flask, document: dict[str, Any]
) -> None:
    described = {
        path: {method.upper() for method in item} for path, item in document["paths"].items()
    }
    assert described == routes(app)
    assert {
        "/api/subscriptions/{subscription_id}",
        "/api/subscriptions/{subscription_id}/quote",
        "/api/subscriptions/{subscription_id}/seats",
        "/api/cart",
        "/api/cart/items",
        "/api/cart/items/{item_id}",
        "/api/checkout",
        "/api/payment-method",
        "/api/purchases/{purchase_id}",
        "/api/purchases/{purchase_id}/retry",
        "/api/openapi.json",
    } == set(described)


def test_path_parameters_are_the_routes_own(document: dict[str, Any]) -> None:
    for (path, _), operation in operations(document).items():
        named = set(re.findall(r"{([a-z_]+)}", path))
        in_path = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
        assert in_path == named, path
        for parameter in operation["parameters"]:
            if parameter["in"] == "path":
                assert parameter["schema"]["type"] == "integer"


# What each view answers (contract section 5), refusals included.
STATUSES = {
    ("/api/subscriptions/{subscription_id}", "GET"): {200, 401, 404},
    ("/api/subscriptions/{subscription_id}/quote", "POST"): {200, 400, 401, 404, 409, 413, 422},
    ("/api/subscriptions/{subscription_id}/seats", "PUT"): {
        200, 400, 401, 403, 404, 409, 413, 422,
    },
    ("/api/cart", "GET"): {200, 401},
    ("/api/cart/items", "POST"): {201, 400, 401, 403, 404, 409, 413, 422},
    ("/api/cart/items/{item_id}", "DELETE"): {204, 401, 403, 404},
    ("/api/checkout", "POST"): {202, 400, 401, 403, 409, 413, 422},
    ("/api/payment-method", "PUT"): {200, 400, 401, 403, 409, 413, 422, 503},
    ("/api/purchases/{purchase_id}", "GET"): {200, 401, 404},
    ("/api/purchases/{purchase_id}/retry", "POST"): {202, 400, 401, 403, 404, 409, 413, 422},
    ("/api/openapi.json", "GET"): {200},
}  # fmt: skip


def test_each_operation_lists_its_statuses_and_every_refusal_is_an_error(
    document: dict[str, Any],
) -> None:
    found = operations(document)
    assert set(found) == set(STATUSES)
    schemas = document["components"]["schemas"]
    for key, operation in found.items():
        responses = operation["responses"]
        assert {int(status) for status in responses} == STATUSES[key], key
        for status, response in responses.items():
            content = response.get("content")
            if status == "204":
                assert content is None, key
                continue
            ref = content["application/json"]["schema"]["$ref"]
            name = ref.removeprefix("#/components/schemas/")
            assert name in schemas, (key, ref)
            if int(status) >= 400:
                assert name == "Error", (key, status)
                assert response["description"], (key, status)
        public = operation.get("security") == []
        assert public == (key == ("/api/openapi.json", "GET")), key
        assert operation["summary"] and "<" not in operation["summary"], key


def test_bodies_and_headers_are_the_views_own(document: dict[str, Any]) -> None:
    found = operations(document)
    bodies = {
        key: operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        for key, operation in found.items()
        if "requestBody" in operation
    }
    prefix = "#/components/schemas/"
    assert bodies == {
        ("/api/subscriptions/{subscription_id}/quote", "POST"): prefix + "SeatsBody",
        ("/api/subscriptions/{subscription_id}/seats", "PUT"): prefix + "SeatsBody",
        ("/api/cart/items", "POST"): prefix + "CartItemBody",
        ("/api/checkout", "POST"): prefix + "CheckoutBody",
        ("/api/payment-method", "PUT"): prefix + "PaymentMethodBody",
        ("/api/purchases/{purchase_id}/retry", "POST"): prefix + "CheckoutBody",
    }
    schemas = document["components"]["schemas"]
    assert schemas["SeatsBody"]["additionalProperties"] is False
    assert schemas["SeatsBody"]["properties"]["active_seats"]["maximum"] == 100_000
    for key in (("/api/checkout", "POST"), ("/api/purchases/{purchase_id}/retry", "POST")):
        (header,) = [p for p in found[key]["parameters"] if p["in"] == "header"]
        assert header["name"] == "Idempotency-Key" and header["required"] is True


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    pending: list[Any] = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            ref = value.get("$ref")
            if isinstance(ref, str):
                assert ref.removeprefix("#/components/schemas/") in schemas, ref
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def test_an_answer_is_described_as_the_view_makes_it(tenant: Any, document: dict[str, Any]) -> None:
    """The Subscription schema names every field the read model sends: no more, no fewer."""
    answer = tenant.member.get(f"/api/subscriptions/{tenant.sub}").json()
    schema = document["components"]["schemas"]["Subscription"]
    assert set(schema["required"]) <= set(answer) <= set(schema["properties"])
