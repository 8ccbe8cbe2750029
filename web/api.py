"""The customer API (contract section 5). Each view: parse, who, one service call, answer."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from shared.services import cart, checkout, seats
from web.auth import current_actor
from web.bodies import CartItemBody, CheckoutBody, SeatsBody, parse, resource_id
from web.extensions import dispatcher, runtime

api = Blueprint("api", __name__, url_prefix="/api")


@api.get("/subscriptions/<int:subscription_id>")
def get_subscription(subscription_id: int) -> Response:
    actor = current_actor()
    return jsonify(seats.get_subscription(runtime().uow(), actor, resource_id(subscription_id)))


@api.post("/subscriptions/<int:subscription_id>/quote")
def quote(subscription_id: int) -> Response:
    actor = current_actor()
    body = parse(SeatsBody)
    offer = seats.quote_seats(
        runtime().uow(), actor, resource_id(subscription_id), body.active_seats
    )
    return jsonify(offer.as_dict())


@api.put("/subscriptions/<int:subscription_id>/seats")
def change_seats(subscription_id: int) -> Response:
    actor = current_actor()
    body = parse(SeatsBody)
    return jsonify(
        seats.change_seats(runtime().uow(), actor, resource_id(subscription_id), body.active_seats)
    )


@api.get("/cart")
def get_cart() -> Response:
    return jsonify(cart.get_cart(runtime().uow(), current_actor()))


@api.post("/cart/items")
def add_to_cart() -> Response:
    actor = current_actor()
    body = parse(CartItemBody)
    view = cart.add_item(
        runtime().uow(), actor, body.subscription_id, body.active_seats, body.confirm
    )
    response = jsonify(view)
    response.status_code = 201
    return response


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
    response = jsonify({"purchase_id": purchase_id, "status": status})
    response.status_code = 202
    response.headers["Location"] = f"/api/purchases/{purchase_id}"
    return response


@api.get("/purchases/<int:purchase_id>")
def get_purchase(purchase_id: int) -> Response:
    actor = current_actor()
    return jsonify(checkout.get_purchase(runtime().uow(), actor, resource_id(purchase_id)))
