"""The hottest statements on PostgreSQL (the leader's fleet writes, every replica's events)
sent straight over asyncpg connections of their own: one round trip and two turns of the
event loop each, not a pooled checkout's.

SQLAlchemy's pool pings a connection before each checkout, and its asyncpg adapter and
pool add turns of the event loop around each statement: an operator's command stored as
one statement took 11 turns of the loop (measured, a quiet loop), 2 here. On a leader
whose loop is busy with a thousand robots each turn waits behind the others' work, so the
turns, not PostgreSQL, made a command's round trip. Statements that are transactions by
themselves (autocommit; the leader's with its term proved inside them) and the fleet's short
batch transactions go this way; a connection left by PostgreSQL (a restart) is noticed by
asyncpg as it happens and replaced at its next use, without a ping.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

from corral.errors import CorralError

CONNECTIONS = 4  # at most this many statements at once (more wait for a connection)
CONNECT_SECONDS = 10.0


class DatabaseAway(CorralError):
    """The database could not be reached, or its connection broke during the statement
    (which may or may not have been stored): retry."""

    status = 503
    code = "unavailable"


def json_text(value: Any) -> str:
    """A JSON column's value as text (keys that are not strings written as strings, as the
    standard library does)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


class Direct:
    """Up to `CONNECTIONS` asyncpg connections to one database, opened when first needed;
    each statement is prepared once per connection (asyncpg's statement cache)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._idle: list[asyncpg.Connection] = []
        self._room = asyncio.Semaphore(CONNECTIONS)
        self._closed = False

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of one statement (its own transaction). DatabaseAway when the database
        cannot be reached or the connection broke; any other error of the statement as
        asyncpg raised it."""
        async with self._using() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
            return rows

    async def fetchval(self, sql: str, *args: Any) -> Any:
        rows = await self.fetch(sql, *args)
        return rows[0][0] if rows else None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection in a transaction: committed when the block ends, rolled back when
        it raises (errors as `fetch`'s)."""
        async with self._using() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def _using(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._room:
            conn = await self._take()
            try:
                yield conn
            except asyncio.CancelledError:
                conn.terminate()  # its statement may still be running: never reused
                raise
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
                await _drop(conn)
                raise DatabaseAway(
                    f"the database connection was lost; retry ({type(exc).__name__})"
                ) from exc
            except BaseException:
                if conn.is_closed():
                    raise DatabaseAway("the database connection was lost; retry") from None
                self._give(conn)
                raise
            self._give(conn)

    async def _take(self) -> asyncpg.Connection:
        if self._closed:
            raise DatabaseAway("the database handle is closed")
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn
        try:
            conn = await asyncio.wait_for(asyncpg.connect(self._dsn), CONNECT_SECONDS)
            await conn.set_type_codec(
                "json", encoder=json_text, decoder=orjson.loads, schema="pg_catalog"
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseAway(
                f"the database cannot be reached; retry ({type(exc).__name__})"
            ) from exc
        return conn

    def _give(self, conn: asyncpg.Connection) -> None:
        if self._closed or conn.is_closed():
            conn.terminate()
        else:
            self._idle.append(conn)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await _drop(conn)


async def _drop(conn: asyncpg.Connection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), 2)
    if not conn.is_closed():
        conn.terminate()
