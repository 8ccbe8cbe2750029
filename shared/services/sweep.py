"""Finding work the queue lost: the database says what is due, Redis only wakes workers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import aliased

from shared.domain.seats import TERMINAL, PurchaseStatus
from shared.store.db import UnitOfWork
from shared.store.models import OperatorAlert, Purchase, PurchaseItem, Subscription

BATCH = 1000
UNWOKEN_AFTER = timedelta(seconds=5)
"""A purchase waiting for its plans that has been first in line, with its plans free and none
of them written since, for this long was not woken (a wake-up lost to a crash after the
commit that freed them, or to an operator's retry): it is sent again without waiting to be
stale. A woken one whose message is still on its way (a queue behind) may get a second one,
which finds nothing to do."""

_line, _plan, _holder = aliased(PurchaseItem), aliased(Subscription), aliased(Purchase)


def _not_free(since: datetime) -> Select[int]:
    """A plan of the purchase that keeps it waiting, as its charger sees it
    (`charging._claim_and_price`): held by another purchase not done; or written since
    `since` (freed by the purchase ahead, which woke it then: its message may be on its way)."""
    return (
        select(_line.id)
        .join(_plan, _plan.id == _line.subscription_id)
        .outerjoin(_holder, _holder.id == _plan.charging_purchase_id)
        .where(
            _line.purchase_id == Purchase.id,
            or_(
                and_(
                    _holder.id != Purchase.id,
                    _holder.status.not_in([status.value for status in TERMINAL]),
                ),
                _plan.updated_at >= since,
            ),
        )
    )


_mine, _theirs, _older = aliased(PurchaseItem), aliased(PurchaseItem), aliased(Purchase)
_BEHIND = (
    select(_theirs.id)
    .join(_mine, _mine.subscription_id == _theirs.subscription_id)
    .join(_older, _older.id == _theirs.purchase_id)
    .where(
        _mine.purchase_id == Purchase.id,
        _older.id < Purchase.id,
        _older.status == PurchaseStatus.PENDING,
        _older.attention.is_(None),
    )
)
"""The other half of the charger's test: an older purchase of its plans still to charge."""


def due_purchases(uow: UnitOfWork, stuck_after: float, now: datetime | None = None) -> list[int]:
    """Pending or processing purchases nobody touched lately, payments awaiting the bank,
    paid purchases whose new card Stripe has not yet made the default, and waiting purchases
    nobody woke although their plans are free (`UNWOKEN_AFTER`).

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
                        and_(
                            Purchase.status == PurchaseStatus.PENDING,
                            Purchase.waiting_since.is_not(None),
                            Purchase.updated_at < now - UNWOKEN_AFTER,
                            ~_not_free(now - UNWOKEN_AFTER).exists(),
                            ~_BEHIND.exists(),
                        ),
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
