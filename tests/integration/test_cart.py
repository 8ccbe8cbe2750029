"""The cart over a real socket: confirmation, one line per plan, each buyer's own cart."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta

import pytest
import requests
from sqlalchemy import select

from shared.bootstrap import Runtime
from shared.domain.periods import today_in
from shared.services import provisioning
from shared.store.models import CartItem, Organization, Purchase
from tests.conftest import Server, Tenant


def add(tenant: Tenant, role: str, seats: int, confirm: bool = True) -> requests.Response:
    return tenant.clients[role].post(
        "/api/cart/items",
        json={"subscription_id": tenant.sub, "active_seats": seats, "confirm": confirm},
    )


def test_adding_again_replaces_the_line_and_each_buyer_has_a_cart(tenant: Tenant) -> None:
    first = add(tenant, "buyer", 5)
    assert first.status_code == 201
    again = add(tenant, "buyer", 7).json()
    [line] = again["items"]
    assert line["active_seats"] == 7 and line["seats_to_buy"] == 4
    assert line["subtotal"] == 4 * 50000
    assert line["amount_due"] + line["proration_coupon"] == line["subtotal"]
    assert again["total_due"] == line["amount_due"] and again["currency"] == "cad"
    assert tenant.owner.get("/api/cart").json()["items"] == []
    assert tenant.member.get("/api/cart").json() == {"items": [], "total_due": 0, "currency": "cad"}
    assert tenant.owner.delete(f"/api/cart/items/{line['id']}").status_code == 404
    assert tenant.buyer.delete(f"/api/cart/items/{line['id']}").status_code == 204
    assert tenant.buyer.delete(f"/api/cart/items/{line['id']}").status_code == 404
    assert tenant.buyer.get("/api/cart").json()["items"] == []


def test_confirmation_is_required_and_shows_the_quote(tenant: Tenant) -> None:
    answer = add(tenant, "owner", 6, confirm=False)
    assert answer.status_code == 409
    body = answer.json()
    assert body["error"] == "confirmation_required"
    quote = tenant.owner.post(
        f"/api/subscriptions/{tenant.sub}/quote", json={"active_seats": 6}
    ).json()
    assert body["quote"] == quote
    assert tenant.owner.get("/api/cart").json()["items"] == []


def test_nothing_to_buy_at_or_below_the_paid_count(tenant: Tenant) -> None:
    answer = add(tenant, "owner", 3)
    assert answer.status_code == 409
    assert answer.json()["error"] == "nothing_to_buy"
    assert tenant.owner.get("/api/cart").json()["items"] == []


def test_checkout_needs_an_idempotency_key(tenant: Tenant) -> None:
    add(tenant, "buyer", 4)
    missing = tenant.buyer.post("/api/checkout", json={"payment_method": "pm_abc"})
    assert missing.status_code == 422
    assert missing.json()["error"] == "idempotency_key_required"
    assert len(tenant.buyer.get("/api/cart").json()["items"]) == 1


def test_a_plan_due_for_renewal_blocks_only_its_own_line(runtime: Runtime, web: Server) -> None:
    """Issue 7, item 5: one line whose plan reached `renews_at` used to lock the whole cart."""
    today = today_in("America/Toronto")
    shop = Tenant(runtime, web.url, period_start=today - timedelta(days=365), renews_at=today)
    other_plan = provisioning.create_subscription(
        runtime.uow(), shop.org, "XLGL", 1000, "month", 1, today - timedelta(days=3)
    )
    with runtime.uow() as uow:  # put in the cart yesterday, before the period ended
        uow.session.add(
            CartItem(user_id=shop.user_ids["buyer"], subscription_id=shop.sub, active_seats=5)
        )
        uow.commit()
    cart = shop.buyer.get("/api/cart")
    assert cart.status_code == 200, cart.text
    [due] = cart.json()["items"]
    assert (due["subscription_id"], due["error"]) == (shop.sub, "renewal_pending")
    assert due["amount_due"] == 0 and cart.json()["total_due"] == 0

    added = shop.buyer.post(
        "/api/cart/items", json={"subscription_id": other_plan, "active_seats": 2, "confirm": True}
    )
    assert added.status_code == 201, added.text
    lines = {line["subscription_id"]: line for line in added.json()["items"]}
    assert lines[other_plan]["seats_to_buy"] == 1 and "error" not in lines[other_plan]
    assert added.json()["total_due"] == lines[other_plan]["amount_due"]

    paid = shop.buyer.post(
        "/api/checkout", json={"payment_method": "pm_x"}, headers={"Idempotency-Key": "due-1"}
    )
    assert paid.status_code == 202, paid.text
    purchase = shop.buyer.get(f"/api/purchases/{paid.json()['purchase_id']}").json()
    assert [item["subscription_id"] for item in purchase["items"]] == [other_plan]
    [left] = shop.buyer.get("/api/cart").json()["items"]
    assert left["id"] == due["id"]
    blocked = shop.buyer.post(
        "/api/checkout", json={"payment_method": "pm_x"}, headers={"Idempotency-Key": "due-2"}
    )
    assert blocked.status_code == 409
    assert blocked.json()["error"] == "renewal_pending" and blocked.json()["items"] == [due["id"]]


def test_parallel_first_adds_of_a_line_all_succeed_and_leave_one_line(tenant: Tenant) -> None:
    """Eight tabs saying yes at once: each gets 201, the cart keeps one line per plan."""
    for round_ in range(5):
        target = 4 + round_
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda seats: add(tenant, "buyer", seats), [target] * 8))
        assert [a.status_code for a in answers] == [201] * 8, [a.text for a in answers]
        lines = tenant.buyer.get("/api/cart").json()["items"]
        assert [(line["subscription_id"], line["active_seats"]) for line in lines] == [
            (tenant.sub, target)
        ]
        if round_ < 4:  # the next round is a first add again
            assert tenant.buyer.delete(f"/api/cart/items/{lines[0]['id']}").status_code == 204


# --- checkout: an Idempotency-Key names one request, like Stripe's ------------------------------


def checkout(tenant: Tenant, key: str, body: dict[str, object]) -> requests.Response:
    return tenant.buyer.post("/api/checkout", json=body, headers={"Idempotency-Key": key})


def purchases_of(tenant: Tenant) -> list[int]:
    with tenant.runtime.uow() as uow:
        return list(
            uow.session.scalars(
                select(Purchase.id).where(Purchase.user_id == tenant.user_ids["buyer"])
            )
        )


def test_the_same_key_and_body_give_the_same_purchase(tenant: Tenant) -> None:
    add(tenant, "buyer", 5)
    first = checkout(tenant, "same-key", {"payment_method": "pm_first"})
    assert first.status_code == 202, first.text
    again = checkout(tenant, "same-key", {"payment_method": "pm_first"})
    assert again.status_code == 202, again.text
    assert again.json()["purchase_id"] == first.json()["purchase_id"]
    add(tenant, "buyer", 5)  # the very lines that were bought, put back: still the same request
    third = checkout(tenant, "same-key", {"payment_method": "pm_first"})
    assert third.json()["purchase_id"] == first.json()["purchase_id"]
    assert purchases_of(tenant) == [first.json()["purchase_id"]]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"payment_method": "pm_first"}, {"payment_method": "pm_second"}),
        ({"payment_method": "pm_first"}, {}),
        ({}, {"payment_method": "pm_first"}),
    ],
)
def test_the_same_key_with_another_card_is_409(
    tenant: Tenant, first: dict[str, object], second: dict[str, object]
) -> None:
    with tenant.runtime.uow() as uow:  # a saved card, so that {} may pay
        uow.session.get_one(Organization, tenant.org).payment_method_id = "pm_saved"
        uow.commit()
    add(tenant, "buyer", 5)
    bought = checkout(tenant, "card-key", first)
    assert bought.status_code == 202, bought.text
    answer = checkout(tenant, "card-key", second)
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "idempotency_key_reused"
    assert purchases_of(tenant) == [bought.json()["purchase_id"]]


def test_the_same_key_with_another_cart_is_409_and_the_cart_stays(tenant: Tenant) -> None:
    add(tenant, "buyer", 5)
    bought = checkout(tenant, "cart-key", {"payment_method": "pm_first"})
    assert bought.status_code == 202, bought.text
    other = provisioning.create_subscription(
        tenant.runtime.uow(), tenant.org, "XLGL", 50000, "year", 3, date.today() - timedelta(days=9)
    )
    added = tenant.buyer.post(
        "/api/cart/items", json={"subscription_id": other, "active_seats": 4, "confirm": True}
    )
    assert added.status_code == 201, added.text
    answer = checkout(tenant, "cart-key", {"payment_method": "pm_first"})
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "idempotency_key_reused"
    assert tenant.buyer.get("/api/cart").json() == added.json()
    assert purchases_of(tenant) == [bought.json()["purchase_id"]]


def test_a_purchase_stored_before_fingerprints_matches_any_card(tenant: Tenant) -> None:
    add(tenant, "buyer", 5)
    bought = checkout(tenant, "old-key", {"payment_method": "pm_first"})
    with tenant.runtime.uow() as uow:
        uow.session.get_one(Purchase, bought.json()["purchase_id"]).request_fingerprint = None
        uow.commit()
    again = checkout(tenant, "old-key", {"payment_method": "pm_second"})
    assert again.status_code == 202, again.text
    assert again.json()["purchase_id"] == bought.json()["purchase_id"]


def test_a_cart_holds_plans_of_one_currency(runtime: Runtime, tenant: Tenant) -> None:
    """The buyer's organization also has a plan billed in another currency (its billing
    currency changed between the two plans): both cannot be paid in one checkout."""
    with runtime.uow() as uow:
        uow.session.get_one(Organization, tenant.org).currency = "usd"
        uow.commit()
    try:
        dollars = provisioning.create_subscription(
            runtime.uow(),
            tenant.org,
            "XLGL-US",
            40000,
            "year",
            3,
            date.today() - timedelta(days=30),
        )
    finally:
        with runtime.uow() as uow:
            uow.session.get_one(Organization, tenant.org).currency = "cad"
            uow.commit()
    assert tenant.buyer.get(f"/api/subscriptions/{dollars}").json()["currency"] == "usd"
    assert add(tenant, "buyer", 5).status_code == 201
    answer = tenant.buyer.post(
        "/api/cart/items", json={"subscription_id": dollars, "active_seats": 5, "confirm": True}
    )
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "currency_mismatch"
    cart = tenant.buyer.get("/api/cart").json()
    assert [(line["subscription_id"], line["active_seats"]) for line in cart["items"]] == [
        (tenant.sub, 5)
    ]
    assert cart["currency"] == "cad"
    # another buyer's cart is their own: the dollar plan alone is fine there
    owner = tenant.owner.post(
        "/api/cart/items", json={"subscription_id": dollars, "active_seats": 5, "confirm": True}
    )
    assert owner.status_code == 201, owner.text
    assert owner.json()["currency"] == "usd"
