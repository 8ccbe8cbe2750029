"""Buying seats end to end: web over a socket, a Celery worker process, localstripe over HTTP."""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from typing import Any

import pytest

from shared.bootstrap import Runtime
from shared.store.models import Organization, SeatChange
from tests.conftest import Server, Tenant, Worker
from tests.e2e.stripe_helpers import (
    DECLINED,
    THREE_D_SECURE,
    authenticate,
    buy,
    charges_of,
    new_card,
    stripe_client,
    succeeded_charges,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def shop(stack_runtime: Runtime, stack_web: Server, worker: Worker) -> Tenant:
    return Tenant(stack_runtime, stack_web.url, seats=3, unit_amount=50000)


def customer_of(runtime: Runtime, org: int) -> str:
    with runtime.uow() as uow:
        customer = uow.session.get_one(Organization, org).stripe_customer_id
    assert customer
    return customer


def test_help_article_example(shop: Tenant, stack_runtime: Runtime, stripe_base: str) -> None:
    plan = f"/api/subscriptions/{shop.sub}"
    buyer = shop.buyer
    assert buyer.put(f"{plan}/seats", json={"active_seats": 2}).json()["active_seats"] == 2
    back = buyer.put(f"{plan}/seats", json={"active_seats": 3}).json()
    assert (back["paid_seats"], back["active_seats"]) == (3, 3)

    asked = buyer.put(f"{plan}/seats", json={"active_seats": 5})
    assert asked.status_code == 409 and asked.json()["error"] == "purchase_required"
    quote = asked.json()["quote"]
    assert quote["seats_to_buy"] == 2 and quote["subtotal"] == 100000

    unconfirmed = buyer.post(
        "/api/cart/items", json={"subscription_id": shop.sub, "active_seats": 5}
    )
    assert unconfirmed.status_code == 409
    assert unconfirmed.json()["error"] == "confirmation_required"
    assert buyer.get("/api/cart").json()["items"] == []

    added = buyer.post(
        "/api/cart/items", json={"subscription_id": shop.sub, "active_seats": 5, "confirm": True}
    )
    assert added.status_code == 201
    cart = buyer.get("/api/cart").json()
    assert cart["total_due"] == quote["amount_due"] and cart["currency"] == "cad"
    [line] = cart["items"]
    assert line["proration_coupon"] == quote["proration_coupon"] > 0

    card = new_card(stripe_base)
    answer = buyer.post(
        "/api/checkout", json={"payment_method": card}, headers={"Idempotency-Key": "article-1"}
    )
    assert answer.status_code == 202 and answer.json()["status"] == "pending"
    done = wait_for(buyer, answer.json()["purchase_id"])
    assert done["status"] == "succeeded", done
    assert done["amount_due"] == quote["amount_due"]

    after = buyer.get(plan).json()
    assert (after["paid_seats"], after["active_seats"]) == (5, 5)
    assert after["payment_method"] == {"id": card, "brand": "visa", "last4": "4242"}
    customer = customer_of(stack_runtime, shop.org)
    paid = succeeded_charges(stripe_base, customer)
    assert [c.amount for c in paid] == [quote["amount_due"]]
    stripe_customer = stripe_client(stripe_base).v1.customers.retrieve(customer)
    assert stripe_customer.invoice_settings.default_payment_method == card
    assert buyer.get("/api/cart").json()["items"] == []

    with stack_runtime.uow() as uow:
        audit = [
            (a.paid_after, a.active_after, a.purchase_id)
            for a in uow.session.query(SeatChange)
            .filter_by(subscription_id=shop.sub)
            .order_by(SeatChange.id)
        ]
    assert audit == [(3, 3, None), (3, 2, None), (3, 3, None), (5, 5, done["id"])]


def test_saved_card_is_used_when_none_is_given(shop: Tenant, stripe_base: str) -> None:
    first = buy(shop.owner, shop.sub, 4, "saved-1", new_card(stripe_base))
    assert wait_for(shop.owner, first)["status"] == "succeeded"
    second = buy(shop.buyer, shop.sub, 6, "saved-2")
    done = wait_for(shop.buyer, second)
    assert done["status"] == "succeeded", done
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (6, 6)


def test_declined_card_changes_nothing(
    shop: Tenant, stack_runtime: Runtime, stripe_base: str
) -> None:
    purchase = buy(shop.buyer, shop.sub, 5, "declined-1", new_card(stripe_base, DECLINED))
    done = wait_for(shop.buyer, purchase)
    assert done["status"] == "failed"
    assert done["failure_code"] == "card_declined"
    assert "declined" in done["failure_message"].lower()
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (3, 3)
    assert plan["payment_method"] is None
    assert succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org)) == []


