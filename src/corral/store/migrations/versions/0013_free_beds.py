"""Beds: an index for the nearest free bed of a type (clean, in a rack), so a ready
message's bed choice reads a few index entries per rack, not every bed of the farm.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_beds_free", "beds", ["type", "state", "rack", "slot"])


def downgrade() -> None:
    op.drop_index("ix_beds_free", table_name="beds")
