"""Stored events: append, filter by kind, resource and time, and prune old ones.

Written only through corral.events.EventBus so that every row is also streamed and counted.
"""

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from corral.model.views import EventView
from corral.store.database import Database
from corral.store.tables import EventRow, utcnow

Query = TypeVar("Query", bound=Select[Any])


def _view(row: EventRow) -> EventView:
    return EventView(
        id=row.id,
        time=row.time,
        kind=row.kind,
        resource=row.resource,
        message=row.message,
        data=row.data,
    )


class EventFilter:
    """Which events a reader wants; `kind` and `resource` ending in `*` match a prefix."""

    def __init__(
        self,
        kind: str | None = None,
        resource: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_id: int | None = None,
    ) -> None:
        self.kind, self.resource = kind, resource
        self.since, self.until, self.after_id = since, until, after_id

    def matches(self, event: EventView) -> bool:
        return (
            _text_matches(self.kind, event.kind)
            and _text_matches(self.resource, event.resource)
            and (self.since is None or event.time >= self.since)
            and (self.until is None or event.time <= self.until)
            and (self.after_id is None or event.id > self.after_id)
        )

    def apply(self, query: Query) -> Query:
        for column, pattern in ((EventRow.kind, self.kind), (EventRow.resource, self.resource)):
            if pattern is None:
                continue
            if pattern.endswith("*"):
                query = query.where(column.startswith(pattern[:-1], autoescape=True))
            else:
                query = query.where(column == pattern)
        if self.since is not None:
            query = query.where(EventRow.time >= self.since)
        if self.until is not None:
            query = query.where(EventRow.time <= self.until)
        if self.after_id is not None:
            query = query.where(EventRow.id > self.after_id)
        return query


def _text_matches(pattern: str | None, value: str) -> bool:
    if pattern is None:
        return True
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


CHANNEL = "corral_events"


class EventStore:
    """Events in the database. On PostgreSQL each commit also NOTIFYs `corral_events` with
    `<replica>:<ids>`, so the other replicas can pass new events to their streams."""

    def __init__(self, db: Database, replica: str = "") -> None:
        self.db = db
        self.replica = replica

    async def _notify(self, s: AsyncSession, ids: list[int]) -> None:
        if not self.db.is_sqlite and ids:
            payload = f"{self.replica}:{','.join(str(i) for i in ids)}"
            await s.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": CHANNEL, "payload": payload},
            )

    async def by_ids(self, ids: list[int]) -> list[EventView]:
        async with self.db.session() as s:
            query = select(EventRow).where(EventRow.id.in_(ids)).order_by(EventRow.id)
            return [_view(r) for r in (await s.scalars(query)).all()]

    async def append(
        self, kind: str, resource: str, message: str, data: dict[str, Any]
    ) -> EventView:
        async with self.db.session() as s:
            row = EventRow(time=utcnow(), kind=kind, resource=resource, message=message, data=data)
            s.add(row)
            await s.flush()
            await self._notify(s, [row.id])
            return _view(row)

    async def append_many(
        self, events: list[tuple[str, str, str, dict[str, Any]]]
    ) -> list[EventView]:
        """Several events (kind, resource, message, data) in one transaction, in order."""
        async with self.db.session() as s:
            return await self.stage(s, events)

    async def stage(
        self, s: AsyncSession, events: list[tuple[str, str, str, dict[str, Any]]]
    ) -> list[EventView]:
        """Events written within the caller's transaction (stored when it commits), in
        order; publish them through the bus after the commit."""
        now = utcnow()
        rows = [EventRow(time=now, kind=k, resource=r, message=m, data=d) for k, r, m, d in events]
        s.add_all(rows)
        await s.flush()  # one INSERT of all the rows, in order: their ids follow it
        await self._notify(s, [r.id for r in rows])
        return [_view(r) for r in rows]

    async def query(
        self, where: EventFilter, limit: int = 100, newest_first: bool = False
    ) -> list[EventView]:
        order = EventRow.id.desc() if newest_first else EventRow.id.asc()
        async with self.db.session() as s:
            rows = (
                await s.scalars(where.apply(select(EventRow)).order_by(order).limit(limit))
            ).all()
            return [_view(r) for r in rows]

    async def prune(self, before: datetime) -> int:
        async with self.db.session() as s:
            result = await s.execute(delete(EventRow).where(EventRow.time < before))
            return int(getattr(result, "rowcount", 0))
