"""The fleet's writes on PostgreSQL as statements sent straight (`Database.direct`): an
operator's command, a group of acks and a new mission one statement each, a batch one short
transaction; what FleetStore sends through SQLAlchemy on SQLite.

Each proves the leadership term as `LeaderTerm.holds()` and `prove()` do for SQLAlchemy's:
the term's row read FOR SHARE (term 0 is a process outside elections: it proves nothing).
"""

import functools
from datetime import datetime
from typing import Any

from sqlalchemy.dialects import postgresql

from corral.model.traffic import Place
from corral.store.database import Database
from corral.store.direct import json_text
from corral.store.tables import CommandRow, MissionRow, RobotRow, utcnow

_DIALECT: Any = postgresql.dialect()  # type: ignore[no-untyped-call]
_QUOTE = _DIALECT.identifier_preparer.quote
_TERM = "SELECT term FROM leadership WHERE id = 1 FOR SHARE"
_HOLDS = f"(${{n}}::bigint = 0 OR ({_TERM}) = ${{n}})"  # the term: parameter $n
ACKNOWLEDGE = (
    "UPDATE robot_commands SET acked_at = $3 WHERE (id, robot) IN "  # noqa: S608
    "(SELECT * FROM unnest($1::bigint[], $2::varchar[])) AND acked_at IS NULL AND "
    + _HOLDS.format(n=4)
    + " RETURNING id, robot, created_at"
)
_COMMANDS = """INSERT INTO robot_commands (robot, kind, body, created_at)
SELECT v.robot, v.kind, v.body::json, $4
FROM unnest($1::varchar[], $2::varchar[], $3::text[]) WITH ORDINALITY AS v(robot, kind, body, n)
ORDER BY v.n RETURNING id"""
_TRAFFIC_GONE = "DELETE FROM fleet_traffic WHERE map = $1 AND robot = ANY($2::varchar[])"
_TRAFFIC_ROWS = """INSERT INTO fleet_traffic
(map, robot, "at", "next", wait_marker, wait_resource, wait_holder)
SELECT $1, * FROM unnest($2::varchar[], $3::varchar[], $4::varchar[], $5::varchar[],
$6::varchar[], $7::varchar[])
ON CONFLICT (map, robot) DO UPDATE SET "at" = EXCLUDED."at", "next" = EXCLUDED."next",
wait_marker = EXCLUDED.wait_marker, wait_resource = EXCLUDED.wait_resource,
wait_holder = EXCLUDED.wait_holder"""
NONE = (None, None, None)  # a robot that waits for nothing
_UPDATED: tuple[tuple[Any, str], ...] = ((MissionRow.__table__, "id"), (RobotRow.__table__, "name"))


@functools.cache
def insert_text(table: Any, columns: tuple[str, ...]) -> str:
    """`INSERT ... SELECT $1::type, ... WHERE` the term holds `RETURNING id`, for `columns`
    of `table` (their types as PostgreSQL names them), the term the last parameter."""
    names = ", ".join(_QUOTE(c) for c in columns)
    casts = ", ".join(
        f"${n}::{table.c[c].type.compile(dialect=_DIALECT)}" for n, c in enumerate(columns, 1)
    )
    held = _HOLDS.format(n=len(columns) + 1)
    return f"INSERT INTO {_QUOTE(table.name)} ({names}) SELECT {casts} WHERE {held} RETURNING id"


@functools.cache
def _update_text(table: Any, key: str, columns: tuple[str, ...]) -> str:
    """`UPDATE table SET c1 = $2, ... WHERE key = $1` (for executemany)."""
    sets = ", ".join(f"{_QUOTE(c)} = ${n}" for n, c in enumerate(columns, 2))
    # identifiers from corral's own tables, quoted; every value a parameter
    return f"UPDATE {_QUOTE(table.name)} SET {sets} WHERE {_QUOTE(key)} = $1"  # noqa: S608


async def apply(
    db: Database,
    missions: dict[int, dict[str, Any]],
    robots: dict[str, dict[str, Any]],
    acks: dict[str, set[int]],
    commands: list[tuple[str, str, dict[str, Any]]],
    traffic: dict[str, tuple[dict[str, Place], set[str]]],
) -> tuple[list[CommandRow], list[datetime]]:
    """`FleetStore.apply` in one transaction: the term proved first, then the missions' and
    robots' changed fields (one pipelined executemany per set of fields), the acks in one
    statement, the new commands in one (ids in the order given), and each map's traffic
    rows (the changed ones written over in one statement, the gone ones deleted)."""
    assert db.direct is not None
    term = db.term.confirm()
    now = utcnow()
    async with db.direct.transaction() as conn:
        if term:
            db.term.proved(await conn.fetchval(_TERM), term)
        changed: tuple[dict[Any, dict[str, Any]], ...] = (missions, robots)
        for (table, key), rows in zip(_UPDATED, changed, strict=True):
            groups: dict[tuple[str, ...], list[list[Any]]] = {}
            for name, values in rows.items():
                columns = tuple(sorted(values))
                groups.setdefault(columns, []).append([name, *(values[c] for c in columns)])
            for columns, params in groups.items():
                await conn.executemany(_update_text(table, key, columns), params)
        acked: list[datetime] = []
        pairs = sorted((i, robot) for robot, ids in acks.items() for i in ids)
        if pairs:
            done = await conn.fetch(
                ACKNOWLEDGE, [i for i, _ in pairs], [r for _, r in pairs], now, 0
            )
            acked = [row["created_at"] for row in done]
        ids: list[int] = []
        if commands:
            new = await conn.fetch(
                _COMMANDS,
                [robot for robot, _, _ in commands],
                [kind for _, kind, _ in commands],
                [json_text(body) for _, _, body in commands],
                now,
            )
            # one sequence, rows taken in the order given: the ids grow in that order
            ids = sorted(row["id"] for row in new)
        for name, (places, gone) in traffic.items():
            if gone:
                await conn.execute(_TRAFFIC_GONE, name, sorted(gone))
            if places:
                rows_now = [
                    (
                        robot,
                        at,
                        step,
                        *((wait.marker, wait.resource, wait.holder) if wait else NONE),
                    )
                    for robot, (at, step, wait) in places.items()
                ]
                await conn.execute(
                    _TRAFFIC_ROWS, name, *(list(col) for col in zip(*rows_now, strict=True))
                )
    created = [
        CommandRow(id=id, robot=robot, kind=kind, body=body, created_at=now)
        for id, (robot, kind, body) in zip(ids, commands, strict=True)
    ]
    return created, acked
