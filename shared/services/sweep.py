"""Finding work the queue lost: the database says what is due, Redis only wakes workers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, or_, select

from shared.domain.seats import PurchaseStatus
from shared.store.db import UnitOfWork
from shared.store.models import OperatorAlert, Purchase

BATCH = 1000


def due_purchases(uow: UnitOfWork, stuck_after: float, now: datetime | None = None) -> list[int]:
    """Pending or processing purchases nobody touched lately, payments awaiting the bank,
    and paid purchases whose new card Stripe has not yet made the default.

    Least recently touched first: every charge attempt touches its purchase, so
    a long list of 3-D Secure payments takes turns instead of starving the rest.
    """
    now = now or datetime.now(UTC)
    stale = now - timedelta(seconds=stuck_after)
    with uow:
        return list(
            uow.session.scalars(
                select(Purchase.id)
                .where(
                    Purchase.attention.is_(None),
                    or_(
                        and_(
                            Purchase.status.in_(
                                [PurchaseStatus.PENDING, PurchaseStatus.PROCESSING]
                            ),
                            Purchase.updated_at < stale,
                        ),
                        Purchase.status == PurchaseStatus.REQUIRES_ACTION,
                        and_(Purchase.card_sync_pending, Purchase.updated_at < stale),
                    ),
                )
                .order_by(Purchase.updated_at, Purchase.id)
                .limit(BATCH)
            )
        )


def pending_refunds(uow: UnitOfWork, stuck_after: float, now: datetime | None = None) -> list[int]:
    """Alerts whose automatic refund was decided a while ago but not yet made (Stripe was
    away when it was decided)."""
    stale = (now or datetime.now(UTC)) - timedelta(seconds=stuck_after)
    with uow:
        return list(
            uow.session.scalars(
                select(OperatorAlert.id)
                .where(OperatorAlert.refund_pending, OperatorAlert.created_at < stale)
                .order_by(OperatorAlert.id)
                .limit(BATCH)
            )
        )
