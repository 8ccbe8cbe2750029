"""Finding work the queue lost: the database says what is due, Redis only wakes workers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, or_, select

from shared.db import UnitOfWork
from shared.domain import PurchaseStatus
from shared.models import Purchase


def due_purchases(uow: UnitOfWork, stuck_after: float, now: datetime | None = None) -> list[int]:
    """Pending or processing purchases nobody touched lately, and payments awaiting the bank."""
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
                    ),
                )
                .order_by(Purchase.id)
                .limit(1000)
            )
        )
