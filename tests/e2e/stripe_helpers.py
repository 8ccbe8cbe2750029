"""What Stripe.js does in the browser, and what an auditor reads in Stripe."""

from __future__ import annotations

import time
from typing import Any

import requests
import stripe

from shared.config import LOCALSTRIPE_KEY
from tests.conftest import Client

GOOD = "4242424242424242"
DECLINED = "4000000000000341"
THREE_D_SECURE = "4000002760003184"


def stripe_client(base: str) -> stripe.StripeClient:
    return stripe.StripeClient(LOCALSTRIPE_KEY, base_addresses={"api": base})


def new_card(base: str, number: str = GOOD) -> str:
    """A PaymentMethod as Stripe.js makes it from the card form: we never see the number."""
    method = stripe_client(base).v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        }
    )
    return str(method.id)


def authenticate(base: str, intent_id: str, client_secret: str) -> None:
    """The customer passes the bank's 3-D Secure check."""
    requests.post(
        f"{base}/v1/payment_intents/{intent_id}/_authenticate",
        data={"client_secret": client_secret, "success": "true"},
        auth=(LOCALSTRIPE_KEY, ""),
        timeout=10,
    ).raise_for_status()


def charges_of(base: str, customer: str) -> list[Any]:
    return list(
        stripe_client(base).v1.charges.list(params={"customer": customer, "limit": 100}).data
    )


def succeeded_charges(base: str, customer: str) -> list[Any]:
    return [c for c in charges_of(base, customer) if c.status == "succeeded" and c.paid]


def wait_for(
    client: Client,
    purchase_id: int,
    statuses: tuple[str, ...] = ("succeeded", "failed"),
    timeout: float = 45,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/api/purchases/{purchase_id}").json()
        if body["status"] in statuses:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"purchase {purchase_id} still {body['status']}: {body}")
        time.sleep(0.1)


def buy(
    client: Client, subscription_id: int, target: int, key: str, payment_method: str | None = None
) -> int:
    """The help article's steps: confirm, cart, checkout. Returns the purchase id."""
    added = client.post(
        "/api/cart/items",
        json={"subscription_id": subscription_id, "active_seats": target, "confirm": True},
    )
    assert added.status_code == 201, added.text
    body = {"payment_method": payment_method} if payment_method else {}
    answer = client.post("/api/checkout", json=body, headers={"Idempotency-Key": key})
    assert answer.status_code == 202, answer.text
    return int(answer.json()["purchase_id"])
