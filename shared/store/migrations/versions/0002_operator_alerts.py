"""Operator alerts (refunds, disputes, parked work) and sync cursors for reconciliation.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "operator_alerts",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), sa.ForeignKey("webhook_events.id"), nullable=True),
        sa.Column(
            "organization_id", sa.BigInteger(), sa.ForeignKey("organizations.id"), nullable=True
        ),
        sa.Column("purchase_id", sa.BigInteger(), sa.ForeignKey("purchases.id"), nullable=True),
        sa.Column("stripe_object_id", sa.Text(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("event_id", name="one_alert_per_event"),
    )
    op.create_index("ix_operator_alerts_open", "operator_alerts", ["resolved_at"])
    op.create_table(
        "sync_cursors",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