def test_three_d_secure_completes_after_authentication(
    shop: Tenant, stack_runtime: Runtime, stripe_base: str
) -> None:
    purchase = buy(shop.buyer, shop.sub, 5, "3ds-1", new_card(stripe_base, THREE_D_SECURE))
    waiting = wait_for(shop.buyer, purchase, ("requires_action", "succeeded", "failed"))
    assert waiting["status"] == "requires_action"
    secret = waiting["client_secret"]
    assert secret
    assert "client_secret" not in shop.owner.get(f"/api/purchases/{purchase}").json()
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (3, 3)

    authenticate(stripe_base, secret.split("_secret_")[0], secret)
    done = wait_for(shop.buyer, purchase)
    assert done["status"] == "succeeded", done
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (5, 5)
    assert len(succeeded_charges(stripe_base, customer_of(stack_runtime, shop.org))) == 1


def test_unknown_card_empty_cart_and_no_saved_card(shop: Tenant) -> None:
    buyer = shop.buyer
    empty = buyer.post("/api/checkout", json={}, headers={"Idempotency-Key": "empty-1"})
    assert empty.status_code == 409 and empty.json()["error"] == "payment_method_required"
    empty = buyer.post(
        "/api/checkout", json={"payment_method": "pm_abc"}, headers={"Idempotency-Key": "empty-2"}
    )
    assert empty.status_code == 409 and empty.json()["error"] == "cart_empty"

    buyer.post(
        "/api/cart/items", json={"subscription_id": shop.sub, "active_seats": 4, "confirm": True}
    )
    no_card = buyer.post("/api/checkout", json={}, headers={"Idempotency-Key": "nocard"})
    assert no_card.status_code == 409 and no_card.json()["error"] == "payment_method_required"
    malformed = buyer.post(
        "/api/checkout",
        json={"payment_method": "4242424242424242"},
        headers={"Idempotency-Key": "bad-card"},
    )
    assert malformed.status_code == 422
    assert len(buyer.get("/api/cart").json()["items"]) == 1

    answer = buyer.post(
        "/api/checkout",
        json={"payment_method": "pm_NoSuchCard123"},
        headers={"Idempotency-Key": "unknown-card"},
    )
    assert answer.status_code == 202
    done = wait_for(buyer, answer.json()["purchase_id"])
    assert done["status"] == "failed" and done["failure_code"] == "payment_method_unknown"
    plan = shop.owner.get(f"/api/subscriptions/{shop.sub}").json()
    assert (plan["paid_seats"], plan["active_seats"]) == (3, 3)


