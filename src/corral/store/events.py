"""Stored events: append, filter by kind, resource and time, and prune old ones.

Written only through corral.events.EventBus so that every row is also streamed and counted.
"""

from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Select, Table, delete, insert, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from corral.model.events import EventFilter
from corral.model.views import EventView
from corral.store.database import Database
from corral.store.direct import json_text
from corral.store.tables import EventRow, utcnow

Query = TypeVar("Query", bound=Select[Any])


def _apply(where: EventFilter, query: Query) -> Query:
    for column, pattern in ((EventRow.kind, where.kind), (EventRow.resource, where.resource)):
        if pattern is None:
            continue
        if pattern.endswith("*"):
            query = query.where(column.startswith(pattern[:-1], autoescape=True))
        else:
            query = query.where(column == pattern)
    if where.since is not None:
        query = query.where(EventRow.time >= where.since)
    if where.until is not None:
        query = query.where(EventRow.time <= where.until)
    if where.after_id is not None:
        query = query.where(EventRow.id > where.after_id)
    return query


CHANNEL = "corral_events"
NOTICE_BYTES = 7900  # a NOTIFY payload stays under PostgreSQL's 8,000 bytes


def notices(replica: str, ids: list[int], kinds: list[str]) -> list[str]:
    """The NOTIFY payloads announcing stored events: `<replica>:<ids>:<kinds>`, ids and
    distinct kinds comma-separated, split so that each payload fits. The kinds let a replica
    that watches none of them skip reading the events. (`_APPEND` writes the same payload
    in SQL for a batch that fits in one; `heard` reads both.)"""
    out: list[str] = []
    start = 0
    while start < len(ids):
        end, size = start, len(replica) + 2
        seen: dict[str, None] = {}
        while end < len(ids):
            grows = len(str(ids[end])) + 1
            if kinds[end] not in seen:
                grows += len(kinds[end]) + 1
            if end > start and size + grows > NOTICE_BYTES:
                break
            size += grows
            seen.setdefault(kinds[end])
            end += 1
        out.append(f"{replica}:{','.join(map(str, ids[start:end]))}:{','.join(seen)}")
        start = end
    return out


def heard(payload: str) -> tuple[str, list[int], tuple[str, ...] | None]:
    """A `corral_events` payload read back: the replica that stored the events, their ids,
    and their kinds (None when the payload does not say)."""
    origin, _, rest = payload.partition(":")
    ids, marked, kinds = rest.partition(":")
    wanted = [int(i) for i in ids.split(",") if i.isdigit()]
    return origin, wanted, tuple(kinds.split(",")) if marked and kinds else None


def concern(kinds: tuple[str, ...] | None, prefixes: tuple[str, ...] | None) -> bool:
    """Whether events of these kinds can match a replica's wanted prefixes (None: every
    kind is wanted, or the kinds are not known)."""
    if kinds is None or prefixes is None:
        return True
    return any(kind.startswith(prefixes) for kind in kinds)


EVENTS = cast(Table, EventRow.__table__)
# Events staged within a transaction: one INSERT of all the rows, their ids returned in
# their order (SQLAlchemy Core, built once).
_INSERT = insert(EVENTS).returning(EVENTS.c.id, sort_by_parameter_order=True)


# On PostgreSQL, events appended by themselves (not within another store's transaction) go
# as one statement over `Database.direct`: stored, their ids returned in order, and announced
# (`notices`' format, one payload) when the transaction ends; a batch whose payload might not
# fit takes the session's way, which splits it.
_APPEND = """WITH new AS (
INSERT INTO events ("time", kind, resource, message, data)
SELECT $3, v.kind, v.resource, v.message, v.data::json
FROM unnest($4::varchar[], $5::varchar[], $6::text[], $7::text[]) WITH ORDINALITY
AS v(kind, resource, message, data, n) ORDER BY v.n RETURNING id, kind),
said AS (SELECT pg_notify($1, $2 || ':' || string_agg(id::text, ',' ORDER BY id) || ':'
|| string_agg(DISTINCT kind, ',')) FROM new)
SELECT id FROM new, said ORDER BY id"""
ID_BYTES = 20  # the most an id and its comma take in a payload


