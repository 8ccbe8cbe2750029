"""Operator alerts: money or work a person must look at, raised once per cause."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.store.models import OperatorAlert


def raise_alert(
    session: Session, *, kind: str, message: str, **fields: Any
) -> OperatorAlert | None:
    """Insert the alert unless one with the same `dedupe_key` or `event_id` exists; return
    the alert for that key (the new one or the earlier one), or None without a key."""
    session.execute(
        insert(OperatorAlert).values(kind=kind, message=message, **fields).on_conflict_do_nothing()
    )
    key = fields.get("dedupe_key")
    if key is None:
        return None
    return session.scalars(
        select(OperatorAlert).where(OperatorAlert.dedupe_key == key).with_for_update()
    ).one()
