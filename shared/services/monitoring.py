"""Figures operators watch: purchases by status, parked work, webhook outcomes."""

from __future__ import annotations

from sqlalchemy import func, select

from shared.store.db import UnitOfWork
from shared.store.models import Purchase, WebhookEvent


def purchase_counts(uow: UnitOfWork) -> dict[str, int]:
    with uow:
        rows = uow.session.execute(select(Purchase.status, func.count()).group_by(Purchase.status))
        return {status: count for status, count in rows}


def parked_purchases(uow: UnitOfWork) -> int:
    with uow:
        return int(
            uow.session.scalar(
                select(func.count()).select_from(Purchase).where(Purchase.attention.is_not(None))
            )
            or 0
        )


def event_counts(uow: UnitOfWork) -> dict[str, int]:
    with uow:
        rows = uow.session.execute(
            select(func.coalesce(WebhookEvent.outcome, "pending"), func.count()).group_by(
                WebhookEvent.outcome
            )
        )
        return {outcome: count for outcome, count in rows}
