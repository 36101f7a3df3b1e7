"""The database handle: engine creation, migrations at start, and sessions (plain ones, and
fenced ones that prove this replica's leadership term).

One Database per process; repositories borrow sessions from it.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from corral.errors import Invalid
from corral.store.leadership import LeaderTerm


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


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
        options: dict[str, Any] = {}
        self.file: Path | None = None  # the SQLite database file, if there is one
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                self.file = Path(parsed.database)
                self.file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            options["connect_args"] = {"timeout": 30}
        else:
            options["pool_pre_ping"] = True
        self.engine: AsyncEngine = create_async_engine(parsed, **options)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.term = LeaderTerm()

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

    async def close(self) -> None:
        await self.engine.dispose()

    def describe(self) -> str:
        """The URL without its password, for logs and the status endpoint."""
        return self.url.render_as_string(hide_password=True)


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(resources.files("corral.store") / "migrations"))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
