"""Figures operators watch: purchases by status, parked work, webhook outcomes."""

from __future__ import annotations

from sqlalchemy import func, select

from shared.store.db import UnitOfWork
from shared.store.models import Purchase, Renewal, Subscription, WebhookEvent


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


def renewal_counts(uow: UnitOfWork) -> dict[str, int]:
    with uow:
        rows = uow.session.execute(select(Renewal.status, func.count()).group_by(Renewal.status))
        return {status: count for status, count in rows}


def subscription_counts(uow: UnitOfWork) -> dict[str, int]:
    """Plans by standing: active, past_due, suspended."""
    with uow:
        rows = uow.session.execute(
            select(Subscription.status, func.count()).group_by(Subscription.status)
        )
        return {status: count for status, count in rows}


def renewals_due(uow: UnitOfWork) -> int:
    """Plans whose renewal date has come (UTC) and whose period has not moved yet."""
    with uow:
        return int(
            uow.session.scalar(
                select(func.count())
                .select_from(Subscription)
                .where(Subscription.renews_at <= func.current_date())
            )
            or 0
        )
