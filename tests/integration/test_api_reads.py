"""The read, quote and free-change API over a real socket, for every role and tenant."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, func, select

from shared import queues
from shared.bootstrap import Runtime
from shared.cli.embedded import free_port
from shared.domain.periods import today_in
from shared.services import charging
from shared.store.db import make_engine
from shared.store.models import Purchase
from tests.conftest import Client, Server, Tenant


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
            "status",
        }
        assert body["status"] == "active"


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


def half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest whole number, halves up."""
    return (2 * numerator + denominator) // (2 * denominator)


def test_quote_is_the_money_rule(runtime: Runtime, web: Server) -> None:
    """Priced on the organization's calendar: its zone is chosen so that its "today" is not
    the server's, so a quote on the server's date would be a day or more off."""
    # 25 hours apart, these two zones are never on the same date: one is not on the server's
    zone = next(
        z for z in ("Pacific/Kiritimati", "Pacific/Pago_Pago") if today_in(z) != date.today()
    )
    while True:
        today = today_in(zone)
        start = today - timedelta(days=20)
        renews_at = start + timedelta(days=40)
        plan = Tenant(
            runtime,
            web.url,
            seats=3,
            unit_amount=50001,
            period_start=start,
            interval="month",
            renews_at=renews_at,
            timezone=zone,
        )
        answer = plan.member.post(f"/api/subscriptions/{plan.sub}/quote", json={"active_seats": 4})
        if today_in(zone) == today:  # not across the organization's midnight
            break
    assert answer.status_code == 200, answer.text
    remaining_days = (renews_at - today).days
    assert remaining_days == 20
    # 50001 * 20 / 40 = 25000.5: half up is 25001 (half to even would say 25000)
    amount_due = half_up(50001 * remaining_days, 40)
    assert amount_due == 25001
    assert answer.json() == {
        "seats_to_buy": 1,
        "unit_amount": 50001,
        "subtotal": 50001,
        "proration_coupon": 50001 - amount_due,
        "amount_due": amount_due,
        "currency": "cad",
        "remaining_days": remaining_days,
        "period_days": 40,
        "renews_at": renews_at.isoformat(),
    }


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


def scraped(client: Client) -> dict[str, dict[str, float]]:
    """The /metrics gauges this test reads: {family: {label value: value}}."""
    answer = client.get("/metrics")
    assert answer.status_code == 200
    labels = {"seats_purchases": "status", "seats_webhook_events": "outcome"}
    found: dict[str, dict[str, float]] = {"seats_purchases": {}, "seats_purchases_parked": {}}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name in labels:
                found.setdefault(sample.name, {})[sample.labels[labels[sample.name]]] = sample.value
            elif sample.name == "seats_purchases_parked":
                found[sample.name][""] = sample.value
    return found


def purchases_in_the_database(runtime: Runtime) -> tuple[dict[str, float], float]:
    with runtime.uow() as uow:
        by_status = {
            status: float(count)
            for status, count in uow.session.execute(
                select(Purchase.status, func.count()).group_by(Purchase.status)
            )
        }
        parked = uow.session.scalar(
            select(func.count()).select_from(Purchase).where(Purchase.attention.is_not(None))
        )
    return by_status, float(parked or 0)


def test_healthz_and_metrics(web: Server, runtime: Runtime, tenant: Tenant) -> None:
    client = Client(web.url, None)
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "web": "ok", "database": "ok", "broker": "ok"}

    def figures() -> tuple[dict[str, float], float]:
        metrics = scraped(client)
        return metrics["seats_purchases"], metrics["seats_purchases_parked"][""]

    before = figures()
    assert before == purchases_in_the_database(runtime)

    purchases = []
    for role, target in (("buyer", 5), ("owner", 6)):  # two purchases of one organization
        client_of = tenant.clients[role]
        body = {"subscription_id": tenant.sub, "active_seats": target, "confirm": True}
        assert client_of.post("/api/cart/items", json=body).status_code == 201
        checkout = client_of.post(
            "/api/checkout",
            json={"payment_method": "pm_metrics"},
            headers={"Idempotency-Key": f"metrics-{role}"},
        )
        assert checkout.status_code == 202, checkout.text
        purchases.append(checkout.json()["purchase_id"])
    pending = figures()
    assert pending == purchases_in_the_database(runtime)
    assert pending[0]["pending"] == before[0].get("pending", 0) + 2
    assert pending[1] == before[1]

    # an operator's view of parked work moves with it (parked before any PaymentIntent)
    for purchase in purchases:
        charging.park(runtime.uow(), runtime.engine, purchase, "test: processor unavailable")
    parked = figures()
    assert parked == purchases_in_the_database(runtime)
    assert parked[0] == pending[0] and parked[1] == pending[1] + 2

    text_body = client.get("/metrics").text
    assert "seats_http_requests_total" in text_body
    assert "seats_queue_depth" in text_body


