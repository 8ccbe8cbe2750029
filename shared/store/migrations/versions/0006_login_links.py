"""Customer pages: one-time sign-in links (stored hashed), and a purchase paid again after a
failure remembers the failed one.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "login_links",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("user_id", sa.BigInteger(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("expires_at > created_at", name="link_expires_after_creation"),
    )
    op.create_index("ix_login_links_user_id", "login_links", ["user_id"])
    op.add_column(
        "purchases",
        sa.Column("retry_of_id", sa.BigInteger(), sa.ForeignKey("purchases.id"), nullable=True),
    )
    op.create_index("ix_purchases_retry_of_id", "purchases", ["retry_of_id"])


def downgrade() -> None:
    op.drop_index("ix_purchases_retry_of_id", "purchases")
    op.drop_column("purchases", "retry_of_id")
    op.drop_index("ix_login_links_user_id", "login_links")
    op.drop_table("login_links")
