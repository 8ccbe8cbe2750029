"""Refusals the services raise; each adapter maps the kind to its own answer."""

from __future__ import annotations


class Refused(Exception):
    """A request that changes nothing. `code` is stable for programs, `message` for people."""

    code = "refused"

    def __init__(self, message: str, code: str | None = None, **details: object) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class NotFound(Refused):
    code = "not_found"


class Forbidden(Refused):
    code = "forbidden"


class Conflict(Refused):
    code = "conflict"


class Invalid(Refused):
    code = "invalid"
