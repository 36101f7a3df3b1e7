"""Several `corral serve` on one PostgreSQL: who leads (a PostgreSQL advisory lock held on
a connection of its own), where each replica answers, and the feed that passes events
raised on one replica to the streams of the others (LISTEN/NOTIFY).

Core runs `run` and gives it what only the leader does; the API forwards changes to the
leader. On SQLite there is one process, which always leads.
"""

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import asyncpg
import structlog
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from corral.events import EventBus
from corral.store.database import Database
from corral.store.events import CHANNEL, EventStore
from corral.store.tables import ReplicaRow, utcnow
from corral.waits import pause

log = structlog.get_logger("corral.replicas")
LOCK_KEY = 0x636F7272616C  # "corral": one advisory lock per database
Lead = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
TakeOver = Callable[[], Coroutine[Any, Any, None]]


def asyncpg_dsn(database: Database) -> str:
    """The SQLAlchemy URL as a plain postgresql:// DSN for asyncpg."""
    url = make_url(database.url.render_as_string(hide_password=False))
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Replicas:
    def __init__(
        self,
        db: Database,
        events: EventStore,
        bus: EventBus,
        replica_id: str,
        url: str,
        poll_seconds: float,
    ) -> None:
        self.db = db
        self.events = events
        self.bus = bus
        self.id = replica_id
        self.url = url
        self.poll = poll_seconds
        self.leading = asyncio.Event()

    @property
    def shared(self) -> bool:
        return not self.db.is_sqlite

    async def leader_url(self) -> str | None:
        """Where the leader answers (None when no replica leads right now)."""
        fresh = utcnow() - timedelta(seconds=max(5.0, self.poll * 5))
        async with self.db.session() as s:
            row = await s.scalar(
                select(ReplicaRow).where(ReplicaRow.leader.is_(True), ReplicaRow.seen_at > fresh)
            )
            return row.url if row is not None else None

    async def replicas(self) -> list[ReplicaRow]:
        async with self.db.session() as s:
            return list((await s.scalars(select(ReplicaRow).order_by(ReplicaRow.id))).all())

    async def run(
        self, stopping: asyncio.Event, lead: Lead, take_over: TakeOver | None = None
    ) -> None:
        """Take the lead when free, run `lead` while holding it, and keep the feed open.
        `take_over` runs once the lead is won and before this replica serves as leader
        (it reads what the last leader left, so that nothing is served from stale memory)."""
        if not self.shared:
            self.leading.set()
            await lead(stopping)
            return
        await self._register()
        feed = asyncio.create_task(self._feed(stopping))
        beat = asyncio.create_task(self._heartbeat(stopping))
        try:
            while not stopping.is_set():
                try:
                    await self._campaign(stopping, lead, take_over)
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("leader election: database unreachable", error=str(exc))
                await pause(self.poll, stopping)
        finally:
            for task in (feed, beat):
                task.cancel()
            await asyncio.gather(feed, beat, return_exceptions=True)
            await self._unregister()

    async def _campaign(
        self, stopping: asyncio.Event, lead: Lead, take_over: TakeOver | None
    ) -> None:
        conn = await asyncpg.connect(asyncpg_dsn(self.db))
        try:
            while not stopping.is_set():
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                    break
                await pause(self.poll, stopping)
            if stopping.is_set():
                return
            await self._crown()
            if take_over is not None:
                await take_over()
            self.leading.set()
            lost = asyncio.Event()
            work = asyncio.create_task(lead(lost))
            log.info("this replica leads", replica=self.id, url=self.url)
            await self.bus.emit(
                "replica.leading", f"replica/{self.id}", f"replica {self.id} at {self.url} leads"
            )
            try:
                while not stopping.is_set() and not work.done():
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=self.poll * 3)
                    await pause(self.poll, stopping)
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                log.error("lost the lead: its database connection failed", error=str(exc))
            finally:
                self.leading.clear()
                lost.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(work), timeout=10)
                if not work.done():
                    work.cancel()
                with contextlib.suppress(Exception):
                    await work
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _register(self) -> None:
        now = utcnow()
        async with self.db.session() as s:
            row = await s.get(ReplicaRow, self.id)
            if row is None:
                s.add(
                    ReplicaRow(id=self.id, url=self.url, leader=False, started_at=now, seen_at=now)
                )

    async def _crown(self) -> None:
        async with self.db.session() as s:
            await s.execute(update(ReplicaRow).values(leader=False))
            await s.execute(
                update(ReplicaRow)
                .where(ReplicaRow.id == self.id)
                .values(leader=True, seen_at=utcnow())
            )

    async def _heartbeat(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(Exception):
                async with self.db.session() as s:
                    await s.execute(
                        update(ReplicaRow)
                        .where(ReplicaRow.id == self.id)
                        .values(seen_at=utcnow(), leader=self.leading.is_set())
                    )
            await pause(self.poll, stopping)

    async def _unregister(self) -> None:
        with contextlib.suppress(Exception):
            async with self.db.session() as s:
                row = await s.get(ReplicaRow, self.id)
                if row is not None:
                    await s.delete(row)

    async def _feed(self, stopping: asyncio.Event) -> None:
        """LISTEN for other replicas' events and pass them to this replica's streams."""
        while not stopping.is_set():
            queue: asyncio.Queue[str] = asyncio.Queue()
            heard = _listener(queue)

            try:
                conn = await asyncpg.connect(asyncpg_dsn(self.db))
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("event feed: database unreachable", error=str(exc))
                await asyncio.sleep(self.poll)
                continue
            try:
                await conn.add_listener(CHANNEL, heard)
                while not stopping.is_set() and not conn.is_closed():
                    try:
                        payload = await asyncio.wait_for(queue.get(), timeout=self.poll)
                    except TimeoutError:
                        continue
                    origin, _, ids = payload.partition(":")
                    if origin == self.id or not ids:
                        continue
                    wanted = [int(i) for i in ids.split(",") if i.isdigit()]
                    for event in await self.events.by_ids(wanted):
                        self.bus.relay(event)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()


def _listener(queue: "asyncio.Queue[str]") -> Callable[[Any, int, str, str], None]:
    def heard(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        queue.put_nowait(payload)

    return heard
