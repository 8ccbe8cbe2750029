"""Tables. The schema itself is created only by the Alembic migrations."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.domain.cards import Card


class Base(DeclarativeBase):
    pass


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(String(3))
    timezone: Mapped[str] = mapped_column(Text)
    stripe_customer_id: Mapped[str | None] = mapped_column(Text, unique=True)
    payment_method_id: Mapped[str | None] = mapped_column(Text)
    payment_method_brand: Mapped[str | None] = mapped_column(Text)
    payment_method_last4: Mapped[str | None] = mapped_column(String(4))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    @property
    def saved_card(self) -> Card | None:
        """The card renewals are charged to, if any."""
        if self.payment_method_id is None:
            return None
        return Card(self.payment_method_id, self.payment_method_brand, self.payment_method_last4)

    def keep_card(self, card: Card | None) -> None:
        self.payment_method_id = card.id if card else None
        self.payment_method_brand = card.brand if card else None
        self.payment_method_last4 = card.last4 if card else None


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    email: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    organization: Mapped[Organization] = relationship()

    __table_args__ = (
        Index("users_email_per_org", "organization_id", func.lower(email), unique=True),
        CheckConstraint("role IN ('owner', 'buyer', 'member')", name="role_known"),
    )


class Subscription(Base):
    __tablename__ = "subscriptions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    product: Mapped[str] = mapped_column(Text)
    unit_amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    interval: Mapped[str] = mapped_column(Text)
    current_period_start: Mapped[date] = mapped_column(Date)
    renews_at: Mapped[date] = mapped_column(Date)
    paid_seats: Mapped[int] = mapped_column(Integer)
    active_seats: Mapped[int] = mapped_column(Integer)
    charging_purchase_id: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(Text, default="active")
    anchor_day: Mapped[int] = mapped_column(SmallInteger)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    organization: Mapped[Organization] = relationship()

    __table_args__ = (
        CheckConstraint("status IN ('active', 'past_due', 'suspended')", name="status_known"),
        CheckConstraint("anchor_day BETWEEN 1 AND 31", name="anchor_day_valid"),
        CheckConstraint("active_seats >= 1 AND active_seats <= paid_seats", name="seat_counts"),
        CheckConstraint("unit_amount > 0", name="unit_amount_positive"),
        CheckConstraint("renews_at > current_period_start", name="period_order"),
        CheckConstraint("interval IN ('month', 'year')", name="interval_known"),
    )


class Renewal(Base):
    """One per subscription and period: the charge that starts the period at `period_start`.

    Unique on (subscription, period) so however many scans, workers or beats run, a
    period is renewed once; its PaymentIntent is recorded before it is confirmed.
    """

    __tablename__ = "renewals"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id"))
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    period_start: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(Text)
    currency: Mapped[str] = mapped_column(String(3))
    seats: Mapped[int | None] = mapped_column(Integer)
    amount: Mapped[int | None] = mapped_column(BigInteger)
    payment_method_id: Mapped[str | None] = mapped_column(Text)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(Text, unique=True)
    client_secret: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failure_code: Mapped[str | None] = mapped_column(Text)
    failure_message: Mapped[str | None] = mapped_column(Text)
    attention: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    subscription: Mapped[Subscription] = relationship()

    __table_args__ = (
        UniqueConstraint("subscription_id", "period_start", name="one_renewal_per_period"),
        CheckConstraint(
            "status IN ('pending', 'processing', 'requires_action', 'succeeded', 'failed')",
            name="renewal_status_known",
        ),
        Index("ix_renewals_status_next", "status", "next_attempt_at"),
    )


class SeatChange(Base):
    """Audit trail: every change of a seat count, who made it and why."""

    __tablename__ = "seat_changes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id"), index=True)
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    purchase_id: Mapped[int | None] = mapped_column(ForeignKey("purchases.id"))
    reason: Mapped[str] = mapped_column(Text)
    paid_before: Mapped[int] = mapped_column(Integer)
    paid_after: Mapped[int] = mapped_column(Integer)
    active_before: Mapped[int] = mapped_column(Integer)
    active_after: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        UniqueConstraint("purchase_id", "subscription_id", name="purchase_applied_once"),
    )


class CartItem(Base):
    __tablename__ = "cart_items"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id"))
    active_seats: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    subscription: Mapped[Subscription] = relationship()

    __table_args__ = (UniqueConstraint("user_id", "subscription_id", name="one_line_per_plan"),)


class Purchase(Base):
    __tablename__ = "purchases"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    idempotency_key: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, index=True)
    currency: Mapped[str] = mapped_column(String(3))
    confirmed_amount: Mapped[int] = mapped_column(BigInteger)
    amount_due: Mapped[int] = mapped_column(BigInteger)
    payment_method_id: Mapped[str] = mapped_column(Text)
    new_card: Mapped[bool]
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(Text, unique=True)
    client_secret: Mapped[str | None] = mapped_column(Text)
    failure_code: Mapped[str | None] = mapped_column(Text)
    failure_message: Mapped[str | None] = mapped_column(Text)
    attention: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    request_fingerprint: Mapped[str | None] = mapped_column(Text)
    card_sync_pending: Mapped[bool] = mapped_column(default=False)
    action_required_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # set when a charger found the plan busy, or at checkout behind another purchase of its
    # plan: the purchase ahead wakes it when done (the sweep, if that wake-up was lost)
    waiting_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    retry_of_id: Mapped[int | None] = mapped_column(ForeignKey("purchases.id"), index=True)
    """The failed purchase whose lines this one pays again with another card."""

    items: Mapped[list[PurchaseItem]] = relationship(order_by="PurchaseItem.subscription_id")
    organization: Mapped[Organization] = relationship()

    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="one_purchase_per_key"),
        CheckConstraint(
            "status IN ('pending', 'processing', 'requires_action', 'succeeded', 'failed')",
            name="status_known",
        ),
        CheckConstraint("amount_due >= 0 AND amount_due <= confirmed_amount", name="never_above"),
    )


class PurchaseItem(Base):
    __tablename__ = "purchase_items"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    purchase_id: Mapped[int] = mapped_column(ForeignKey("purchases.id"), index=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id"), index=True)
    active_seats: Mapped[int] = mapped_column(Integer)
    seats_to_buy: Mapped[int] = mapped_column(Integer)
    subtotal: Mapped[int] = mapped_column(BigInteger)
    proration_coupon: Mapped[int] = mapped_column(BigInteger)
    amount_due: Mapped[int] = mapped_column(BigInteger)
    renews_at: Mapped[date | None] = mapped_column(Date)

    subscription: Mapped[Subscription] = relationship()


class LoginLink(Base):
    """A one-time sign-in link, to the customer pages (a user's) or to /ops (an operator's):
    only its hash is kept."""

    __tablename__ = "login_links"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    operator_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookEvent(Base):
    """A Stripe event, stored once by its id before anything acts on it."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    type: Mapped[str] = mapped_column(Text, index=True)
    object_id: Mapped[str | None] = mapped_column(Text, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    source: Mapped[str] = mapped_column(Text, default="webhook")
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When a run last took it (a drain or a task of its own)."""
    outcome: Mapped[str | None] = mapped_column(Text, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class OperatorAlert(Base):
    """Something a person must look at: money went back (refund, dispute) or work is stuck."""

    __tablename__ = "operator_alerts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)
    event_id: Mapped[str | None] = mapped_column(ForeignKey("webhook_events.id"), unique=True)
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"))
    purchase_id: Mapped[int | None] = mapped_column(ForeignKey("purchases.id"))
    stripe_object_id: Mapped[str | None] = mapped_column(Text)
    amount: Mapped[int | None] = mapped_column(BigInteger)
    message: Mapped[str] = mapped_column(Text)
    dedupe_key: Mapped[str | None] = mapped_column(Text, unique=True)
    refund_id: Mapped[str | None] = mapped_column(Text)
    refund_pending: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Operator(Base):
    """Someone who runs the service: outside every organization, with pages under /ops."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    email: Mapped[str] = mapped_column(Text)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index("operators_email", func.lower(email), unique=True),)


class OperatorAction(Base):
    """Every action an operator (or an operator's command) took, by whom, on what."""

    __tablename__ = "operator_actions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    operator_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text, index=True)
    outcome: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )


class SyncCursor(Base):
    """How far reconciliation has read Stripe's event list."""

    __tablename__ = "sync_cursors"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


# The tables themselves, for Core statements built once on the hottest paths (an ORM
# UPDATE also works out what in the session it changes; these skip that).
PURCHASES = cast(Table, Purchase.__table__)
RENEWALS = cast(Table, Renewal.__table__)
ORGANIZATIONS = cast(Table, Organization.__table__)
CART_ITEMS = cast(Table, CartItem.__table__)
SUBSCRIPTIONS = cast(Table, Subscription.__table__)
SEAT_CHANGES = cast(Table, SeatChange.__table__)
PURCHASE_ITEMS = cast(Table, PurchaseItem.__table__)
