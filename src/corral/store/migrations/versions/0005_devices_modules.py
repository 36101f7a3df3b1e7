"""Wasm devices, modules (with data files) and deployments.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from corral.store.tables import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("addresses", sa.JSON(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(255), nullable=False),
        sa.Column("tls", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("description", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("blacklisted", sa.Boolean(), nullable=False),
        sa.Column("ok_checks", sa.Integer(), nullable=False),
        sa.Column("failed_checks", sa.Integer(), nullable=False),
        sa.Column("status_log", sa.JSON(), nullable=False),
        sa.Column("health", sa.JSON(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "modules",
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("binary", sa.LargeBinary(), nullable=False),
        sa.Column("exports", sa.JSON(), nullable=False),
        sa.Column("requirements", sa.JSON(), nullable=False),
        sa.Column("functions", sa.JSON(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_modules_name", "modules", ["name"])
    op.create_index("ux_modules_name_sha", "modules", ["name", "sha256"], unique=True)
    op.create_table(
        "module_files",
        sa.Column("module_id", sa.String(24), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("media_type", sa.String(127), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(24), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("sequence", sa.JSON(), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("parts", sa.JSON(), nullable=False),
        sa.Column("responses", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("deployments")
    op.drop_table("module_files")
    op.drop_index("ux_modules_name_sha", "modules")
    op.drop_index("ix_modules_name", "modules")
    op.drop_table("modules")
    op.drop_table("devices")
