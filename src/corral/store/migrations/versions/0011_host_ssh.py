"""Hosts: per-host ssh options for ssh:// engines (identity file, remote Docker socket).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts") as table:
        table.add_column(sa.Column("ssh", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts") as table:
        table.drop_column("ssh")
