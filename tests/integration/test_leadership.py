"""Leadership terms on both backends: a write that proves a term changes nothing once a
later term is taken, and tells its replica to step down; a lapsed lease stops writes
without asking the database.

Two LeaderTerm objects on one database stand for two replicas; runs against a SQLite file
and against the machine's real PostgreSQL.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from corral.store.database import Database
from corral.store.fleet import FleetStore
from corral.store.leadership import LeaderTerm, StaleTerm
from corral.store.tables import MissionRow, RobotRow, TaskRow
from corral.store.tasks import TaskStore, new_task


async def _take(db: Database, term: LeaderTerm, replica: str) -> int:
    async with db.session() as s:
        taken = await term.take(s, replica)
    term.hold(taken, time.monotonic() + 60)
    return taken


@asynccontextmanager
async def _two(db_url: str) -> AsyncIterator[tuple[Database, Database, list[str]]]:
    """Two replicas on one database (the first migrated) and the reasons the first one was
    told to step down."""
    old, new = Database(db_url), Database(db_url)
    await old.migrate()
    told: list[str] = []
    old.term.on_stale = told.append
    try:
        yield old, new, told
    finally:
        await old.close()
        await new.close()


async def test_a_stale_term_moves_no_task_and_steps_down(db_url: str) -> None:
    async with _two(db_url) as (old, new, told):
        first = await _take(old, old.term, "old")
        tasks = TaskStore(old)
        [task] = await tasks.add([new_task("take", "arm", {}, 0, 60, "test")])
        assert await tasks.transition(task.id, "assigned") is not None

        second = await _take(new, new.term, "new")
        assert second == first + 1
        with pytest.raises(StaleTerm):
            await tasks.transition(task.id, "running")
        assert told, "the stale replica was told to step down"
        assert (await tasks.get(task.id)).state == "assigned", "nothing written"
        with pytest.raises(StaleTerm):  # and it stays down: no database needed to refuse
            old.term.confirm()
        assert await TaskStore(new).transition(task.id, "running") is not None


async def test_a_stale_term_stores_no_command_and_no_ack(db_url: str) -> None:
    """The fleet's one-statement writes (an operator's command, robots' acks, a mission) prove
    the term inside the statement: once a later term is taken they store nothing and step
    down."""
    async with _two(db_url) as (old, new, told):
        first = await _take(old, old.term, "old")
        fleet = FleetStore(old)
        for name in ("r1", "r2"):
            await fleet.add_robot(RobotRow(name=name))
        [mine] = await fleet.add_commands([("r1", "custom", {"seq": 1})])
        [theirs] = await fleet.add_commands([("r2", "custom", {"seq": 2})])
        [later] = await fleet.add_commands([("r1", "custom", {"seq": 3})])
        assert mine.id < theirs.id < later.id
        # r1 acks its command and r2's: its own is stored, r2's is named as not r1's; an
        # ack again changes nothing and is not unknown
        unknown, acked = await fleet.acknowledge([("r1", [mine.id, theirs.id])])
        assert unknown == [[theirs.id]]
        assert acked == [mine.created_at]
        assert await fleet.acknowledge([("r1", [mine.id]), ("r2", [])]) == ([[], []], [])

        await _take(new, new.term, "new")
        with pytest.raises(StaleTerm):
            await fleet.add_commands([("r1", "custom", {"seq": 4})])
        assert told, "the stale replica was told to step down"
        old.term.hold(first, time.monotonic() + 60)  # as if it had not noticed: the store refuses
        with pytest.raises(StaleTerm):
            await fleet.acknowledge([("r1", [later.id])])
        old.term.hold(first, time.monotonic() + 60)
        mission = MissionRow(
            robot="r1",
            map="m",
            goal="g",
            objective="",
            route=["a", "g"],
            progress=0,
            state="active",
            reason="",
            task_id=None,
            actions=[],
            created_at=datetime.now(UTC),
        )
        with pytest.raises(StaleTerm):
            await fleet.add_mission(mission)
        assert await FleetStore(new).missions() == []
        log = await FleetStore(new).commands("r1")
        assert [(c.body["seq"], c.acked_at is not None) for c in log] == [(3, False), (1, True)]


async def test_a_lapsed_lease_stops_writes_at_once(db_url: str) -> None:
    db = Database(db_url)
    await db.migrate()
    try:
        async with db.session() as s:
            taken = await db.term.take(s, "me")
        db.term.hold(taken, time.monotonic() + 0.2)
        tasks = TaskStore(db)
        [task] = await tasks.add([new_task("take", "arm", {}, 0, 60, "test")])
        assert await tasks.transition(task.id, "assigned") is not None
        await asyncio.sleep(0.3)
        with pytest.raises(StaleTerm):
            await tasks.transition(task.id, "running")
        assert (await tasks.get(task.id)).state == "assigned"
    finally:
        await db.close()


async def test_a_new_term_waits_for_the_writes_of_the_last_one(pg_url: str) -> None:
    """On PostgreSQL a write in progress holds the term's row: the next term is taken only
    after it ends, so every write of a term is stored before the next term begins."""
    old, new = Database(pg_url), Database(pg_url)
    await old.migrate()
    try:
        await _take(old, old.term, "old")
        tasks = TaskStore(old)
        [task] = await tasks.add([new_task("take", "arm", {}, 0, 60, "test")])
        order: list[str] = []
        inside = asyncio.Event()
        release = asyncio.Event()

        async def slow_write() -> None:
            async with old.fenced() as s:
                inside.set()
                await release.wait()
                row = await s.get(TaskRow, task.id)
                assert row is not None
                row.reason = "late"
            order.append("old write")

        async def take() -> None:
            await inside.wait()
            await _take(new, new.term, "new")
            # Its term was granted once the old write's transaction ended: that write is
            # stored by now (which coroutine resumes first after it is a matter of the loop).
            reason = (await TaskStore(new).get(task.id)).reason
            order.append(f"new term, after {reason or 'nothing'}")

        writing = asyncio.create_task(slow_write())
        taking = asyncio.create_task(take())
        await inside.wait()
        await asyncio.sleep(0.5)
        assert order == [], "the new term waits for the open proved transaction"
        release.set()
        await asyncio.gather(writing, taking)
        assert sorted(order) == ["new term, after late", "old write"]
        assert (await TaskStore(new).get(task.id)).reason == "late"
    finally:
        await old.close()
        await new.close()
