"""VDA 5050 vehicles: which robots speak VDA 5050, with their manufacturer and serial number.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

from corral.store.tables import UtcDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vda_vehicles",
        sa.Column("robot", sa.String(63), primary_key=True),
        sa.Column("manufacturer", sa.String(127), nullable=False),
        sa.Column("serial", sa.String(127), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index(
        "ux_vda_vehicles_identity", "vda_vehicles", ["manufacturer", "serial"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ux_vda_vehicles_identity", table_name="vda_vehicles")
    op.drop_table("vda_vehicles")