class EventStore:
    """Events in the database. On PostgreSQL each commit also NOTIFYs `corral_events` with
    `<replica>:<ids>:<kinds>` (`notices`), so the other replicas can pass new events to their
    streams."""

    def __init__(self, db: Database, replica: str = "") -> None:
        self.db = db
        self.replica = replica

    def _notify_sync(self, s: Session, ids: list[int], kinds: list[str]) -> None:
        if not self.db.is_sqlite and ids:
            for payload in notices(self.replica, ids, kinds):
                s.execute(
                    text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": CHANNEL, "payload": payload},
                )

    async def by_ids(self, ids: list[int], kinds: tuple[str, ...] | None = None) -> list[EventView]:
        """These events, by id; with `kinds`, only those whose kind starts with one of them."""
        if kinds is not None and not kinds:
            return []
        async with self.db.session() as s:
            query = select(EventRow).where(EventRow.id.in_(ids)).order_by(EventRow.id)
            if kinds is not None:
                query = query.where(
                    or_(*(EventRow.kind.startswith(k, autoescape=True) for k in kinds))
                )
            return [EventView.model_validate(r) for r in (await s.scalars(query)).all()]

    async def append(
        self, kind: str, resource: str, message: str, data: dict[str, Any]
    ) -> EventView:
        [event] = await self.append_many([(kind, resource, message, data)])
        return event

    async def append_many(
        self, events: list[tuple[str, str, str, dict[str, Any]]]
    ) -> list[EventView]:
        """Several events (kind, resource, message, data) in one transaction, in order."""
        if not events:
            return []
        kinds = {kind for kind, _, _, _ in events}
        size = len(self.replica) + 2 + ID_BYTES * len(events) + sum(len(k) + 1 for k in kinds)
        if self.db.direct is None or size > NOTICE_BYTES:
            async with self.db.session() as s:
                return await self.stage(s, events)
        now = utcnow()
        rows = await self.db.direct.fetch(
            _APPEND,
            CHANNEL,
            self.replica,
            now,
            [kind for kind, _, _, _ in events],
            [resource for _, resource, _, _ in events],
            [message for _, _, message, _ in events],
            [json_text(data) for _, _, _, data in events],
        )
        return [
            EventView(id=row["id"], time=now, kind=k, resource=r, message=m, data=d)
            for row, (k, r, m, d) in zip(rows, events, strict=True)
        ]

    async def stage(
        self, s: AsyncSession, events: list[tuple[str, str, str, dict[str, Any]]]
    ) -> list[EventView]:
        """Events written within the caller's transaction (stored when it commits), in
        order; publish them through the bus after the commit."""
        return await s.run_sync(self.stage_sync, events)

    def stage_sync(
        self, s: Session, events: list[tuple[str, str, str, dict[str, Any]]]
    ) -> list[EventView]:
        """`stage` within a synchronous transaction (Database.run)."""
        if not events:
            return []
        now = utcnow()
        rows = [
            {"time": now, "kind": k, "resource": r, "message": m, "data": d}
            for k, r, m, d in events
        ]
        ids = [i for (i,) in s.connection().execute(_INSERT, rows)]
        self._notify_sync(s, ids, [kind for kind, _, _, _ in events])
        return [EventView(id=i, **row) for i, row in zip(ids, rows, strict=True)]

    async def query(
        self, where: EventFilter, limit: int = 100, newest_first: bool = False
    ) -> list[EventView]:
        order = EventRow.id.desc() if newest_first else EventRow.id.asc()
        async with self.db.session() as s:
            rows = (
                await s.scalars(_apply(where, select(EventRow)).order_by(order).limit(limit))
            ).all()
            return [EventView.model_validate(r) for r in rows]

    async def prune(self, before: datetime) -> int:
        async with self.db.session() as s:
            result = await s.execute(delete(EventRow).where(EventRow.time < before))
            return int(getattr(result, "rowcount", 0))
