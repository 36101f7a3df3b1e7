"""Stacks and their slots (one row per service replica).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from corral.store.tables import ID, UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stacks",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("file", sa.Text(), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("base_dir", sa.String(4096), nullable=False),
        sa.Column("stopped", sa.JSON(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "stack_slots",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("stack", sa.String(63), nullable=False),
        sa.Column("service", sa.String(63), nullable=False),
        sa.Column("replica", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(63), nullable=False),
        sa.Column("container_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("health", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ux_stack_slots", "stack_slots", ["stack", "service", "replica"], unique=True)


def downgrade() -> None:
    op.drop_table("stack_slots")
    op.drop_table("stacks")
