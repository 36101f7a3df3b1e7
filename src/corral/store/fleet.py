"""Stored robots, their commands, maps (with their traffic tables, a row per robot) and missions.

The fleet service is the only writer, on the leader (each write proves the leadership
term); telemetry stays in memory and only what must survive a restart (positions at
checkpoints, commands, routes, reservations) is written. Rows are returned detached.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from corral.errors import Conflict, NotFound
from corral.model.traffic import Place
from corral.model.views import TokenView
from corral.store import fleet_direct
from corral.store.database import Database
from corral.store.tables import (
    CommandRow,
    FleetMapRow,
    FleetTrafficRow,
    MissionRow,
    RobotRow,
    TokenRow,
    utcnow,
)
from corral.store.tokens import token_row, token_view


class FleetStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ robots
    async def add_robot(self, row: RobotRow) -> RobotRow:
        async with self.db.fenced() as s:
            if await s.get(RobotRow, row.name) is not None:
                raise Conflict(
                    f"robot {row.name!r} already exists; rotate its credential instead",
                    {"robot": row.name},
                )
            s.add(row)
            await s.flush()
            return row

    async def robots(self) -> list[RobotRow]:
        async with self.db.session() as s:
            return list((await s.scalars(select(RobotRow).order_by(RobotRow.name))).all())

    async def robot(self, name: str) -> RobotRow | None:
        """One robot as stored now (a replica that did not register it reads it here)."""
        async with self.db.session() as s:
            return await s.get(RobotRow, name)

    async def update_robot(self, name: str, **values: Any) -> None:
        async with self.db.fenced() as s:
            await s.execute(update(RobotRow).where(RobotRow.name == name).values(**values))

    async def rotate_credential(
        self, name: str, key: str | None
    ) -> tuple[TokenView, str, TokenView | None]:
        """In one transaction: a new robot token and HMAC key for robot `name`, its old
        token revoked. (new token, its secret, the old one if there was one)."""
        now = utcnow()
        async with self.db.fenced() as s:
            robot = await s.get(RobotRow, name)
            if robot is None:
                raise NotFound(f"robot {name!r} not found", {"robot": name})
            old = await s.get(TokenRow, robot.token_id) if robot.token_id is not None else None
            if old is not None and old.revoked_at is None:
                old.revoked_at = now
            new, secret = token_row(name, "robot", subject=name)
            s.add(new)
            await s.flush()
            robot.token_id, robot.key = new.id, key
            return token_view(new, now), secret, token_view(old, now) if old else None

    async def delete_robot(self, name: str) -> None:
        async with self.db.fenced() as s:
            row = await s.get(RobotRow, name)
            if row is None:
                raise NotFound(f"robot {name!r} not found", {"robot": name})
            await s.delete(row)

    # ------------------------------------------------------------------ commands
    async def add_commands(self, items: list[tuple[str, str, dict[str, Any]]]) -> list[CommandRow]:
        """(robot, kind, body) each; ids grow in the order given. One command (an operator's,
        the usual case) is one statement, the term proved in it."""
        if len(items) != 1:
            rows, _ = await self.apply({}, {}, {}, items, {})
            return rows
        [(robot, kind, body)] = items
        values = {"robot": robot, "kind": kind, "body": body, "created_at": utcnow()}
        return [CommandRow(id=await _insert_proved(self.db, _COMMANDS, values), **values)]

    async def apply(
        self,
        missions: dict[int, dict[str, Any]],
        robots: dict[str, dict[str, Any]],
        acks: dict[str, set[int]],
        commands: list[tuple[str, str, dict[str, Any]]],
        traffic: dict[str, tuple[dict[str, Place], set[str]]],
    ) -> tuple[list[CommandRow], list[datetime]]:
        """A batch of the fleet's writes in one transaction: missions' and robots' changed
        fields, acknowledgements (a robot's own commands only), new commands (ids in the
        order given) and maps' reservations (for each map, the robots whose row changed,
        with their rows now, and the robots gone), so a grant and its move command are
        stored together or not at all. (The new commands, and when each command acknowledged
        now, for the first time, was stored.)"""
        if self.db.direct is not None:
            return await fleet_direct.apply(self.db, missions, robots, acks, commands, traffic)
        async with self.db.fenced_core() as s:
            # By primary key, many rows per statement (one executemany per set of fields):
            # a batch is a few round trips, not one per mission and robot.
            await _update_many(s, MissionRow.__table__, "id", missions)
            await _update_many(s, RobotRow.__table__, "name", robots)
            now = utcnow()
            acked: list[datetime] = []
            # Table statements, not the ORM's: no session state to synchronise, and about a
            # third of the CPU time per batch on the leader (py-spy, 1,000 robots).
            for name, ids in acks.items():
                stored = await s.scalars(
                    update(_COMMANDS)
                    .where(
                        _COMMANDS.c.robot == name,
                        _COMMANDS.c.id.in_(sorted(ids)),
                        _COMMANDS.c.acked_at.is_(None),
                    )
                    .values(acked_at=now)
                    .returning(_COMMANDS.c.created_at)
                )
                acked += stored.all()
            rows = await _insert_commands(s, commands)
            for name, (places, gone) in traffic.items():
                await _write_traffic(s, name, places, gone)
            return rows, acked

    async def acknowledge(
        self, asks: list[tuple[str, list[int]]]
    ) -> tuple[list[list[int]], list[datetime]]:
        """Robots' acknowledgements (robot, ids), all together, apart from the decisions'
        batches: each robot's own commands are stored as acknowledged. For each ask, the ids
        that are none of its robot's commands; and when each command acknowledged now, for
        the first time, was stored.

        One statement, the term proved in it, when every id is an open command of its robot
        (nearly always); any other id is then looked up (a robot's own id acknowledged
        before is fine), in a transaction that proves the term (a statement that wrote
        nothing because the term is over raises StaleTerm there)."""
        pairs = sorted({(i, robot) for robot, ids in asks for i in ids})
        if not pairs:
            return [[] for _ in asks], []
        c = _COMMANDS.c
        done: list[Any]
        if self.db.direct is not None:
            done = await self.db.direct.fetch(
                fleet_direct.ACKNOWLEDGE,
                [i for i, _ in pairs],
                [robot for _, robot in pairs],
                utcnow(),
                self.db.term.confirm(),
            )
        else:
            async with self.db.single() as s:
                done = list(
                    await s.execute(
                        update(_COMMANDS)
                        .where(
                            tuple_(c.id, c.robot).in_(pairs),
                            c.acked_at.is_(None),
                            self.db.term.holds(),
                        )
                        .values(acked_at=utcnow())
                        .returning(c.id, c.robot, c.created_at)
                    )
                )
        acked = [created for _, _, created in done]
        owner: dict[int, str] = {id: robot for id, robot, _ in done}
        others = sorted({i for i, robot in pairs if owner.get(i) != robot})
        if others:
            async with self.db.fenced_core() as s:
                found = await s.execute(select(c.id, c.robot).where(c.id.in_(others)))
                owner.update({id: robot for id, robot in found.all()})
        return [sorted({i for i in ids if owner.get(i) != robot}) for robot, ids in asks], acked

    async def open_commands(self, robot: str, after: int = 0) -> list[CommandRow]:
        """Unacknowledged commands past `after`, an estop first, then by id."""
        async with self.db.session() as s:
            query = (
                select(CommandRow)
                .where(
                    CommandRow.robot == robot, CommandRow.acked_at.is_(None), CommandRow.id > after
                )
                .order_by(CommandRow.id)
            )
            rows = list((await s.scalars(query)).all())
        return sorted(rows, key=lambda c: (c.kind != "estop", c.id))

    async def open_commands_of(self, robots: list[str]) -> list[CommandRow]:
        """Every unacknowledged command of these robots, by id (one query for many)."""
        async with self.db.session() as s:
            query = (
                select(CommandRow)
                .where(CommandRow.robot.in_(robots), CommandRow.acked_at.is_(None))
                .order_by(CommandRow.id)
            )
            return list((await s.scalars(query)).all())

    async def commands(self, robot: str, limit: int = 100) -> list[CommandRow]:
        async with self.db.session() as s:
            query = (
                select(CommandRow)
                .where(CommandRow.robot == robot)
                .order_by(CommandRow.id.desc())
                .limit(limit)
            )
            return list((await s.scalars(query)).all())

    # ------------------------------------------------------------------ maps
    async def put_map(self, name: str, doc: dict[str, Any]) -> bool:
        """Store a map; True when it is new. A known map keeps its traffic table."""
        async with self.db.fenced() as s:
            row = await s.get(FleetMapRow, name)
            if row is None:
                s.add(FleetMapRow(name=name, doc=doc, created_at=utcnow()))
                return True
            row.doc, row.updated_at = doc, utcnow()
            return False

    async def maps(self) -> list[tuple[FleetMapRow, dict[str, Any]]]:
        """Every map with its traffic table as `Traffic.restore` reads it ({"robots":
        {robot: {"at", "next"}}, "waits": {robot: {"marker", "resource", "holder"}}})."""
        async with self.db.session() as s:
            maps = list((await s.scalars(select(FleetMapRow).order_by(FleetMapRow.name))).all())
            tables: dict[str, dict[str, Any]] = {
                row.name: {"robots": {}, "waits": {}} for row in maps
            }
            for place in (await s.execute(select(_TRAFFIC).order_by(_TRAFFIC.c.robot))).all():
                table = tables.get(place.map)
                if table is None:  # a map that is gone: its rows say nothing
                    continue
                table["robots"][place.robot] = {"at": place.at, "next": place.next}
                if place.wait_marker is not None:
                    table["waits"][place.robot] = {
                        "marker": place.wait_marker,
                        "resource": place.wait_resource,
                        "holder": place.wait_holder,
                    }
            return [(row, tables[row.name]) for row in maps]

    async def add_mission(self, row: MissionRow) -> MissionRow:
        """Store a new mission (one statement, the term proved in it); `row` gets its id."""
        table: Any = MissionRow.__table__
        row.id = await _insert_proved(
            self.db, table, {c.key: getattr(row, c.key) for c in table.columns if c.key != "id"}
        )
        return row

    async def mission(self, id: int) -> MissionRow:
        async with self.db.session() as s:
            row = await s.get(MissionRow, id)
            if row is None:
                raise NotFound(f"mission {id} not found", {"mission": id})
            return row

    async def missions(self, state: str | None = None, limit: int | None = 500) -> list[MissionRow]:
        """The newest missions first; `limit=None` for all of them."""
        async with self.db.session() as s:
            query = select(MissionRow).order_by(MissionRow.id.desc())
            if limit is not None:
                query = query.limit(limit)
            if state is not None:
                query = query.where(MissionRow.state == state)
            return list((await s.scalars(query)).all())


_COMMANDS: Any = CommandRow.__table__
_TRAFFIC: Any = FleetTrafficRow.__table__


async def _insert_proved(db: Database, table: Any, values: dict[str, Any]) -> int:
    """One row in one statement (`INSERT ... SELECT ... WHERE` the term holds), its own
    transaction: its id, or StaleTerm when this replica's term is over."""
    if db.direct is not None:
        columns = tuple(values)
        id = await db.direct.fetchval(
            fleet_direct.insert_text(table, columns), *values.values(), db.term.confirm()
        )
    else:
        row = select(*(bindparam(k, v, type_=table.c[k].type) for k, v in values.items()))
        async with db.single() as s:
            id = await s.scalar(
                insert(table)
                .from_select(list(values), row.where(db.term.holds()))
                .returning(table.c.id)
            )
    if id is None:
        db.term.failed()
    return int(id)


