"""Leadership terms: one row holding the current term, its holder and since when; which
replica leads is read from it (the replicas' own `leader` flag could be rewritten by a stale
heartbeat, so it goes).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from corral.store.tables import UtcDateTime, utcnow

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "leadership",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("term", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("holder", sa.String(32), nullable=False),
        sa.Column("since", UtcDateTime(), nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "term": 0, "holder": "", "since": utcnow()}])
    with op.batch_alter_table("replicas") as replicas:
        replicas.drop_column("leader")


def downgrade() -> None:
    with op.batch_alter_table("replicas") as replicas:
        replicas.add_column(
            sa.Column("leader", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.drop_table("leadership")
