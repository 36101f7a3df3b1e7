"""Stacks: what `down` could not remove because a host did not answer, removed when that
host answers again.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

from corral.store.tables import UtcDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stack_leftovers",
        sa.Column("stack", sa.String(63), primary_key=True),
        sa.Column("host", sa.String(63), primary_key=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("since", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("stack_leftovers")
