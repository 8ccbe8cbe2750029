"""Figures operators watch, read from the database in one transaction at scrape time.

Every web process reads the same rows, so the figures agree whichever one answers;
each query is a grouped count over an indexed column or a bounded range, so a scrape
stays fast with hundreds of thousands of purchases and events (`bench/metrics.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.domain.renewals import RenewalStatus
from shared.domain.seats import PurchaseStatus
from shared.store.db import UnitOfWork
from shared.store.models import OperatorAlert, Purchase, Renewal, Subscription, WebhookEvent

UNFINISHED_PURCHASES = (
    PurchaseStatus.PENDING,
    PurchaseStatus.PROCESSING,
    PurchaseStatus.REQUIRES_ACTION,
)
UNFINISHED_RENEWALS = (RenewalStatus.PENDING, RenewalStatus.PROCESSING, RenewalStatus.FAILED)
LAG_WINDOW = timedelta(hours=1)


@dataclass
class Figures:
    purchases: dict[str, int] = field(default_factory=dict)
    purchases_parked: int = 0
    oldest_unfinished_purchase_seconds: float = 0.0
    charge_failures: dict[str, int] = field(default_factory=dict)
    renewals: dict[str, int] = field(default_factory=dict)
    oldest_unfinished_renewal_seconds: float = 0.0
    subscriptions: dict[str, int] = field(default_factory=dict)
    renewals_due: int = 0
    events: dict[str, int] = field(default_factory=dict)
    oldest_pending_event_seconds: float = 0.0
    event_lag_seconds: dict[str, float] = field(default_factory=dict)
    alerts_open: dict[str, int] = field(default_factory=dict)


def _grouped(session: Session, column: Any, *where: Any) -> dict[str, int]:
    query = select(column, func.count()).where(*where).group_by(column)
    return {str(key): int(count) for key, count in session.execute(query)}


def _age(session: Session, column: Any, *where: Any, now: datetime) -> float:
    oldest = session.scalar(select(func.min(column)).where(*where))
    return max(0.0, (now - oldest).total_seconds()) if oldest else 0.0


def figures(uow: UnitOfWork, now: datetime | None = None) -> Figures:
    now = now or datetime.now(UTC)
    with uow:
        session = uow.session
        lag = session.execute(
            select(
                func.percentile_cont(0.5).within_group(
                    func.extract("epoch", WebhookEvent.processed_at - WebhookEvent.received_at)
                ),
                func.percentile_cont(0.99).within_group(
                    func.extract("epoch", WebhookEvent.processed_at - WebhookEvent.received_at)
                ),
            ).where(WebhookEvent.processed_at > now - LAG_WINDOW)
        ).one()
        return Figures(
            purchases=_grouped(session, Purchase.status),
            purchases_parked=int(
                session.scalar(
                    select(func.count())
                    .select_from(Purchase)
                    .where(Purchase.attention.is_not(None))
                )
                or 0
            ),
            oldest_unfinished_purchase_seconds=_age(
                session, Purchase.created_at, Purchase.status.in_(UNFINISHED_PURCHASES), now=now
            ),
            charge_failures=_grouped(
                session, Purchase.failure_code, Purchase.status == PurchaseStatus.FAILED
            ),
            renewals=_grouped(session, Renewal.status),
            oldest_unfinished_renewal_seconds=_age(
                session, Renewal.created_at, Renewal.status.in_(UNFINISHED_RENEWALS), now=now
            ),
            subscriptions=_grouped(session, Subscription.status),
            renewals_due=int(
                session.scalar(
                    select(func.count())
                    .select_from(Subscription)
                    .where(Subscription.renews_at <= now.date())
                )
                or 0
            ),
            events={
                (key if key != "None" else "pending"): count
                for key, count in _grouped(session, WebhookEvent.outcome).items()
            },
            oldest_pending_event_seconds=_age(
                session, WebhookEvent.received_at, WebhookEvent.outcome.is_(None), now=now
            ),
            event_lag_seconds={
                "0.5": float(lag[0] or 0.0),
                "0.99": float(lag[1] or 0.0),
            },
            alerts_open=_grouped(session, OperatorAlert.kind, OperatorAlert.resolved_at.is_(None)),
        )


def purchase_counts_in(session: Session) -> dict[str, int]:
    return _grouped(session, Purchase.status)
