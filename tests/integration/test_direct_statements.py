"""The leader's statements sent straight over asyncpg (store/direct.py), on the machine's
real PostgreSQL: a connection PostgreSQL ends is replaced without a ping, a statement that
was on it says "retry" (503) instead of failing, and nothing is stored twice."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from corral.store.database import Database
from corral.store.direct import DatabaseAway
from corral.store.fleet import FleetStore
from corral.store.tables import RobotRow


async def _end_corral_sessions(pg_url: str) -> int:
    """Every other session on the test's database ended, as a PostgreSQL restart would."""
    name = pg_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        ended = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        return int(ended)
    finally:
        await admin.close()


@asynccontextmanager
async def _fleet(pg_url: str) -> AsyncIterator[tuple[Database, FleetStore, int]]:
    """A migrated store with robot r1 and one command stored straight (its id)."""
    db = Database(pg_url)
    await db.migrate()
    try:
        fleet = FleetStore(db)
        await fleet.add_robot(RobotRow(name="r1"))
        [first] = await fleet.add_commands([("r1", "custom", {"seq": 1})])
        yield db, fleet, first.id
    finally:
        await db.close()


async def test_an_ended_connection_is_replaced_without_a_ping(pg_url: str) -> None:
    async with _fleet(pg_url) as (db, fleet, first):
        assert db.direct is not None
        assert db.direct._idle, "the statement went straight"

        assert await _end_corral_sessions(pg_url) >= 1
        await asyncio.sleep(0.3)  # the event loop reads PostgreSQL's goodbye meanwhile
        # the next statement opens a new connection: no error, no ping before it
        [second] = await fleet.add_commands([("r1", "custom", {"seq": 2})])
        unknown, acked = await fleet.acknowledge([("r1", [first, second.id])])
        assert unknown == [[]]
        assert len(acked) == 2
        log = await fleet.commands("r1")
        assert [(c.body, c.acked_at is not None) for c in log] == [
            ({"seq": 2}, True),
            ({"seq": 1}, True),
        ]


async def test_a_statement_on_a_connection_that_breaks_says_retry(pg_url: str) -> None:
    async with _fleet(pg_url) as (db, fleet, _):
        assert db.direct is not None
        # a statement that is still running when its session is ended
        slow = asyncio.create_task(db.direct.fetchval("SELECT pg_sleep(5)"))
        await asyncio.sleep(0.3)
        await _end_corral_sessions(pg_url)
        with pytest.raises(DatabaseAway) as lost:
            await slow
        assert lost.value.status == 503
        assert "retry" in lost.value.message
        assert "postgres@" not in lost.value.message  # no address or credential in it
        # and the store works again at once
        [again] = await fleet.add_commands([("r1", "custom", {"seq": 2})])
        newest = await fleet.commands("r1", limit=1)
        assert [c.id for c in newest] == [again.id]


async def test_a_database_that_cannot_be_reached_says_retry(pg_url: str) -> None:
    db = Database(pg_url.replace(":5432/", ":1/"))  # nothing listens on port 1
    try:
        assert db.direct is not None
        with pytest.raises(DatabaseAway) as away:
            await db.direct.fetchval("SELECT 1")
        assert away.value.status == 503
    finally:
        await db.close()
