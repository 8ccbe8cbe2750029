"""Renewals: a plan's status, its anchor day, and one renewal per subscription and period.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column(
        "subscriptions",
        sa.Column("status", sa.Text(), server_default="active", nullable=False),
    )
    op.create_check_constraint(
        "status_known", "subscriptions", "status IN ('active', 'past_due', 'suspended')"
    )
    op.add_column("subscriptions", sa.Column("anchor_day", sa.SmallInteger(), nullable=True))
    op.execute("UPDATE subscriptions SET anchor_day = EXTRACT(DAY FROM current_period_start)")
    op.alter_column("subscriptions", "anchor_day", nullable=False)
    op.create_check_constraint("anchor_day_valid", "subscriptions", "anchor_day BETWEEN 1 AND 31")
    op.create_index("ix_subscriptions_renews_at", "subscriptions", ["renews_at", "id"])
    op.create_index(
        "ix_subscriptions_not_active",
        "subscriptions",
        ["status"],
        postgresql_where=sa.text("status <> 'active'"),
    )
    op.create_table(
        "renewals",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "subscription_id", sa.BigInteger(), sa.ForeignKey("subscriptions.id"), nullable=False
        ),
        sa.Column(
            "organization_id", sa.BigInteger(), sa.ForeignKey("organizations.id"), nullable=False
        ),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("seats", sa.Integer(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("payment_method_id", sa.Text(), nullable=True),
        sa.Column("stripe_payment_intent_id", sa.Text(), nullable=True, unique=True),
        sa.Column("client_secret", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failure_code", sa.Text(), nullable=True),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("attention", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("subscription_id", "period_start", name="one_renewal_per_period"),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'requires_action', 'succeeded', 'failed')",
            name="renewal_status_known",
        ),
        sa.CheckConstraint("amount IS NULL OR amount >= 0", name="renewal_amount_positive"),
    )
    op.create_index("ix_renewals_status_next", "renewals", ["status", "next_attempt_at"])
    op.create_index("ix_renewals_organization_id", "renewals", ["organization_id"])


def downgrade() -> None:
    op.drop_table("renewals")
    op.drop_index("ix_subscriptions_not_active", "subscriptions")
    op.drop_index("ix_subscriptions_renews_at", "subscriptions")
    op.drop_constraint("anchor_day_valid", "subscriptions")
    op.drop_column("subscriptions", "anchor_day")
    op.drop_constraint("status_known", "subscriptions")
    op.drop_column("subscriptions", "status")
