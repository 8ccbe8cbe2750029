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
from web.openapi import described, document
from web.schemas import (
    Cart,
    Document,
    IdempotencyKey,
    Purchase,
    PurchaseAccepted,
    Quote,
    SavedCard,
    Subscription,
)

api = Blueprint("api", __name__, url_prefix="/api")


def answer(view: object, status: int = 200) -> Response:
    response = jsonify(to_json(view))
    response.status_code = status
    return response


@api.get("/subscriptions/<int:subscription_id>")
@described({200: Subscription}, refusals=[404])
def get_subscription(subscription_id: int) -> Response:
    """A plan: paid and active seats, price, renewal date, saved card (any member may read)."""
    actor = current_actor()
    return answer(seats.get_subscription(runtime().uow(), actor, resource_id(subscription_id)))


@api.post("/subscriptions/<int:subscription_id>/quote")
@described({200: Quote}, body=SeatsBody, refusals=[404, 409])
def quote(subscription_id: int) -> Response:
    """The price of raising a plan to `active_seats` today (the money rule); nothing changes."""
    actor = current_actor()
    body = parse(SeatsBody)
    return answer(
        seats.quote_seats(runtime().uow(), actor, resource_id(subscription_id), body.active_seats)
    )


@api.put("/subscriptions/<int:subscription_id>/seats")
@described({200: Subscription}, body=SeatsBody, refusals=[403, 404, 409])
def change_seats(subscription_id: int) -> Response:
    """Set active seats: free up to the paid count; above, 409 `purchase_required` and a quote."""
    actor = current_actor()
    body = parse(SeatsBody)
    return answer(
        seats.change_seats(runtime().uow(), actor, resource_id(subscription_id), body.active_seats)
    )


@api.get("/cart")
@described({200: Cart})
def get_cart() -> Response:
    """The signed-in user's own cart, each line priced today."""
    return answer(cart.get_cart(runtime().uow(), current_actor()))


@api.post("/cart/items")
@described({201: Cart}, body=CartItemBody, refusals=[403, 404, 409])
def add_to_cart() -> Response:
    """Seats above the paid count into the cart; without `"confirm": true`, 409 with the quote."""
    actor = current_actor()
    body = parse(CartItemBody)
    view = cart.add_item(
        runtime().uow(), actor, body.subscription_id, body.active_seats, body.confirm
    )
    return answer(view, 201)


@api.delete("/cart/items/<int:item_id>")
@described({204: None}, refusals=[403, 404])
def remove_from_cart(item_id: int) -> Response:
    """A line out of the cart."""
    cart.remove_item(runtime().uow(), current_actor(), resource_id(item_id))
    return Response(status=204)


@api.post("/checkout")
@described({202: PurchaseAccepted}, body=CheckoutBody, headers=IdempotencyKey, refusals=[403, 409])
def do_checkout() -> Response:
    """Pay the cart (a new card, or `{}` for the saved one): stored, then charged by a worker."""
    actor = current_actor()
    body = parse(CheckoutBody)
    purchase_id, status, queued = checkout.checkout(
        runtime().uow(), actor, request.headers.get("Idempotency-Key"), body.payment_method
    )
    if not queued:
        dispatcher().charge(purchase_id)
    response = answer({"purchase_id": purchase_id, "status": status}, 202)
    response.headers["Location"] = f"/api/purchases/{purchase_id}"
    return response


@api.put("/payment-method")
@described({200: SavedCard}, body=PaymentMethodBody, refusals=[403, 409, 503])
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
@described(
    {202: PurchaseAccepted},
    body=CheckoutBody,
    headers=IdempotencyKey,
    refusals=[403, 404, 409],
)
def retry_purchase(purchase_id: int) -> Response:
    """A failed purchase's lines paid again with another card (README "Using it")."""
    actor = current_actor()
    body = parse(CheckoutBody)
    new_id, status, queued = checkout.retry_purchase(
        runtime().uow(),
        actor,
        resource_id(purchase_id),
        request.headers.get("Idempotency-Key"),
        body.payment_method,
    )
    if not queued:
        dispatcher().charge(new_id)
    response = answer({"purchase_id": new_id, "status": status, "retry_of": purchase_id}, 202)
    response.headers["Location"] = f"/api/purchases/{new_id}"
    return response


@api.get("/purchases/<int:purchase_id>")
@described({200: Purchase}, refusals=[404])
def get_purchase(purchase_id: int) -> Response:
    """A purchase's status, lines and amounts (`client_secret` only to its buyer)."""
    actor = current_actor()
    return answer(purchases.get_purchase(runtime().uow(), actor, resource_id(purchase_id)))


@api.get("/openapi.json")
@described({200: Document}, public=True)
def openapi_document() -> Response:
    """This description, OpenAPI 3.1 (public: it shows no one's data)."""
    return jsonify(document())
