"""Fleet traffic: one row per robot and map instead of the whole table as one JSON value, so
a batch of decisions writes the few robots it changed, not every robot of the map.

Revision ID: 0016
Revises: 0015
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_MAPS = sa.table("fleet_maps", sa.column("name", sa.String()), sa.column("traffic", sa.JSON()))
_TRAFFIC = sa.table(
    "fleet_traffic",
    sa.column("map", sa.String()),
    sa.column("robot", sa.String()),
    sa.column("at", sa.String()),
    sa.column("next", sa.String()),
    sa.column("wait_marker", sa.String()),
    sa.column("wait_resource", sa.String()),
    sa.column("wait_holder", sa.String()),
)


def upgrade() -> None:
    op.create_table(
        "fleet_traffic",
        sa.Column("map", sa.String(63), primary_key=True),
        sa.Column("robot", sa.String(63), primary_key=True),
        sa.Column("at", sa.String(63), nullable=False),
        sa.Column("next", sa.String(63), nullable=True),
        sa.Column("wait_marker", sa.String(63), nullable=True),
        sa.Column("wait_resource", sa.String(160), nullable=True),
        sa.Column("wait_holder", sa.String(63), nullable=True),
    )
    rows: list[dict[str, Any]] = []
    for name, traffic in op.get_bind().execute(sa.select(_MAPS.c.name, _MAPS.c.traffic)):
        robots = (traffic or {}).get("robots") or {}
        waits = (traffic or {}).get("waits") or {}
        for robot, entry in robots.items():
            wait = waits.get(robot) or {}
            rows.append(
                {
                    "map": name,
                    "robot": robot,
                    "at": entry["at"],
                    "next": entry.get("next"),
                    "wait_marker": wait.get("marker"),
                    "wait_resource": wait.get("resource"),
                    "wait_holder": wait.get("holder"),
                }
            )
    if rows:
        op.bulk_insert(_TRAFFIC, rows)
    with op.batch_alter_table("fleet_maps") as table:
        table.drop_column("traffic")


def downgrade() -> None:
    with op.batch_alter_table("fleet_maps") as table:
        table.add_column(
            sa.Column("traffic", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )
    tables: dict[str, dict[str, dict[str, Any]]] = {}
    for row in op.get_bind().execute(sa.select(_TRAFFIC)).mappings():
        found = tables.setdefault(row["map"], {"robots": {}, "waits": {}})
        found["robots"][row["robot"]] = {"at": row["at"], "next": row["next"]}
        if row["wait_marker"] is not None:
            found["waits"][row["robot"]] = {
                "marker": row["wait_marker"],
                "resource": row["wait_resource"],
                "holder": row["wait_holder"],
            }
    for name, traffic in tables.items():
        op.get_bind().execute(_MAPS.update().where(_MAPS.c.name == name).values(traffic=traffic))
    op.drop_table("fleet_traffic")
