"""Money safety: request fingerprints, alert deduplication and refunds that retry, priced
periods, card bookkeeping that retries on its own, when 3-D Secure was first asked for.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("purchases", sa.Column("request_fingerprint", sa.Text(), nullable=True))
    op.add_column(
        "purchases",
        sa.Column("card_sync_pending", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column(
        "purchases",
        sa.Column("action_required_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column("purchase_items", sa.Column("renews_at", sa.Date(), nullable=True))
    op.add_column("operator_alerts", sa.Column("dedupe_key", sa.Text(), nullable=True))
    op.add_column("operator_alerts", sa.Column("refund_id", sa.Text(), nullable=True))
    op.add_column(
        "operator_alerts",
        sa.Column("refund_pending", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.create_index(
        "ix_operator_alerts_refund_pending",
        "operator_alerts",
        ["id"],
        postgresql_where=sa.text("refund_pending"),
    )
    op.create_unique_constraint("one_alert_per_key", "operator_alerts", ["dedupe_key"])
    op.create_index(
        "ix_purchases_card_sync_pending",
        "purchases",
        ["id"],
        postgresql_where=sa.text("card_sync_pending"),
    )


def downgrade() -> None:
    op.drop_index("ix_operator_alerts_refund_pending", "operator_alerts")
    op.drop_column("operator_alerts", "refund_pending")
    op.drop_column("purchases", "action_required_at")
    op.drop_index("ix_purchases_card_sync_pending", "purchases")
    op.drop_constraint("one_alert_per_key", "operator_alerts")
    op.drop_column("operator_alerts", "refund_id")
    op.drop_column("operator_alerts", "dedupe_key")
    op.drop_column("purchase_items", "renews_at")
    op.drop_column("purchases", "card_sync_pending")
    op.drop_column("purchases", "request_fingerprint")
