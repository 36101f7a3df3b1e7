"""A batch of the fleet's decisions stored in one transaction (`FleetStore.apply`), on both
backends (SQLAlchemy on SQLite, statements sent straight on PostgreSQL): what a user reads
back afterwards is the same, command ids grow in the order given, a robot's ack stores only
its own commands, and a batch of a term that is over stores nothing."""

import time

import pytest

from corral.model.traffic import Wait
from corral.store.database import Database
from corral.store.fleet import FleetStore
from corral.store.leadership import StaleTerm
from corral.store.tables import MissionRow, RobotRow, utcnow


async def _leading(db: Database, replica: str) -> None:
    async with db.session() as s:
        taken = await db.term.take(s, replica)
    db.term.hold(taken, time.monotonic() + 60)


def _mission(robot: str) -> MissionRow:
    return MissionRow(
        robot=robot,
        map="m",
        goal="c",
        objective="",
        route=["a", "b", "c"],
        progress=0,
        state="active",
        reason="",
        task_id=None,
        actions=[],
        created_at=utcnow(),
    )


async def test_a_batch_reads_back_as_it_was_written(db_url: str) -> None:
    db = Database(db_url)
    await db.migrate()
    try:
        await _leading(db, "me")
        fleet = FleetStore(db)
        for name in ("r1", "r2"):
            await fleet.add_robot(RobotRow(name=name))
        await fleet.put_map("m", {"markers": []})
        mission = await fleet.add_mission(_mission("r1"))
        [mine] = await fleet.add_commands([("r1", "custom", {"seq": 1})])
        [theirs] = await fleet.add_commands([("r2", "custom", {"seq": 2})])
        finished = utcnow()

        rows, acked = await fleet.apply(
            {mission.id: {"progress": 2, "state": "done", "finished_at": finished}},
            {"r1": {"state": "online"}, "r2": {"state": "busy", "last_seen": finished}},
            {"r1": {mine.id, theirs.id}},  # r2's command named by r1: not stored
            [
                ("r1", "move", {"lane": "a-b"}),
                ("r2", "move", {"lane": "x-y", "ü": [1, 2]}),
                ("r1", "stop", {}),
            ],
            {
                "m": (
                    {"r1": ("b", "c", None), "r2": ("x", None, Wait("y", "marker:y", "r1"))},
                    set(),
                )
            },
        )
        assert [(r.robot, r.kind, r.body) for r in rows] == [
            ("r1", "move", {"lane": "a-b"}),
            ("r2", "move", {"lane": "x-y", "ü": [1, 2]}),
            ("r1", "stop", {}),
        ]
        ids = [r.id for r in rows]
        assert ids == sorted(ids)
        assert ids[0] > theirs.id
        assert acked == [mine.created_at]

        stored = await fleet.mission(mission.id)
        assert (stored.progress, stored.state, stored.finished_at) == (2, "done", finished)
        assert stored.route == ["a", "b", "c"]  # fields not named keep their values
        robots = {r.name: r for r in await fleet.robots()}
        assert robots["r1"].state == "online"
        assert (robots["r2"].state, robots["r2"].last_seen) == ("busy", finished)
        log = {c.id: c for r in ("r1", "r2") for c in await fleet.commands(r)}
        assert [(log[r.id].robot, log[r.id].kind, log[r.id].body) for r in rows] == [
            (r.robot, r.kind, r.body) for r in rows
        ], "each id names the command it was returned for"
        assert log[mine.id].acked_at is not None
        assert [c.acked_at for c in await fleet.commands("r2")] == [None, None]
        [(_, table)] = await fleet.maps()
        assert table == {
            "robots": {"r1": {"at": "b", "next": "c"}, "r2": {"at": "x", "next": None}},
            "waits": {"r2": {"marker": "y", "resource": "marker:y", "holder": "r1"}},
        }

        # the next batch rewrites r1's row and removes r2's; an ack again stores nothing new
        _, again = await fleet.apply(
            {}, {}, {"r1": {mine.id}}, [], {"m": ({"r1": ("c", None, None)}, {"r2"})}
        )
        assert again == []
        [(_, table)] = await fleet.maps()
        assert table == {"robots": {"r1": {"at": "c", "next": None}}, "waits": {}}

        # a row written over twice more: a wait comes, then goes (every column rewritten)
        waiting = {"m": ({"r1": ("c", None, Wait("d", "lane:c|d", "r3"))}, set())}
        await fleet.apply({}, {}, {}, [], waiting)
        [(_, table)] = await fleet.maps()
        assert table["waits"] == {"r1": {"marker": "d", "resource": "lane:c|d", "holder": "r3"}}
        await fleet.apply({}, {}, {}, [], {"m": ({"r1": ("c", "b", None)}, set())})
        [(_, table)] = await fleet.maps()
        assert table == {"robots": {"r1": {"at": "c", "next": "b"}}, "waits": {}}
    finally:
        await db.close()


async def test_a_batch_of_a_term_that_is_over_stores_nothing(db_url: str) -> None:
    old, new = Database(db_url), Database(db_url)
    await old.migrate()
    try:
        await _leading(old, "old")
        fleet = FleetStore(old)
        await fleet.add_robot(RobotRow(name="r1"))
        [command] = await fleet.add_commands([("r1", "custom", {"seq": 1})])
        await _leading(new, "new")
        with pytest.raises(StaleTerm):
            await fleet.apply(
                {},
                {"r1": {"state": "online"}},
                {"r1": {command.id}},
                [("r1", "move", {"lane": "a-b"})],
                {"m": ({"r1": ("a", "b", None)}, set())},
            )
        later = FleetStore(new)
        assert [(c.id, c.acked_at) for c in await later.commands("r1")] == [(command.id, None)]
        assert (await later.robot("r1")).state == "offline"  # type: ignore[union-attr]
    finally:
        await old.close()
        await new.close()
