"""Every error is JSON `{"error", "message"}`; no stack trace ever reaches a client."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from shared.domain.errors import Conflict, Forbidden, Invalid, NotFound, Refused
from shared.payments.gateway import PaymentUnavailable
from shared.services.webhooks import BadEvent

log = logging.getLogger("seats.web")

STATUS = {NotFound: 404, Forbidden: 403, Conflict: 409, Invalid: 422}


class Malformed(Refused):
    code = "malformed"


class Unauthorized(Refused):
    code = "unauthorized"


def error_response(status: int, code: str, message: str, **details: object) -> Response:
    response = jsonify({"error": code, "message": message, **details})
    response.status_code = status
    return response


def refused(error: Refused) -> Response:
    if isinstance(error, Malformed | BadEvent):
        return error_response(400, error.code, error.message)
    if isinstance(error, Unauthorized):
        response = error_response(401, error.code, error.message)
        response.headers["WWW-Authenticate"] = 'Bearer realm="seats"'
        return response
    status = next((code for kind, code in STATUS.items() if isinstance(error, kind)), 400)
    return error_response(status, error.code, error.message, **error.details)


def http_error(error: HTTPException) -> Response:
    code = (error.name or "error").lower().replace(" ", "_")
    status = error.code or 500
    response = error_response(status, code, error.description or error.name or "error")
    for name, value in error.get_headers():  # e.g. Allow on a 405
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def unavailable(error: PaymentUnavailable) -> Response:
    """Stripe could not be reached while the request waited on it: nothing was saved."""
    log.warning("payment processor unavailable: %s", error)
    response = error_response(
        503, "payment_unavailable", "the card processor could not be reached; try again shortly"
    )
    response.headers["Retry-After"] = "30"
    return response


OUTAGE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})
"""Server shutting down, crashed, starting up, or out of connections: all pass by themselves."""


def _is_outage(error: Exception) -> bool:
    """The database could not be reached, as opposed to a statement that failed on it (a
    deadlock, a timeout, a limit): those are bugs to see, not outages to wait out."""
    if isinstance(error, PoolTimeout) or getattr(error, "connection_invalidated", False):
        return True
    state = getattr(getattr(error, "orig", None), "sqlstate", None)
    return state is None or state.startswith("08") or state in OUTAGE_STATES


def database_down(error: Exception) -> Response:
    """PostgreSQL could not be reached (stopped, restarting, the pool exhausted): nothing was
    saved, and the same request a little later will work. A 503 with Retry-After tells clients
    (and Stripe, for a webhook) to try again; a 500 would say the request itself is wrong."""
    if not _is_outage(error):
        return unexpected(error)
    log.warning("database unavailable: %s", str(error).splitlines()[0][:300])
    response = error_response(
        503, "database_unavailable", "the service is briefly unavailable; try again shortly"
    )
    response.headers["Retry-After"] = "5"
    return response


def unexpected(error: Exception) -> Response:
    log.exception("unexpected error")
    return error_response(500, "internal_error", "something went wrong on our side; try again")


def register(app: Flask) -> None:
    app.register_error_handler(Refused, refused)
    app.register_error_handler(PaymentUnavailable, unavailable)
    for outage in (OperationalError, InterfaceError, PoolTimeout):
        app.register_error_handler(outage, database_down)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected)
