"""Templates, sessions and the containers of each session.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from corral.store.tables import ID, UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("file", sa.Text(), nullable=False),
        sa.Column("base_dir", sa.String(4096), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("template", sa.String(63), nullable=False),
        sa.Column("file", sa.Text(), nullable=False),
        sa.Column("base_dir", sa.String(4096), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("host", sa.String(63), nullable=False),
        sa.Column("network", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("cpus", sa.Float(), nullable=False),
        sa.Column("memory", sa.BigInteger(), nullable=False),
        sa.Column("ttl_s", sa.Float(), nullable=False),
        sa.Column("endpoints", sa.JSON(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("running_at", UtcDateTime(), nullable=True),
        sa.Column("ended_at", UtcDateTime(), nullable=True),
        sa.Column("expires_at", UtcDateTime(), nullable=True),
        sa.Column("cleaned_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_sessions_state", "sessions", ["state"])
    op.create_index("ix_sessions_cleaned", "sessions", ["cleaned_at"])
    op.create_table(
        "session_containers",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(16), nullable=False),
        sa.Column("service", sa.String(63), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("container_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("logs", sa.Text(), nullable=False),
    )
    op.create_index(
        "ux_session_containers", "session_containers", ["session_id", "service"], unique=True
    )


def downgrade() -> None:
    op.drop_table("session_containers")
    op.drop_table("sessions")
    op.drop_table("templates")
