"""Missions: the actions a robot performs at the goal (VDA 5050 node actions such as pick
and drop), each with the status its vehicle last reported.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "missions", sa.Column("actions", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
    )


def downgrade() -> None:
    op.drop_column("missions", "actions")
