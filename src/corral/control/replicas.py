"""Several `corral serve` on one PostgreSQL: who leads (a PostgreSQL advisory lock held on
a connection of its own, and a leadership term taken with it), where each replica answers,
and the feed that passes events raised on one replica to the streams of the others.

Core runs `begin` in its start and then `run`, giving it what only the leader does; the API
forwards changes to the leader. On SQLite there is one process, which leads from its start
(one term per start, taken by `begin` before the API serves).
"""

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from corral.events import EventBus
from corral.store.database import Database
from corral.store.events import CHANNEL, EventStore, concern, heard
from corral.store.leadership import LeaderTerm
from corral.store.replicas import (
    Feed,
    Leadership,
    LockConnection,
    Replica,
    ReplicaStore,
    Unreachable,
)
from corral.store.tables import utcnow
from corral.waits import pause

log = structlog.get_logger("corral.replicas")
LAST_WRITES_WAIT = 1.0  # seconds a new term waits for a handed-back term's writes to end
Lead = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
TakeOver = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Timing:
    """The election's periods, all from `replica_poll_seconds` (P): a follower waits on
    the lock (it gets it the moment it is freed), asking again every `lease`; the leader
    confirms its lock every P/4 and acts at most `lease` (2P) after the last confirmation
    began; a replica that wins the lock from a leader that did not hand the term back
    waits up to `takeover` (2.5P) before taking the term, by when the old leader, unless
    it is paused, has stopped itself, and takes it as soon as the old leader hands it back
    meanwhile (it looks every P/4)."""

    poll: float

    @property
    def attempt(self) -> float:
        return self.poll / 2

    @property
    def check(self) -> float:
        return self.poll / 4

    @property
    def lease(self) -> float:
        return self.poll * 2

    @property
    def takeover(self) -> float:
        return self.lease + self.poll / 2


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
        self.store = ReplicaStore(db)
        self.events = events
        self.bus = bus
        self.id = replica_id
        self.url = url
        self.timing = Timing(poll_seconds)
        self.leading = asyncio.Event()
        self._deposed = asyncio.Event()
        if self.shared:
            self.term.fenced = True  # no leader-only write before this replica leads
            self.term.on_stale = self._stale

    @property
    def shared(self) -> bool:
        return not self.db.is_sqlite

    @property
    def term(self) -> LeaderTerm:
        return self.db.term

    def act_alone(self) -> None:
        """No election runs (a process without background loops): act, unfenced."""
        self.term.fenced = False
        self.leading.set()

    async def leader_url(self) -> str | None:
        """Where the leader answers (None when no replica leads right now)."""
        fresh = utcnow() - timedelta(seconds=max(5.0, self.timing.poll * 5))
        return await self.store.leader_url(fresh)

    async def replicas(self) -> tuple[list[Replica], Leadership]:
        """Every replica, and the current term with its holder."""
        return await self.store.all()

    async def begin(self) -> None:
        """On SQLite, take this start's term and lead from now on: before the API serves,
        so a robot that connects at once finds its corral leading. On PostgreSQL nothing:
        the election in `run` takes the term."""
        if self.shared:
            return
        term = await self.store.take_term(self.id)
        self.term.hold(term)
        self.leading.set()
        await self._announce(term, utcnow())

    async def run(
        self, stopping: asyncio.Event, lead: Lead, take_over: TakeOver | None = None
    ) -> None:
        """Take the lead when free, run `lead` while holding it, and keep the feed open.
        `take_over` runs once the lead is won and before this replica serves as leader
        (it reads what the last leader left, so that nothing is served from stale memory).
        No database error ends this: a replica campaigns as long as it runs. On SQLite
        `begin` took the lead: `lead` runs at once."""
        if not self.shared:
            await lead(stopping)
            return
        feed = asyncio.create_task(self._feed(stopping))
        beat = asyncio.create_task(self._heartbeat(stopping))
        try:
            while not stopping.is_set():
                try:
                    await self._campaign(stopping, lead, take_over)
                except Exception as exc:  # every failure: campaign again
                    log.warning("leader election: database error", error=repr(exc))
                await pause(self.timing.attempt, stopping)
        finally:
            for task in (feed, beat):
                task.cancel()
            await asyncio.gather(feed, beat, return_exceptions=True)
            await self._unregister()

    async def _campaign(
        self, stopping: asyncio.Event, lead: Lead, take_over: TakeOver | None
    ) -> None:
        conn = await LockConnection.open(self.db, self.id, limit=self.timing.lease * 2)
        try:
            await conn.wait_for_lock(self.timing.lease, stopping)
            if stopping.is_set():
                return
            cut = asyncio.Event()
            conn.on_cut(cut)
            handed_back = await self._handed_back(stopping, cut)
            if stopping.is_set() or cut.is_set():
                return
            await conn.confirm(limit=self.timing.lease)
            # A term handed back had its writes end before; one waited out belongs to a
            # leader that is frozen or cut off, whose open writes are ended sooner.
            patience = LAST_WRITES_WAIT if handed_back else self.timing.check
            term = await self.store.take_term_fenced(self.id, conn, patience)
            # The lease runs from a confirmation after the take (which may have waited).
            began = time.monotonic()
            await conn.confirm(limit=self.timing.lease)
            self.term.hold(term, began + self.timing.lease)
            self._deposed.clear()
            await self._lead(conn, cut, term, utcnow(), stopping, lead, take_over)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _lead(
        self,
        conn: LockConnection,
        cut: asyncio.Event,
        term: int,
        taken: datetime,
        stopping: asyncio.Event,
        lead: Lead,
        take_over: TakeOver | None,
    ) -> None:
        """Lead for `term` until the lock is not confirmed in time, the term is found
        over, the leader's loops end or the replica stops."""
        watch = asyncio.create_task(self._confirm(conn, cut))
        lost = asyncio.Event()
        work: asyncio.Task[None] | None = None
        why = "this replica is stopping"
        try:
            if take_over is not None:
                await take_over()
            if not watch.done():
                self.leading.set()
                work = asyncio.create_task(lead(lost))
                log.info("this replica leads", replica=self.id, url=self.url, term=term)
                await self._announce(term, taken)
                stop = asyncio.ensure_future(stopping.wait())
                await asyncio.wait({watch, work, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
            if watch.done():
                why = watch.result()
            elif work is not None and work.done():
                why = "its leader loops ended"
        finally:
            self.term.drop()  # first: no write or send from here on
            stopped = utcnow()
            self.leading.clear()
            lost.set()
            watch.cancel()
            log.warning("this replica stopped leading", replica=self.id, term=term, why=why)
            if work is not None:
                await asyncio.wait({work}, timeout=10)  # the loops wind down, or are cut
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
            await self._hand_back(term, why, stopped)

    async def _confirm(self, conn: LockConnection, cut: asyncio.Event) -> str:
        """Confirm the lock every check period, each success extending the lease; the
        reason, once it cannot be confirmed before the lease ends or the term is over."""
        while True:
            if cut.is_set():
                return "its lock connection was closed"
            if self._deposed.is_set():
                return "another replica took a later term"
            began = time.monotonic()
            left = self.term.until - began
            if left <= 0:
                return "its lease lapsed"
            try:
                await conn.confirm(limit=left)
            except TimeoutError:
                return f"its lock was not confirmed within its lease ({self.timing.lease:g} s)"
            except Exception as exc:  # the lock is in doubt
                return f"its lock connection failed: {exc!r}"
            self.term.extend(began + self.timing.lease)
            await pause(self.timing.check, cut, self._deposed)

    async def _handed_back(self, stopping: asyncio.Event, cut: asyncio.Event) -> bool:
        """Just won the lock: whether the last term was handed back. When its holder did
        not hand it back, it stops itself within its lease of losing the lock: wait that
        out (`takeover`), or until it hands the term back meanwhile."""
        deadline = time.monotonic() + self.timing.takeover
        while True:
            last = await self.store.leadership()
            if last.holder in ("", self.id):
                return True
            left = deadline - time.monotonic()
            if left <= 0 or stopping.is_set() or cut.is_set():
                return False
            await pause(min(left, self.timing.check), stopping, cut)

    def _stale(self, why: str) -> None:
        log.warning("a leader-only write found this replica's term over", why=why)
        self._deposed.set()

    async def _announce(self, term: int, taken: datetime) -> None:
        with contextlib.suppress(Exception):
            await self.bus.emit(
                "replica.leading",
                f"replica/{self.id}",
                f"replica {self.id} at {self.url} leads (term {term})",
                {"term": term, "url": self.url, "taken_at": taken.isoformat()},
            )

    async def _hand_back(self, term: int, why: str, stopped: datetime) -> None:
        """Say the term is over (a successor then need not wait out a lease)."""
        with contextlib.suppress(Exception):
            await self.store.hand_back(term, self.id)
        with contextlib.suppress(Exception):
            await self.bus.emit(
                "replica.stepped_down",
                f"replica/{self.id}",
                f"replica {self.id} stopped leading (term {term}): {why}",
                {"term": term, "why": why, "stopped_at": stopped.isoformat()},
            )

    async def _heartbeat(self, stopping: asyncio.Event) -> None:
        """Say this replica is alive (and where); never whether it leads."""
        while not stopping.is_set():
            try:
                await self.store.beat(self.id, self.url)
            except Exception as exc:  # try again next period
                log.info("replica heartbeat failed", error=repr(exc))
            await pause(self.timing.poll, stopping)

    async def _unregister(self) -> None:
        with contextlib.suppress(Exception):
            await self.store.unregister(self.id)

    async def _feed(self, stopping: asyncio.Event) -> None:
        """LISTEN for other replicas' events and pass them to this replica's streams."""
        while not stopping.is_set():
            try:
                conn = await Feed.open(self.db, self.timing.poll * 5)
            except Unreachable as exc:
                log.warning("event feed: database unreachable", error=str(exc))
                await asyncio.sleep(self.timing.poll)
                continue
            try:
                await conn.listen(CHANNEL)
                while not stopping.is_set() and not conn.is_closed():
                    try:
                        payload = await asyncio.wait_for(conn.queue.get(), timeout=self.timing.poll)
                    except TimeoutError:
                        continue
                    origin, ids, kinds = heard(payload)
                    # with no live subscriber here, only what this replica's caches watch
                    # (a follower beside a busy fleet read every event: 20% of its time, and
                    # reading none of the fleet's events by id was still 20% of it)
                    prefixes = self.bus.wanted()
                    if origin == self.id or not ids or not concern(kinds, prefixes):
                        continue
                    for event in await self.events.by_ids(ids, prefixes):
                        self.bus.relay(event)
            except Exception as exc:  # open the feed again
                log.warning("event feed: connection lost", error=repr(exc))
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
