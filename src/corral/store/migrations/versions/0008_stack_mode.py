"""Stacks: the mode given when the stack was applied (`mode` in POST /stacks, `--mode`),
which wins over the file's `x-corral: {mode}`; empty when the file decides.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stacks") as table:
        table.add_column(sa.Column("mode", sa.String(16), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("stacks") as table:
        table.drop_column("mode")