def test_member_and_strangers_are_refused_at_every_step(
    shop: Tenant, stack_runtime: Runtime, stack_web: Server, stripe_base: str
) -> None:
    stranger = Tenant(stack_runtime, stack_web.url).owner
    body = {"subscription_id": shop.sub, "active_seats": 5, "confirm": True}
    assert shop.member.post("/api/cart/items", json=body).status_code == 403
    assert stranger.post("/api/cart/items", json=body).status_code == 404
    purchase = buy(shop.buyer, shop.sub, 5, "roles-1", new_card(stripe_base))
    item = shop.buyer.post("/api/cart/items", json={**body, "active_seats": 7}).json()["items"][0]
    # another user's cart line is not the member's to see: 404 before any role check
    assert shop.member.delete(f"/api/cart/items/{item['id']}").status_code == 404
    assert stranger.delete(f"/api/cart/items/{item['id']}").status_code == 404
    assert shop.owner.delete(f"/api/cart/items/{item['id']}").status_code == 404
    member_checkout = shop.member.post("/api/checkout", json={}, headers={"Idempotency-Key": "m-1"})
    assert member_checkout.status_code == 403
    assert stranger.get(f"/api/purchases/{purchase}").status_code == 404
    seen = shop.member.get(f"/api/purchases/{purchase}")
    assert seen.status_code == 200 and "client_secret" not in seen.json()
    assert shop.buyer.delete(f"/api/cart/items/{item['id']}").status_code == 204
    assert wait_for(shop.buyer, purchase)["status"] == "succeeded"


def test_six_concurrent_checkouts_with_one_key_make_one_charge(
    shop: Tenant, stack_runtime: Runtime, stripe_base: str
) -> None:
    shop.buyer.post(
        "/api/cart/items", json={"subscription_id": shop.sub, "active_seats": 5, "confirm": True}
    )
    card = new_card(stripe_base)
    barrier = threading.Barrier(6)

    def pay(_: int) -> Any:
        barrier.wait()
        return shop.buyer.post(
            "/api/checkout", json={"payment_method": card}, headers={"Idempotency-Key": "same-key"}
        )

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(pay, range(6)))
    assert [a.status_code for a in answers] == [202] * 6
    ids = {a.json()["purchase_id"] for a in answers}
    assert len(ids) == 1
    done = wait_for(shop.buyer, ids.pop())
    assert done["status"] == "succeeded"
    assert len(charges_of(stripe_base, customer_of(stack_runtime, shop.org))) == 1


def test_eight_buyers_at_once_never_pay_a_seat_twice(
    stack_runtime: Runtime, stack_web: Server, worker: Worker, stripe_base: str
) -> None:
    org = Tenant(
        stack_runtime, stack_web.url, seats=3, unit_amount=50000, period_start=date.today()
    )
    buyers = [org.add_user("buyer", stack_web.url, name=f"buyer{i}") for i in range(8)]
    targets = [4, 5, 6, 7, 8, 9, 10, 11]
    barrier = threading.Barrier(8)

    def purchase(index: int) -> int:
        client = buyers[index]
        card = new_card(stripe_base)
        client.post(
            "/api/cart/items",
            json={"subscription_id": org.sub, "active_seats": targets[index], "confirm": True},
        )
        barrier.wait()
        answer = client.post(
            "/api/checkout",
            json={"payment_method": card},
            headers={"Idempotency-Key": secrets.token_hex(8)},
        )
        assert answer.status_code == 202, answer.text
        return int(answer.json()["purchase_id"])

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(purchase, range(8)))
    results = [wait_for(buyers[i], pid, timeout=90) for i, pid in enumerate(ids)]
    succeeded = [(targets[i], r) for i, r in enumerate(results) if r["status"] == "succeeded"]
    for r in results:
        assert r["status"] == "succeeded" or r["failure_code"] == "already_paid", r
    plan = org.owner.get(f"/api/subscriptions/{org.sub}").json()
    assert plan["paid_seats"] == max(t for t, _ in succeeded) == plan["active_seats"]
    seats_bought = sum(r["items"][0]["seats_to_buy"] for _, r in succeeded)
    assert seats_bought == plan["paid_seats"] - 3
    charged = succeeded_charges(stripe_base, customer_of(stack_runtime, org.org))
    assert sum(c.amount for c in charged) == sum(r["amount_due"] for _, r in succeeded)
    assert len(charged) == len(succeeded)
    unit_full_period = 50000
    assert sum(c.amount for c in charged) == seats_bought * unit_full_period
