"""Operators (a role outside every organization) and the audit log of what they do.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.create_index("operators_email", "operators", [sa.text("lower(email)")], unique=True)
    op.create_table(
        "operator_actions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("operator_id", sa.BigInteger(), sa.ForeignKey("operators.id"), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("detail", JSONB(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.create_index("ix_operator_actions_created_at", "operator_actions", ["created_at"])
    # scrapes and operator lists read these often; keep them off full scans
    op.create_index(
        "ix_purchases_unfinished",
        "purchases",
        ["created_at"],
        postgresql_where=sa.text("status IN ('pending', 'processing', 'requires_action')"),
    )
    op.create_index(
        "ix_webhook_events_unprocessed",
        "webhook_events",
        ["received_at"],
        postgresql_where=sa.text("outcome IS NULL"),
    )
    op.create_index("ix_webhook_events_processed_at", "webhook_events", ["processed_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_events_processed_at", "webhook_events")
    op.drop_index("ix_webhook_events_unprocessed", "webhook_events")
    op.drop_index("ix_purchases_unfinished", "purchases")
    op.drop_table("operator_actions")
    op.drop_table("operators")
