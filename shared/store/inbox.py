"""The hot insert of the webhook inbox, on the driver directly: every event Stripe sends
goes through it, and the ORM's and Core's per-call work was two thirds of its cost."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from shared.store.db import UnitOfWork

INSERT = (
    "INSERT INTO webhook_events"
    " (id, type, object_id, payload, source, attempts, outcome, error, processed_at)"
    " VALUES (%(id)s, %(type)s, %(object_id)s, %(payload)s, %(source)s, %(attempts)s,"
    " %(outcome)s, %(error)s, %(processed_at)s)"
    " ON CONFLICT (id) DO NOTHING RETURNING outcome"
)


def insert_event(uow: UnitOfWork, row: dict[str, Any]) -> dict[str, str | None]:
    """{id: its outcome (None: to be handled)} when new, {} when the id was stored before."""
    with uow.driver_cursor() as cursor:
        cursor.execute(INSERT, {**row, "payload": Jsonb(row["payload"])}, prepare=True)
        found = cursor.fetchone()
    return {} if found is None else {row["id"]: found[0]}
