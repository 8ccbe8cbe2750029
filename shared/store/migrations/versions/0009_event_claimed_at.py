"""When a run last took a stored event: the sweep re-sends an event nobody has taken for a
while, never one a drain is working through right now.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    op.add_column("webhook_events", sa.Column("claimed_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("webhook_events", "claimed_at")
