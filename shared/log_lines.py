"""Structured logs: one JSON object per line, with the ids of what is being worked on
(purchase, organization, event, task), and never a secret, a token or card data.

Entry points call `configure` once; code keeps using the standard `logging` module,
and binds ids with `bind` (context variables, so threads and requests keep theirs).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRETS = re.compile(
    r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]+"  # Stripe secret and restricted keys
    r"|whsec_[A-Za-z0-9]+"  # webhook signing secrets
    r"|seat_[A-Za-z0-9_-]{20,}"  # our API and operator tokens
    r"|pi_[A-Za-z0-9]+_secret_[A-Za-z0-9]+"  # PaymentIntent client secrets
    r"|(?:seti|si)_[A-Za-z0-9]+_secret_[A-Za-z0-9]+"  # SetupIntent client secrets
    r"|\b(?:\d[ -]?){13,19}\b"  # anything shaped like a card number
)


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """The last line of defence: whatever slipped into a message, it leaves masked."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = SECRETS.sub("[redacted]", value)
        elif isinstance(value, (list, tuple, dict)):
            event[key] = SECRETS.sub("[redacted]", repr(value))
    return event


def configure(service: str, level: str | None = None) -> None:
    """JSON lines on stderr for every logger of the process (`SEATS_LOG_FORMAT=text` for
    people reading a terminal)."""

    def name_service(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("service", service)
        return event

    pre_chain: list[Any] = [
        name_service,
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    text = os.environ.get("SEATS_LOG_FORMAT") == "text"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if text
        else (structlog.processors.JSONRenderer())
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=pre_chain,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level or os.environ.get("SEATS_LOG_LEVEL") or "INFO")
    # The Stripe SDK writes two INFO lines per call (URL and status, no request id), about
    # 7% of a worker's time in a purchase, and Celery one "received" line per task before
    # its "succeeded" or "failed" line (which has the same task id and its run time); their
    # warnings and errors still come through, and SEATS_LOG_LEVEL=DEBUG shows every line.
    quiet = root.level > logging.DEBUG
    for chatty in ("stripe", "celery.worker.strategy"):
        logging.getLogger(chatty).setLevel(logging.WARNING if quiet else logging.NOTSET)
    structlog.contextvars.clear_contextvars()


def bind(**ids: object) -> None:
    """Ids every line logged from here on (in this thread or request) carries."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in ids.items() if v is not None})


def unbind(*names: str) -> None:
    structlog.contextvars.unbind_contextvars(*names)
