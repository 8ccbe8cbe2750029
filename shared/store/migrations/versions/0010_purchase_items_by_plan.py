"""Purchase lines found by plan: every charge asks for the purchases still to charge for its
plans, every checkout whether one is ahead of it, and the sweep which waiting ones nobody
woke; without this index each of those read the whole table.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.create_index("ix_purchase_items_subscription_id", "purchase_items", ["subscription_id"])


def downgrade() -> None:
    op.drop_index("ix_purchase_items_subscription_id", table_name="purchase_items")
