"""The database handle: engine creation, migrations at start, and sessions (plain ones, and
fenced ones that prove this replica's leadership term), and `run` for a hot path's writes.

One Database per process; repositories borrow sessions from it.
"""

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from corral.errors import Invalid
from corral.store.direct import Direct, json_text
from corral.store.leadership import LeaderTerm, StaleTerm
from corral.store.tables import LeadershipRow

T = TypeVar("T")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class _SQLiteConnection(sqlite3.Connection):
    """A SQLite connection that ends its open transaction before it closes.

    A statement cut short (a task cancelled between an INSERT ... RETURNING and its fetch)
    keeps a closed connection alive as a zombie, and with it the file's write lock, until
    the statement's cursor is collected: every other writer then waits out the busy timeout
    and fails with "database is locked". A rollback first releases the lock at once."""

    def close(self) -> None:
        if self.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # closing anyway: the close releases
                self.rollback()
        super().close()


def _begin_immediate(conn: Connection) -> None:
    # The writer thread's transactions take SQLite's write lock at once (waiting up to the
    # busy timeout), so one that reads first never fails when another commits meanwhile.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class _Stale(Exception):
    """The term read in the writer thread is not this replica's (raised to roll back)."""


class _Dropped(Exception):
    """The caller was cancelled meanwhile (raised to roll back)."""


class Database:
    """An async engine plus a session factory, for SQLite or PostgreSQL."""

    @staticmethod
    def connection_lost(exc: BaseException) -> bool:
        """The database cannot be reached or is going down or starting up (not a bad query):
        the API answers 503 and the next request reconnects."""
        if not isinstance(exc, DBAPIError):
            return False
        if exc.connection_invalidated:
            return True
        cause: BaseException | None = exc.orig
        while cause is not None:
            code = getattr(cause, "sqlstate", None)
            if isinstance(cause, OSError) or (isinstance(code, str) and code[:2] in ("08", "57")):
                return True
            cause = cause.__cause__
        return False

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise Invalid(f"database URL {url!r} is not a SQLAlchemy URL") from exc
        self.url = parsed
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        # JSON columns (a map's traffic table is written with every batch of decisions)
        # through orjson: about a tenth of the standard library's time
        options: dict[str, Any] = {"json_serializer": json_text, "json_deserializer": orjson.loads}
        self.file: Path | None = None  # the SQLite database file, if there is one
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                self.file = Path(parsed.database)
                self.file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            options["connect_args"] = {"timeout": 30, "factory": _SQLiteConnection}
        else:
            options["pool_pre_ping"] = True
        self.engine: AsyncEngine = create_async_engine(parsed, **options)
        # The leader's hottest single statements, straight over asyncpg (store/direct.py)
        self.direct = None if self.is_sqlite else Direct(self.dsn())
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.term = LeaderTerm()
        # A SQLite file's hot-path writes (`run`) go through one thread of their own with a
        # plain sqlite3 connection: one hand-off per transaction instead of aiosqlite's one
        # (or more) per statement.
        self._writer: ThreadPoolExecutor | None = None
        self._sync: Engine | None = None
        if self.file is not None:
            self._sync = create_engine(
                parsed.set(drivername="sqlite"),
                json_serializer=json_text,
                json_deserializer=orjson.loads,
                connect_args={
                    "timeout": 30,
                    "check_same_thread": False,
                    "isolation_level": None,
                    "factory": _SQLiteConnection,
                },
            )
            event.listen(self._sync, "connect", _sqlite_pragmas)
            event.listen(self._sync, "begin", _begin_immediate)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="corral-sqlite")

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (a no-op when it is already there)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction: committed on success, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def fenced(self) -> AsyncIterator[AsyncSession]:
        """A session for a leader-only write: it proves this replica's leadership term
        first, so nothing is written (StaleTerm) once another replica has taken the lead."""
        async with self.session() as session:
            await self.term.prove(session)
            yield session

    @asynccontextmanager
    async def fenced_core(self) -> AsyncIterator[AsyncConnection]:
        """As `fenced`, for table statements only: a connection in a transaction, without
        an ORM session over it (the fleet's hot writes: a session's bookkeeping was about
        half of each of their transactions' CPU time on the leader)."""
        async with self.engine.begin() as conn:
            await self.term.prove(conn)
            yield conn

    @asynccontextmanager
    async def single(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one statement fenced with `term.holds()` in it: the fleet's
        command, ack and mission writes on SQLite (on PostgreSQL they go through `direct`,
        one statement that is its own transaction)."""
        async with self.engine.begin() as conn:
            yield conn

    async def run(self, work: Callable[[Session], T], fenced: bool = True) -> T:
        """`work`, one synchronous function, in one transaction (committed when it
        returns, rolled back when it raises); `fenced`: the term proved first in it, as
        `fenced()` does. On a SQLite file it runs on the writer thread: one thread
        hand-off for the whole transaction. Elsewhere in an AsyncSession (`run_sync`:
        on PostgreSQL the term's row is read FOR SHARE as always)."""
        if self._writer is None:
            async with self.session() as s:
                if fenced:
                    await self.term.prove(s)
                return await s.run_sync(work)
        term = self.term.confirm() if fenced and self.term.fenced else None
        loop = asyncio.get_running_loop()
        dropped = threading.Event()
        try:
            return await loop.run_in_executor(self._writer, self._run, work, term, dropped)
        except asyncio.CancelledError:
            # The caller will not act on it (a claimed job would never be published): it is
            # rolled back unless it already committed, as an async session's would be.
            dropped.set()
            raise
        except _Stale:
            async with self.session() as s:  # says why and steps down, on this thread
                await self.term.prove(s)
            raise StaleTerm("this replica no longer leads") from None

    def _run(self, work: Callable[[Session], T], term: int | None, dropped: threading.Event) -> T:
        assert self._sync is not None
        with Session(self._sync, expire_on_commit=False) as s, s.begin():
            if term is not None:
                held = s.scalar(select(LeadershipRow.term).where(LeadershipRow.id == 1))
                if held != term:
                    raise _Stale()
            done = work(s)
            if dropped.is_set():
                raise _Dropped()
            return done

    async def close(self) -> None:
        if self.direct is not None:
            await self.direct.close()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        if self._sync is not None:
            self._sync.dispose()
        await self.engine.dispose()

    def dsn(self) -> str:
        """The URL as a plain postgresql:// DSN for asyncpg (with its password: never log
        it; `describe` is for people)."""
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def describe(self) -> str:
        """The URL without its password, for logs and the status endpoint."""
        return self.url.render_as_string(hide_password=True)


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(resources.files("corral.store") / "migrations"))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
