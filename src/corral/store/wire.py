"""Notifications between replicas over PostgreSQL (LISTEN/NOTIFY): a listening connection
that hands each payload of its channels to a callback, and a sending one that batches.

The fleet carries robot traffic between replicas with it (fleet/peers.py); payloads are
text under 8,000 bytes (PostgreSQL's limit), and nothing is stored: a listener that was
not connected misses what was sent meanwhile, so its user asks again on reconnection.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog

from corral.store.database import Database

log = structlog.get_logger("corral.store.wire")
MAX_PAYLOAD = 7900  # bytes; PostgreSQL refuses 8,000 and more
Heard = Callable[[str, str], None]  # (channel, payload), called on the event loop


class Wire:
    def __init__(self, db: Database, channels: list[str], heard: Heard) -> None:
        self.dsn = db.dsn()
        self.channels = channels
        self.heard = heard
        self.outbox: list[tuple[str, str]] = []
        self.wake = asyncio.Event()
        self.sent = 0  # notifications sent so far

    def send(self, channel: str, payload: str) -> None:
        """Queue one notification; the sender sends what is queued in one statement."""
        self.outbox.append((channel, payload))
        self.wake.set()

    async def run(self, stopping: asyncio.Event, connected: Callable[[], Awaitable[None]]) -> None:
        """Listen and send until `stopping`; each database error is logged and the
        connection opened again. `connected` runs each time the listener is (re)connected."""
        sender = asyncio.create_task(self._sending(stopping))
        try:
            while not stopping.is_set():
                try:
                    await self._listen(stopping, connected)
                except Exception as exc:  # reconnect
                    log.warning("replica wire: listener lost", error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), 0.5)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _listen(
        self, stopping: asyncio.Event, connected: Callable[[], Awaitable[None]]
    ) -> None:
        conn = await asyncio.wait_for(asyncpg.connect(self.dsn), 10)
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        try:

            def heard(_conn: Any, _pid: int, channel: str, payload: str) -> None:
                self.heard(channel, payload)

            for channel in self.channels:
                await conn.add_listener(channel, heard)
            await connected()
            stop = asyncio.ensure_future(stopping.wait())
            gone = asyncio.ensure_future(lost.wait())
            try:
                while not (stopping.is_set() or lost.is_set()):
                    # asyncpg notices a dead socket only when it uses it
                    await asyncio.wait({stop, gone}, timeout=2.0)
                    if not (stopping.is_set() or lost.is_set()):
                        await asyncio.wait_for(conn.fetchval("SELECT 1"), 5)
            finally:
                stop.cancel()
                gone.cancel()
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _sending(self, stopping: asyncio.Event) -> None:
        conn: asyncpg.Connection | None = None
        try:
            while not stopping.is_set():
                await self.wake.wait()
                self.wake.clear()
                batch, self.outbox = self.outbox, []
                if not batch:
                    continue
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncio.wait_for(asyncpg.connect(self.dsn), 10)
                    assert conn is not None
                    await conn.execute(
                        "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)",
                        [c for c, _ in batch],
                        [p for _, p in batch],
                    )
                    self.sent += len(batch)
                except Exception as exc:  # lost: what was sent is asked for again
                    log.warning("replica wire: send failed", error=repr(exc), lost=len(batch))
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.close()
                    conn = None
                    await asyncio.sleep(0.2)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
