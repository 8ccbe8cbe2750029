"""The seat ledger: organizations, users, subscriptions, audit, cart, purchases, events.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None

NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("timezone", sa.Text(), nullable=False),
        sa.Column("stripe_customer_id", sa.Text(), nullable=True, unique=True),
        sa.Column("payment_method_id", sa.Text(), nullable=True),
        sa.Column("payment_method_brand", sa.Text(), nullable=True),
        sa.Column("payment_method_last4", sa.String(length=4), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint("currency ~ '^[a-z]{3}$'", name="currency_code"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "organization_id", sa.BigInteger(), sa.ForeignKey("organizations.id"), nullable=False
        ),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint("role IN ('owner', 'buyer', 'member')", name="role_known"),
    )
    op.create_index("ix_users_organization_id", "users", ["organization_id"])
    op.create_index(
        "users_email_per_org",
        "users",
        ["organization_id", sa.literal_column("lower(email)")],
        unique=True,
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "organization_id", sa.BigInteger(), sa.ForeignKey("organizations.id"), nullable=False
        ),
        sa.Column("product", sa.Text(), nullable=False),
        sa.Column("unit_amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("interval", sa.Text(), nullable=False),
        sa.Column("current_period_start", sa.Date(), nullable=False),
        sa.Column("renews_at", sa.Date(), nullable=False),
        sa.Column("paid_seats", sa.Integer(), nullable=False),
        sa.Column("active_seats", sa.Integer(), nullable=False),
        sa.Column("charging_purchase_id", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.CheckConstraint("interval IN ('month', 'year')", name="interval_known"),
        sa.CheckConstraint("active_seats >= 1 AND active_seats <= paid_seats", name="seat_counts"),
        sa.CheckConstraint("renews_at > current_period_start", name="period_order"),
        sa.CheckConstraint("unit_amount > 0", name="unit_amount_positive"),
    )
    op.create_index("ix_subscriptions_organization_id", "subscriptions", ["organization_id"])
    op.create_table(
        "cart_items",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("user_id", sa.BigInteger(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column(
            "subscription_id", sa.BigInteger(), sa.ForeignKey("subscriptions.id"), nullable=False
        ),
        sa.Column("active_seats", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.UniqueConstraint("user_id", "subscription_id", name="one_line_per_plan"),
        sa.CheckConstraint("active_seats >= 1", name="cart_seats_positive"),
    )
    op.create_index("ix_cart_items_user_id", "cart_items", ["user_id"])
    op.create_table(
        "purchases",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "organization_id", sa.BigInteger(), sa.ForeignKey("organizations.id"), nullable=False
        ),
        sa.Column("user_id", sa.BigInteger(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("confirmed_amount", sa.BigInteger(), nullable=False),
        sa.Column("amount_due", sa.BigInteger(), nullable=False),
        sa.Column("payment_method_id", sa.Text(), nullable=False),
        sa.Column("new_card", sa.Boolean(), nullable=False),
        sa.Column("stripe_payment_intent_id", sa.Text(), nullable=True, unique=True),
        sa.Column("client_secret", sa.Text(), nullable=True),
        sa.Column("failure_code", sa.Text(), nullable=True),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("attention", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'requires_action', 'succeeded', 'failed')",
            name="status_known",
        ),
        sa.CheckConstraint(
            "amount_due >= 0 AND amount_due <= confirmed_amount", name="never_above"
        ),
        sa.UniqueConstraint("user_id", "idempotency_key", name="one_purchase_per_key"),
    )
    op.create_index("ix_purchases_organization_id", "purchases", ["organization_id"])
    op.create_index("ix_purchases_status", "purchases", ["status"])
    op.create_table(
        "purchase_items",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("purchase_id", sa.BigInteger(), sa.ForeignKey("purchases.id"), nullable=False),
        sa.Column(
            "subscription_id", sa.BigInteger(), sa.ForeignKey("subscriptions.id"), nullable=False
        ),
        sa.Column("active_seats", sa.Integer(), nullable=False),
        sa.Column("seats_to_buy", sa.Integer(), nullable=False),
        sa.Column("subtotal", sa.BigInteger(), nullable=False),
        sa.Column("proration_coupon", sa.BigInteger(), nullable=False),
        sa.Column("amount_due", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "proration_coupon + amount_due = subtotal AND amount_due >= 0",
            name="line_adds_up",
        ),
    )
    op.create_index("ix_purchase_items_purchase_id", "purchase_items", ["purchase_id"])
    op.create_table(
        "seat_changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "subscription_id", sa.BigInteger(), sa.ForeignKey("subscriptions.id"), nullable=False
        ),
        sa.Column("actor_user_id", sa.BigInteger(), sa.ForeignKey("users.id"), nullable=True),
        sa.Column("purchase_id", sa.BigInteger(), sa.ForeignKey("purchases.id"), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("paid_before", sa.Integer(), nullable=False),
        sa.Column("paid_after", sa.Integer(), nullable=False),
        sa.Column("active_before", sa.Integer(), nullable=False),
        sa.Column("active_after", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.UniqueConstraint("purchase_id", "subscription_id", name="purchase_applied_once"),
    )
    op.create_index("ix_seat_changes_subscription_id", "seat_changes", ["subscription_id"])
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("object_id", sa.Text(), nullable=True),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("source", sa.Text(), server_default="webhook", nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
    )
    op.create_index("ix_webhook_events_object_id", "webhook_events", ["object_id"])
    op.create_index("ix_webhook_events_outcome", "webhook_events", ["outcome"])
    op.create_index("ix_webhook_events_type", "webhook_events", ["type"])
