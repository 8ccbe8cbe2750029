"""The read, quote and free-change API over a real socket, for every role and tenant."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest

from shared.bootstrap import Runtime
from tests.conftest import Client, Tenant


def test_every_role_of_the_organization_reads_the_plan(tenant: Tenant) -> None:
    for role in ("owner", "buyer", "member"):
        answer = tenant.clients[role].get(f"/api/subscriptions/{tenant.sub}")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["paid_seats"] == 3 and body["active_seats"] == 3
        assert body["unit_amount"] == 50000 and body["currency"] == "cad"
        assert body["payment_method"] is None
        assert set(body) == {
            "id",
            "product",
            "unit_amount",
            "currency",
            "interval",
            "current_period_start",
            "renews_at",
            "paid_seats",
            "active_seats",
            "payment_method",
        }


def test_another_organization_sees_nothing(tenant: Tenant, other_tenant: Tenant) -> None:
    stranger = other_tenant.owner
    for method, path, body in [
        ("GET", f"/api/subscriptions/{tenant.sub}", None),
        ("POST", f"/api/subscriptions/{tenant.sub}/quote", {"active_seats": 5}),
        ("PUT", f"/api/subscriptions/{tenant.sub}/seats", {"active_seats": 2}),
    ]:
        answer = stranger.request(method, path, json=body)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"] == "not_found"
    missing = stranger.get("/api/subscriptions/999999999")
    assert missing.status_code == 404
    assert missing.json() == answer.json()
    assert tenant.owner.get(f"/api/subscriptions/{tenant.sub}").json()["active_seats"] == 3


def test_no_token_or_a_wrong_one_is_401(tenant: Tenant) -> None:
    anonymous = Client(tenant.owner.base, None)
    assert anonymous.get(f"/api/subscriptions/{tenant.sub}").status_code == 401
    forged = Client(tenant.owner.base, "seat_not-a-real-token")
    answer = forged.put(f"/api/subscriptions/{tenant.sub}/seats", json={"active_seats": 1})
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"
    basic = anonymous.get(
        f"/api/subscriptions/{tenant.sub}", headers={"Authorization": "Basic eDp5"}
    )
    assert basic.status_code == 401


def test_member_may_not_change_seats(tenant: Tenant) -> None:
    answer = tenant.member.put(f"/api/subscriptions/{tenant.sub}/seats", json={"active_seats": 2})
    assert answer.status_code == 403
    assert answer.json()["error"] == "forbidden"
    assert tenant.owner.get(f"/api/subscriptions/{tenant.sub}").json()["active_seats"] == 3


@pytest.mark.parametrize("role", ["owner", "buyer"])
def test_free_changes_down_and_back_up_to_paid(tenant: Tenant, role: str) -> None:
    client = tenant.clients[role]
    down = client.put(f"/api/subscriptions/{tenant.sub}/seats", json={"active_seats": 2})
    assert down.status_code == 200, down.text
    assert (down.json()["paid_seats"], down.json()["active_seats"]) == (3, 2)
    up = client.put(f"/api/subscriptions/{tenant.sub}/seats", json={"active_seats": 3})
    assert (up.json()["paid_seats"], up.json()["active_seats"]) == (3, 3)


def test_above_paid_is_purchase_required_with_the_quote(tenant: Tenant) -> None:
    answer = tenant.buyer.put(f"/api/subscriptions/{tenant.sub}/seats", json={"active_seats": 5})
    assert answer.status_code == 409
    body = answer.json()
    assert body["error"] == "purchase_required"
    quote = tenant.buyer.post(f"/api/subscriptions/{tenant.sub}/quote", json={"active_seats": 5})
    assert quote.status_code == 200
    assert body["quote"] == quote.json()
    assert quote.json()["seats_to_buy"] == 2
    assert quote.json()["subtotal"] == 100000
    assert quote.json()["amount_due"] + quote.json()["proration_coupon"] == 100000
    assert tenant.owner.get(f"/api/subscriptions/{tenant.sub}").json()["active_seats"] == 3


def test_quote_is_the_money_rule(runtime: object, web: object) -> None:
    today = date.today()
    start = today - timedelta(days=10)
    plan = Tenant(
        runtime,
        web.url,
        seats=3,
        unit_amount=50000,
        period_start=start,  # type: ignore[arg-type, attr-defined]
        interval="month",
        renews_at=start + timedelta(days=30),
    )
    quote = plan.member.post(
        f"/api/subscriptions/{plan.sub}/quote", json={"active_seats": 4}
    ).json()
    assert quote["period_days"] == 30
    assert quote["remaining_days"] in (20, 21)  # the billing time zone may still be on yesterday
    expected = (50000 * quote["remaining_days"] * 2 + 30) // 60
    assert quote["amount_due"] == expected
    assert quote["proration_coupon"] == 50000 - expected


def test_renewal_pending_refuses_a_purchase(runtime: object, web: object) -> None:
    start = date.today() - timedelta(days=40)
    plan = Tenant(
        runtime,
        web.url,
        period_start=start,
        interval="month",  # type: ignore[arg-type, attr-defined]
        renews_at=start + timedelta(days=30),
    )
    answer = plan.owner.put(f"/api/subscriptions/{plan.sub}/seats", json={"active_seats": 9})
    assert answer.status_code == 409
    assert answer.json()["error"] == "renewal_pending"
    free = plan.owner.put(f"/api/subscriptions/{plan.sub}/seats", json={"active_seats": 1})
    assert free.status_code == 200


def test_healthz_and_metrics(web: object) -> None:
    client = Client(web.url, None)  # type: ignore[attr-defined]
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["database"] == "ok" and health.json()["broker"] == "ok"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "seats_http_requests_total" in metrics.text
    assert "seats_queue_depth" in metrics.text


# --- tenant before role: a member learns nothing from a 403 about ids that are not there --------

MISSING = 999_999_999_999
# (method, route as Flask spells it, body): every /api route that names an id
ID_ROUTES: list[tuple[str, str, dict[str, object] | None]] = [
    ("GET", "/api/subscriptions/<int:subscription_id>", None),
    ("POST", "/api/subscriptions/<int:subscription_id>/quote", {"active_seats": 5}),
    ("PUT", "/api/subscriptions/<int:subscription_id>/seats", {"active_seats": 2}),
    ("DELETE", "/api/cart/items/<int:item_id>", None),
    ("GET", "/api/purchases/<int:purchase_id>", None),
    ("POST", "/api/purchases/<int:purchase_id>/retry", {}),
]


def test_the_table_names_every_api_route_with_an_id(runtime: Runtime) -> None:
    from web import create_app

    routes = {
        (method, rule.rule)
        for rule in create_app(runtime=runtime).url_map.iter_rules()
        if rule.rule.startswith("/api/") and rule.arguments
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    assert routes == {(method, route) for method, route, _ in ID_ROUTES}


@pytest.mark.parametrize(("method", "route", "body"), ID_ROUTES, ids=[r for _, r, _ in ID_ROUTES])
def test_a_member_asking_about_a_missing_id_gets_404(
    tenant: Tenant, method: str, route: str, body: dict[str, object] | None
) -> None:
    answer = tenant.member.request(method, re.sub(r"<[^>]+>", str(MISSING), route), json=body)
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"] == "not_found"


def test_a_member_adding_a_missing_plan_to_the_cart_gets_404(tenant: Tenant) -> None:
    body = {"subscription_id": MISSING, "active_seats": 5, "confirm": True}
    answer = tenant.member.post("/api/cart/items", json=body)
    assert answer.status_code == 404, answer.text


def test_a_member_removing_someone_elses_cart_line_gets_404(tenant: Tenant) -> None:
    body = {"subscription_id": tenant.sub, "active_seats": 5, "confirm": True}
    [line] = tenant.buyer.post("/api/cart/items", json=body).json()["items"]
    answer = tenant.member.delete(f"/api/cart/items/{line['id']}")
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"] == "not_found"
    assert [i["id"] for i in tenant.buyer.get("/api/cart").json()["items"]] == [line["id"]]
