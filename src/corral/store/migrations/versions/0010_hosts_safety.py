"""Hosts: names the user removed that corral must not register again by itself (the
auto-registered `local`), and the explicit `insecure` consent for unencrypted or
unverified engine connections.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

from corral.store.tables import UtcDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "host_tombstones",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("removed_at", UtcDateTime(), nullable=False),
    )
    with op.batch_alter_table("hosts") as table:
        table.add_column(
            sa.Column("insecure", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("hosts") as table:
        table.drop_column("insecure")
    op.drop_table("host_tombstones")
