"""The hot insert of the webhook inbox, on the driver directly: every event Stripe sends
goes through it, and the ORM's and Core's per-call work was two thirds of its cost."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from shared.store.db import CARD_SYNC_LOCKS, UnitOfWork

log = logging.getLogger("seats.inbox")

INSERT = (
    "INSERT INTO webhook_events"
    " (id, type, object_id, payload, source, attempts, outcome, error, processed_at)"
    " SELECT %(id)s, %(type)s, %(object_id)s, %(payload)s, %(source)s, %(attempts)s,"
    " CASE WHEN applied.done THEN 'processed' ELSE CAST(%(outcome)s AS text) END,"
    " %(error)s,"
    " CASE WHEN applied.done THEN now() ELSE CAST(%(processed_at)s AS timestamptz) END"
    " FROM (SELECT CASE CAST(%(check)s AS text)"
    "  WHEN 'intent' THEN EXISTS (SELECT 1 FROM purchases"
    "   WHERE stripe_payment_intent_id = %(object_id)s AND status = 'succeeded'"
    "   AND NOT card_sync_pending)"
    "   OR EXISTS (SELECT 1 FROM renewals"
    "   WHERE stripe_payment_intent_id = %(object_id)s AND status = 'succeeded')"
    "  WHEN 'saved_card' THEN CASE WHEN EXISTS (SELECT 1 FROM organizations"
    "   WHERE stripe_customer_id = %(object_id)s"
    "   AND payment_method_id = CAST(%(named)s AS text) AND payment_method_brand IS NOT NULL"
    "   FOR SHARE)"
    "   THEN pg_try_advisory_xact_lock(CAST(%(card_sync_locks)s AS integer),"
    "    hashtext(%(object_id)s))"
    "   ELSE false END"
    "  ELSE false END AS done) AS applied"
    " ON CONFLICT (id) DO NOTHING RETURNING outcome"
)
"""Stored `processed` at once when the database already shows all the event asks for
(`check`): a payment of ours paid and settled (`intent`), or the customer's default card
being the card we keep (`saved_card`), unless a handler is syncing that customer's card
right now (it holds the card sync lock): what it is about to write may be older than this
event, which is then queued and handled after it. The organization's row is read FOR SHARE:
a sync committing its write meanwhile is waited for and its card read, not the one in the
statement's snapshot (the lock is tried after the read)."""


def insert_event(
    uow: UnitOfWork,
    row: dict[str, Any],
    check: str | None = None,
    named: str | None = None,
    text: str | None = None,
) -> dict[str, str | None]:
    """{id: its outcome (None: to be handled)} when new, {} when the id was stored before.

    With a `check` the event is stored `processed` at once, in the same statement, when
    the database already shows what it asks for: nothing is queued for it. With the `text`
    the event was read from, that text is the payload (PostgreSQL parses it as JSONB); one
    PostgreSQL refuses (a number past its numeric) is stored as Python writes the event."""
    params = {
        **row,
        "payload": Jsonb(row["payload"]) if text is None else Jsonb(text, dumps=str),
        "check": check,
        "named": named,
        "card_sync_locks": CARD_SYNC_LOCKS,
    }
    with uow.driver_cursor() as cursor:
        try:
            cursor.execute(INSERT, params, prepare=True)
        except psycopg.DataError as refused:
            if text is None:
                raise
            log.warning("event %s stored as Python writes it: %s", row["id"], refused)
            cursor.execute(INSERT, {**params, "payload": Jsonb(row["payload"])}, prepare=True)
        found = cursor.fetchone()
    return {} if found is None else {row["id"]: found[0]}
