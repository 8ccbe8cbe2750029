"""Operator pages: one-time sign-in links for operators, in the same table as the customers'
(a link signs in exactly one of a user or an operator), and the audit log read by target
(a purchase's or an event's page lists what operators did to it).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.add_column(
        "login_links",
        sa.Column("operator_id", sa.BigInteger(), sa.ForeignKey("operators.id"), nullable=True),
    )
    op.alter_column("login_links", "user_id", existing_type=sa.BigInteger(), nullable=True)
    op.create_check_constraint(
        "link_for_one_person", "login_links", "num_nonnulls(user_id, operator_id) = 1"
    )
    op.create_index("ix_login_links_operator_id", "login_links", ["operator_id"])
    op.create_index("ix_operator_actions_target", "operator_actions", ["target"])


def downgrade() -> None:
    op.drop_index("ix_operator_actions_target", "operator_actions")
    op.execute("DELETE FROM login_links WHERE operator_id IS NOT NULL")
    op.drop_index("ix_login_links_operator_id", "login_links")
    op.drop_constraint("link_for_one_person", "login_links", type_="check")
    op.alter_column("login_links", "user_id", existing_type=sa.BigInteger(), nullable=False)
    op.drop_column("login_links", "operator_id")
