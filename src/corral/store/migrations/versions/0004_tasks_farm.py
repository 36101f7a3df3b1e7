"""Tasks (shared by the print farm and the robot fleet) and the farm: printers, racks,
beds and printer state history.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from corral.store.tables import ID, UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("target", sa.String(63), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("assigned_at", UtcDateTime(), nullable=True),
        sa.Column("sent_at", UtcDateTime(), nullable=True),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_tasks_state", "tasks", ["state", "target"])
    op.create_table(
        "printers",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("door", sa.String(63), nullable=False),
        sa.Column("bed_type", sa.String(63), nullable=False),
        sa.Column("bed", sa.String(63), nullable=True),
        sa.Column("position", sa.Float(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "racks",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("position", sa.Float(), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
    )
    op.create_table(
        "beds",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("type", sa.String(63), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("printer", sa.String(63), nullable=True),
        sa.Column("rack", sa.String(63), nullable=True),
        sa.Column("slot", sa.Integer(), nullable=True),
        sa.Column("reserved_for", sa.String(63), nullable=True),
    )
    op.create_index("ux_beds_slot", "beds", ["rack", "slot"], unique=True)
    op.create_table(
        "printer_states",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("printer", sa.String(63), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("time", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_printer_states", "printer_states", ["printer", "time"])


def downgrade() -> None:
    for table in ("printer_states", "beds", "racks", "printers", "tasks"):
        op.drop_table(table)
