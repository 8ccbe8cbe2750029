"""The customer API (README "Using it"). Each view: parse, who, one service call, answer."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from shared.services import cart, checkout, payment_methods, purchases, seats
from shared.services.views import to_json
from web.auth import current_actor
from web.bodies import (
    CartItemBody,
    CheckoutBody,
    PaymentMethodBody,
    SeatsBody,
    parse,
    resource_id,
)
from web.extensions import dispatcher, runtime

api = Blueprint("api", __name__, url_prefix="/api")


def answer(view: object, status: int = 200) -> Response:
    response = jsonify(to_json(view))
    response.status_code = status
    return response


@api.get("/subscriptions/<int:subscription_id>")
def get_subscription(subscription_id: int) -> Response:
    actor = current_actor()
    return answer(seats.get_subscription(runtime().uow(), actor, resource_id(subscription_id)))


@api.post("/subscriptions/<int:subscription_id>/quote")
def quote(subscription_id: int) -> Response:
    actor = current_actor()
    body = parse(SeatsBody)
    return answer(
        seats.quote_seats(runtime().uow(), actor, resource_id(subscription_id), body.active_seats)
    )


@api.put("/subscriptions/<int:subscription_id>/seats")
def change_seats(subscription_id: int) -> Response:
    actor = current_actor()
    body = parse(SeatsBody)
    return answer(
        seats.change_seats(runtime().uow(), actor, resource_id(subscription_id), body.active_seats)
    )


@api.get("/cart")
def get_cart() -> Response:
    return answer(cart.get_cart(runtime().uow(), current_actor()))


@api.post("/cart/items")
def add_to_cart() -> Response:
    actor = current_actor()
    body = parse(CartItemBody)
    view = cart.add_item(
        runtime().uow(), actor, body.subscription_id, body.active_seats, body.confirm
    )
    return answer(view, 201)


@api.delete("/cart/items/<int:item_id>")
def remove_from_cart(item_id: int) -> Response:
    cart.remove_item(runtime().uow(), current_actor(), resource_id(item_id))
    return Response(status=204)


@api.post("/checkout")
def do_checkout() -> Response:
    actor = current_actor()
    body = parse(CheckoutBody)
    purchase_id, status = checkout.checkout(
        runtime().uow(), actor, request.headers.get("Idempotency-Key"), body.payment_method
    )
    dispatcher().charge(purchase_id)
    response = answer({"purchase_id": purchase_id, "status": status}, 202)
    response.headers["Location"] = f"/api/purchases/{purchase_id}"
    return response


@api.put("/payment-method")
def save_payment_method() -> Response:
    """The card for renewals; a past-due or suspended plan is tried again with it at once."""
    actor = current_actor()
    body = parse(PaymentMethodBody)
    saved, retry = payment_methods.save_card(
        runtime().uow(), runtime().gateway, actor, body.payment_method
    )
    dispatcher().renew(*retry, force=True)
    return answer(saved)


@api.post("/purchases/<int:purchase_id>/retry")
def retry_purchase(purchase_id: int) -> Response:
    """A failed purchase's lines paid again with another card (README "Using it")."""
    actor = current_actor()
    body = parse(CheckoutBody)
    new_id, status = checkout.retry_purchase(
        runtime().uow(),
        actor,
        resource_id(purchase_id),
        request.headers.get("Idempotency-Key"),
        body.payment_method,
    )
    dispatcher().charge(new_id)
    response = answer({"purchase_id": new_id, "status": status, "retry_of": purchase_id}, 202)
    response.headers["Location"] = f"/api/purchases/{new_id}"
    return response


@api.get("/purchases/<int:purchase_id>")
def get_purchase(purchase_id: int) -> Response:
    actor = current_actor()
    return answer(purchases.get_purchase(runtime().uow(), actor, resource_id(purchase_id)))