def test_a_checkout_behind_another_of_its_plan_sends_no_charge(
    runtime: Runtime, tenant: Tenant
) -> None:
    """The second purchase of a plan whose first is still to charge is stored waiting and
    gets no message: the first one's charger wakes it (a message now would only find the
    plan taken). Both answers are the same to the buyer."""
    broker = redis.Redis.from_url(str(runtime.settings.redis_url))
    charges = queues.ROUTES[queues.CHARGE_PURCHASE]
    sent = []
    for role, target in (("buyer", 5), ("owner", 6)):
        client_of = tenant.clients[role]
        body = {"subscription_id": tenant.sub, "active_seats": target, "confirm": True}
        assert client_of.post("/api/cart/items", json=body).status_code == 201
        before = broker.llen(charges)
        answer = client_of.post(
            "/api/checkout",
            json={"payment_method": "pm_queued"},
            headers={"Idempotency-Key": f"queued-{role}"},
        )
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "pending"
        sent.append(broker.llen(charges) - before)
    assert sent == [1, 0]


def app_with(runtime: Runtime, **changes: Any) -> Server:
    """The app over a runtime with some of its parts replaced (settings or engine)."""
    from web import create_app

    settings = replace(runtime.settings, **changes.pop("settings", {}))
    return Server(create_app(runtime=replace(runtime, settings=settings, **changes)))


def test_healthz_says_the_database_is_down(runtime: Runtime) -> None:
    dead = make_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere", pool_size=1
    )
    server = app_with(runtime, engine=dead)
    try:
        health = Client(server.url, None).get("/healthz")
    finally:
        server.close()
        dead.dispose()
    assert health.status_code == 503
    assert health.json() == {
        "status": "degraded",
        "web": "ok",
        "database": "unavailable",
        "broker": "ok",
    }


def test_healthz_says_the_broker_is_down(runtime: Runtime) -> None:
    server = app_with(runtime, settings={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    try:
        health = Client(server.url, None).get("/healthz")
    finally:
        server.close()
    assert health.status_code == 503
    assert health.json() == {
        "status": "degraded",
        "web": "ok",
        "database": "ok",
        "broker": "unavailable",
    }


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


def test_a_bearer_new_to_the_web_costs_one_statement_and_no_transaction(
    runtime: Runtime, tenant: Tenant
) -> None:
    """Who a token is gets looked up once per web process and 30 s, on each buyer's first
    request: one SELECT in autocommit, not a BEGIN, a SELECT and an end of three round trips
    (README "Benchmarks")."""
    sent: list[str] = []

    def statement(connection: Any, cursor: Any, text: str, *_: Any) -> None:
        sent.append(text.split()[0].upper())

    def transaction(connection: Any) -> None:
        if not connection.connection.dbapi_connection.autocommit:
            sent.append("BEGIN")

    event.listen(runtime.engine, "before_cursor_execute", statement)
    event.listen(runtime.engine, "begin", transaction)
    try:
        answer = tenant.clients["member"].get("/api/openapi.json")  # reads nothing itself
        whoami = tenant.clients["member"].get("/api/cart")  # the bearer, then the cart
    finally:
        event.remove(runtime.engine, "before_cursor_execute", statement)
        event.remove(runtime.engine, "begin", transaction)
    assert answer.status_code == 200 and whoami.status_code == 200, whoami.text
    assert sent[0] == "SELECT", sent  # the lookup, on its own: no BEGIN before it