async def _write_traffic(
    s: AsyncConnection, name: str, places: dict[str, Place], gone: set[str]
) -> None:
    """A map's traffic rows: those of `places` replaced, those of `gone` deleted."""
    if places or gone:
        await s.execute(
            delete(_TRAFFIC).where(
                _TRAFFIC.c.map == name, _TRAFFIC.c.robot.in_(sorted(places.keys() | gone))
            )
        )
    if places:
        await s.execute(
            insert(_TRAFFIC),
            [
                {
                    "map": name,
                    "robot": robot,
                    "at": at,
                    "next": step,
                    "wait_marker": wait and wait.marker,
                    "wait_resource": wait and wait.resource,
                    "wait_holder": wait and wait.holder,
                }
                for robot, (at, step, wait) in places.items()
            ],
        )


async def _insert_commands(
    s: AsyncConnection, commands: list[tuple[str, str, dict[str, Any]]]
) -> list[CommandRow]:
    """New commands (robot, kind, body), ids growing in the order given, as detached rows:
    one INSERT of many rows whose RETURNING keeps their order."""
    if not commands:
        return []
    created = utcnow()
    params = [{"robot": r, "kind": k, "body": b, "created_at": created} for r, k, b in commands]
    ids = await s.scalars(
        insert(_COMMANDS).returning(_COMMANDS.c.id, sort_by_parameter_order=True), params
    )
    return [CommandRow(id=id, **p) for id, p in zip(ids.all(), params, strict=True)]


async def _update_many(
    s: AsyncConnection, table: Any, key: str, rows: dict[Any, dict[str, Any]]
) -> None:
    """Rows' changed fields by primary key: one executemany per set of fields (a row that
    is gone changes nothing, as a single UPDATE would)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for name, values in rows.items():
        groups.setdefault(tuple(sorted(values)), []).append({"_key": name, **values})
    for params in groups.values():
        await s.execute(update(table).where(table.c[key] == bindparam("_key")), params)
