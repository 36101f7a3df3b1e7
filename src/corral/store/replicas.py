"""The replicas' database side: the rows saying which replica is alive and where, the
leader's advisory lock on a connection of its own, the term taken beside it, and the feed.

The election's rules (when to wait, confirm, take or give up the term) are in
`corral.control.replicas`; this module holds only the SQL and the asyncpg connections.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from sqlalchemy import select, text, update

from corral.store.database import Database
from corral.store.tables import LeadershipRow, ReplicaRow, utcnow
from corral.waits import pause

log = structlog.get_logger("corral.replicas")
LOCK_KEY = 0x636F7272616C  # "corral": one advisory lock per database


class Unreachable(Exception):
    """A new connection to the database was not made (refused, timed out, rejected)."""


@dataclass(frozen=True)
class Leadership:
    """Who holds the current term (empty when its holder handed it back)."""

    term: int
    holder: str


@dataclass(frozen=True)
class Replica:
    """A replica as its heartbeat left it."""

    id: str
    url: str
    started_at: datetime
    seen_at: datetime


async def _connect(database: Database, limit: float, name: str | None) -> asyncpg.Connection:
    settings = {"application_name": name} if name else None
    try:
        return await asyncio.wait_for(
            asyncpg.connect(database.dsn(), server_settings=settings), timeout=limit
        )
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise Unreachable(str(exc)) from exc


class LockConnection:
    """A connection of its own holding (or waiting for) the leader's advisory lock: the
    lock lives exactly as long as this session."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, database: Database, replica: str, limit: float) -> "LockConnection":
        return cls(await _connect(database, limit, f"corral-lock-{replica}"))

    def on_cut(self, cut: asyncio.Event) -> None:
        """Set `cut` when PostgreSQL closes this session (and so frees the lock)."""
        self._conn.add_termination_listener(lambda _conn: cut.set())

    async def wait_for_lock(self, lease: float, stopping: asyncio.Event) -> None:
        """Wait on the leader's lock until this session holds it (or `stopping` is set):
        PostgreSQL grants it the moment the holder's session frees it. The wait is cut
        every `lease` (`lock_timeout`) and asked again, so a stop or a dead connection is
        noticed."""
        await self._conn.execute(f"SET lock_timeout = {int(lease * 1000)}")
        while not stopping.is_set():
            try:
                await asyncio.wait_for(
                    self._conn.fetchval("SELECT pg_advisory_lock($1)", LOCK_KEY),
                    timeout=lease * 2,
                )
                return
            except asyncpg.LockNotAvailableError:
                continue  # another replica leads: wait again

    async def confirm(self, limit: float) -> None:
        """One round trip on the lock's session (TimeoutError when it takes `limit` s)."""
        await asyncio.wait_for(self._conn.fetchval("SELECT 1"), timeout=limit)

    async def end_blockers(self, waiter: int) -> int:
        """End the sessions that block backend `waiter`; how many were ended."""
        ended = await self._conn.fetchval(
            "SELECT count(pg_terminate_backend(p)) FROM unnest(pg_blocking_pids($1)) AS p",
            waiter,
        )
        return int(ended or 0)

    async def close(self) -> None:
        await self._conn.close()


class Feed:
    """A connection that LISTENs on a channel and hands each payload to a queue."""

    def __init__(self, conn: asyncpg.Connection, queue: "asyncio.Queue[str]") -> None:
        self._conn = conn
        self.queue = queue

    @classmethod
    async def open(cls, database: Database, limit: float) -> "Feed":
        return cls(await _connect(database, limit, None), asyncio.Queue())

    async def listen(self, channel: str) -> None:
        await self._conn.add_listener(channel, _listener(self.queue))

    def is_closed(self) -> bool:
        return bool(self._conn.is_closed())

    async def close(self) -> None:
        await self._conn.close()


def _listener(queue: "asyncio.Queue[str]") -> Callable[[Any, int, str, str], None]:
    def heard(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        queue.put_nowait(payload)

    return heard


class ReplicaStore:
    """The `replicas` rows (heartbeats) and the `leadership` row."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def leader_url(self, fresh: datetime) -> str | None:
        """Where the leader answers, if its heartbeat is later than `fresh`."""
        async with self.db.session() as s:
            row = await s.scalar(
                select(ReplicaRow)
                .join(LeadershipRow, LeadershipRow.holder == ReplicaRow.id)
                .where(ReplicaRow.seen_at > fresh)
            )
            return row.url if row is not None else None

    async def all(self) -> tuple[list[Replica], Leadership]:
        """Every replica, and the current term with its holder."""
        async with self.db.session() as s:
            rows = (await s.scalars(select(ReplicaRow).order_by(ReplicaRow.id))).all()
            lead = await s.get(LeadershipRow, 1)
            replicas = [Replica(r.id, r.url, r.started_at, r.seen_at) for r in rows]
        return replicas, Leadership(lead.term, lead.holder) if lead else Leadership(0, "")

    async def leadership(self) -> Leadership:
        async with self.db.session() as s:
            row = await s.get(LeadershipRow, 1)
            return Leadership(row.term, row.holder) if row else Leadership(0, "")

    async def take_term(self, replica: str) -> int:
        """The next term, in a transaction of its own (one process: nothing to wait for)."""
        async with self.db.session() as s:
            return await self.db.term.take(s, replica)

    async def take_term_fenced(self, replica: str, lock: LockConnection, patience: float) -> int:
        """The next term, for `replica`, which holds the lock on `lock`. Taking it waits
        for the transactions that proved the last term (they hold its row FOR SHARE). One
        still open after `patience` belongs to a leader that is frozen (SIGSTOP, a paused
        VM) or cut off: its session is ended, so its write never happens and the term is
        taken."""
        async with self.db.session() as s:
            pid = await s.scalar(text("SELECT pg_backend_pid()"))
            taken = asyncio.Event()
            ender = asyncio.create_task(_end_blockers(lock, int(pid or 0), taken, patience))
            try:
                return await self.db.term.take(s, replica)
            finally:
                taken.set()  # the ender's query ends on its own: `lock` stays usable
                await asyncio.gather(ender, return_exceptions=True)

    async def hand_back(self, term: int, holder: str) -> None:
        """Say `term` is over, if `holder` still holds it."""
        async with self.db.session() as s:
            await s.execute(
                update(LeadershipRow)
                .where(LeadershipRow.term == term, LeadershipRow.holder == holder)
                .values(holder="")
            )

    async def beat(self, replica: str, url: str) -> None:
        """`replica` is alive and answers at `url`."""
        async with self.db.session() as s:
            now = utcnow()
            row = await s.get(ReplicaRow, replica)
            if row is None:
                s.add(ReplicaRow(id=replica, url=url, started_at=now, seen_at=now))
            else:
                row.seen_at = now

    async def unregister(self, replica: str) -> None:
        async with self.db.session() as s:
            row = await s.get(ReplicaRow, replica)
            if row is not None:
                await s.delete(row)


async def _end_blockers(
    lock: LockConnection, waiter: int, taken: asyncio.Event, patience: float
) -> None:
    while True:
        await pause(patience, taken)
        if taken.is_set():
            return
        ended = await lock.end_blockers(waiter)
        if ended:
            log.warning("ended the last term's open writes", sessions=ended)
