"""The robot fleet: robots, their commands, maps (with traffic tables) and missions.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from corral.store.tables import ID, UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "robots",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("group", sa.String(63), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("map", sa.String(63), nullable=True),
        sa.Column("marker", sa.String(63), nullable=True),
        sa.Column("signed", sa.Boolean(), nullable=False),
        sa.Column("key", sa.String(64), nullable=True),
        sa.Column("token_id", ID, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_seen", UtcDateTime(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "robot_commands",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("robot", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("acked_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_robot_commands_open", "robot_commands", ["robot", "acked_at"])
    op.create_table(
        "fleet_maps",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("doc", sa.JSON(), nullable=False),
        sa.Column("traffic", sa.JSON(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "missions",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("robot", sa.String(63), nullable=False),
        sa.Column("map", sa.String(63), nullable=False),
        sa.Column("goal", sa.String(63), nullable=False),
        sa.Column("objective", sa.Text(), nullable=False),
        sa.Column("route", sa.JSON(), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("task_id", ID, nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_missions_state", "missions", ["state", "robot"])


def downgrade() -> None:
    op.drop_index("ix_missions_state", "missions")
    op.drop_table("missions")
    op.drop_table("fleet_maps")
    op.drop_index("ix_robot_commands_open", "robot_commands")
    op.drop_table("robot_commands")
    op.drop_table("robots")
