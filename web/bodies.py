"""Parsing request bodies: 400 when it is not JSON, 422 when a value is wrong."""

from __future__ import annotations

import json
from typing import TypeVar

from flask import request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from shared.domain.errors import Invalid, NotFound
from shared.domain.ids import MAX_ID
from shared.domain.seats import MAX_SEATS
from web.errors import Malformed

Body = TypeVar("Body", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SeatsBody(Strict):
    active_seats: int = Field(ge=1, le=MAX_SEATS)


class CartItemBody(Strict):
    subscription_id: int = Field(ge=1, le=MAX_ID)
    active_seats: int = Field(ge=1, le=MAX_SEATS)
    confirm: bool = False


class PaymentMethodBody(Strict):
    payment_method: str = Field(min_length=1, max_length=255)


class CheckoutBody(Strict):
    payment_method: str | None = Field(default=None, min_length=1, max_length=255)


def _describe(error: ValidationError) -> str:
    parts = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "body"
        if problem["type"] == "extra_forbidden":
            parts.append(f"{field}: unknown field")
        elif problem["type"] == "missing":
            parts.append(f"{field}: required")
        else:
            parts.append(f"{field}: {problem['msg'].lower()}")
    return "; ".join(parts)


def parse(model: type[Body]) -> Body:
    raw = request.get_data(cache=True)
    limit = request.max_content_length
    if limit is not None and request.content_length is None and len(raw) >= limit:
        # a streamed (chunked) body is cut at the limit by Werkzeug, not refused: refuse it here
        raise RequestEntityTooLarge()
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError) as error:
        raise Malformed("the body is not valid JSON", "malformed_json") from error
    except RecursionError as error:  # [[[[...]]]] within the size limit
        raise Malformed("the body is nested too deeply", "malformed_json") from error
    if not isinstance(data, dict):
        raise Malformed("the body must be a JSON object", "malformed_json")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise Invalid(_describe(error), "invalid_request") from error


def resource_id(value: int) -> int:
    """Ids past the database's range cannot exist."""
    if not 1 <= value <= MAX_ID:
        raise NotFound("not found", "not_found")
    return value
