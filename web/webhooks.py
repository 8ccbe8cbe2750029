"""Stripe's webhook endpoint: verify the raw body, store once, enqueue, answer fast."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from shared.payments.stripe_adapter import verify_signature
from shared.services import webhooks
from web.errors import error_response
from web.extensions import parts

stripe_webhooks = Blueprint("webhooks", __name__)


@stripe_webhooks.post("/webhooks/stripe")
def receive() -> Response:
    # One byte over the limit is read: Werkzeug cuts a streamed (chunked) body at the limit
    # without a word, and a cut body would be a 400 bad_signature, not the 413 it is.
    request.max_content_length = webhooks.MAX_EVENT_BYTES + 1
    raw = request.get_data(cache=False)
    if len(raw) > webhooks.MAX_EVENT_BYTES:
        raise RequestEntityTooLarge()
    secrets = list(parts().webhook_secrets)
    header = request.headers.get("Stripe-Signature")
    if webhooks.signed_in_future(header) or not verify_signature(
        raw, header, secrets, webhooks.TOLERANCE_SECONDS
    ):
        return error_response(
            400, "bad_signature", "missing, invalid, stale or future-dated Stripe-Signature"
        )
    stored = webhooks.receive(parts().runtime.uow(), raw)
    if stored == "new":  # an `invalid` one is done already: nothing for a worker to do
        parts().dispatcher.drain_events()
    return jsonify({"received": True, "duplicate": stored == "duplicate"})
