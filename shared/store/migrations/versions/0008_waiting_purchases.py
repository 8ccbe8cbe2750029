"""Purchases waiting behind another of their plan say so, so that the one ahead wakes only
purchases that are really waiting (one still in the queue gets there on its own message).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.add_column("purchases", sa.Column("waiting_since", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("purchases", "waiting_since")
