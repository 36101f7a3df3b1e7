"""The dispatcher's journal: decisions written in batches, in order, sent only once stored,
and kept for the next write when a write fails (a store that fails once is faked here).
"""

import asyncio
from datetime import datetime
from typing import Any, cast

import pytest

from corral.events import EventBus
from corral.fleet.journal import Journal
from corral.fleet.meter import FleetMeter
from corral.model.fleet_map import grid_map
from corral.model.traffic import Blocked, Grant, Place, Traffic, Wait
from corral.store.fleet import FleetStore
from corral.store.tables import CommandRow, MissionRow


class FakeStore:
    def __init__(self) -> None:
        self.batches: list[tuple[Any, ...]] = []
        self.fail_next = False
        self.gate: asyncio.Event | None = None
        self.next_id = 1

    async def apply(
        self,
        missions: dict[int, dict[str, Any]],
        robots: dict[str, dict[str, Any]],
        acks: dict[str, set[int]],
        commands: list[tuple[str, str, dict[str, Any]]],
        traffic: dict[str, tuple[dict[str, Place], set[str]]],
    ) -> tuple[list[CommandRow], list[datetime]]:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise OSError("disk I/O error")
        self.batches.append((missions, robots, commands, traffic, acks))
        rows = []
        for robot, kind, body in commands:
            rows.append(CommandRow(id=self.next_id, robot=robot, kind=kind, body=body))
            self.next_id += 1
        return rows, []


class FakeBus:
    def __init__(self) -> None:
        self.events: list[str] = []

    async def emit_many(self, events: list[tuple[str, str, str, Any]]) -> None:
        self.events += [kind for kind, *_ in events]


def _journal() -> tuple[Journal, FakeStore, FakeBus, list[int], list[int]]:
    store, bus = FakeStore(), FakeBus()
    sent: list[int] = []
    ended: list[int] = []

    async def deliver(rows: list[CommandRow]) -> None:
        sent.extend(r.id for r in rows)

    async def on_end(row: MissionRow) -> None:
        ended.append(row.id)

    # Map m, five markers in a line: r1 on r0c0, r2 on r0c2, r3 on r0c3 (not stored yet).
    table = Traffic(grid_map("m", 5, 1))
    for robot, marker in (("r1", "r0c0"), ("r2", "r0c2"), ("r3", "r0c3")):
        table.place(robot, marker)
    tables = {"m": table}

    journal = Journal(
        cast(FleetStore, store),
        cast(EventBus, bus),
        tables.get,
        deliver,
        [on_end],
        FleetMeter(),
    )
    return journal, store, bus, sent, ended


def _table(journal: Journal) -> Traffic:
    table = journal.tables("m")
    assert table is not None
    return table


async def test_decisions_made_while_a_batch_is_written_go_in_one_next_batch() -> None:
    journal, store, bus, sent, _ = _journal()
    store.gate = asyncio.Event()
    journal.command("r1", "move", {"marker": "a"})
    journal.changed("m")
    first = asyncio.create_task(journal.commit())
    await asyncio.sleep(0)
    # While the first batch is being written, more decisions and three callers: r1 is
    # granted a move, r3 waits for r2's marker, then r2 is released.
    table = _table(journal)
    assert isinstance(table.request("r1", "r0c1"), Grant)
    assert isinstance(table.request("r3", "r0c2"), Blocked)
    table.release("r2")
    journal.command("r2", "move", {"marker": "b"})
    journal.mission(7, progress=1)
    journal.mission(7, progress=2)
    journal.changed("m")
    others = [asyncio.create_task(journal.commit()) for _ in range(3)]
    await asyncio.sleep(0)
    assert sent == [], "nothing is sent before it is stored"
    store.gate.set()
    await asyncio.gather(first, *others)
    assert len(store.batches) == 2
    missions, _, commands, traffic, _ = store.batches[1]
    assert missions == {7: {"progress": 2}}
    assert [c[0] for c in commands] == ["r2"]
    # only what changed after the first table, which was stored: r1's grant, r3's wait,
    # r2 gone
    assert store.batches[0][3] == {
        "m": (
            {"r1": ("r0c0", None, None), "r2": ("r0c2", None, None), "r3": ("r0c3", None, None)},
            set(),
        )
    }
    assert traffic == {
        "m": (
            {"r1": ("r0c0", "r0c1", None), "r3": ("r0c3", None, Wait("r0c2", "marker:r0c2", "r2"))},
            {"r2"},
        )
    }
    assert sent == [1, 2]
    assert bus.events == []


async def test_a_failed_write_is_kept_and_written_with_what_came_after() -> None:
    journal, store, bus, sent, ended = _journal()
    store.fail_next = True
    journal.command("r1", "move", {"marker": "a"})
    journal.mission(3, state="done")
    journal.event("mission.done", "mission/3", "mission 3 done")
    journal.ended(MissionRow(id=3, robot="r1"))
    with pytest.raises(OSError, match="disk I/O"):
        await journal.commit()
    assert (sent, ended, bus.events) == ([], [], [])
    journal.command("r1", "estop", {})
    journal.ack("r1", [5])
    await journal.commit()
    [(missions, _, commands, traffic, acks)] = store.batches
    assert traffic == {}  # no map changed in these batches
    assert acks == {"r1": {5}}
    assert missions == {3: {"state": "done"}}
    assert [c[1] for c in commands] == ["move", "estop"]
    assert sent == [1, 2]
    assert bus.events == ["mission.done"]
    assert ended == [3]


async def test_a_commit_with_nothing_new_writes_nothing() -> None:
    journal, store, _, _, _ = _journal()
    await journal.commit()
    journal.robot("r1", marker="a")
    await journal.commit()
    await journal.commit()
    assert len(store.batches) == 1


async def test_traffic_rows_of_a_failed_write_are_written_with_the_next_batch() -> None:
    journal, store, _, _, _ = _journal()
    table = _table(journal)
    store.fail_next = True
    table.release("r2")
    journal.changed("m")
    with pytest.raises(OSError, match="disk I/O"):
        await journal.commit()  # the first table: r1 on r0c0, r3 on r0c3 (r2 left)
    assert isinstance(table.request("r1", "r0c1"), Grant)
    journal.changed("m")
    await journal.commit()
    assert isinstance(table.request("r3", "r0c2"), Grant)
    journal.changed("m")
    await journal.commit()
    first, second = (batch[3] for batch in store.batches)
    # nothing was stored before: every robot of the table now, and r2's row deleted
    assert first == {"m": ({"r1": ("r0c0", "r0c1", None), "r3": ("r0c3", None, None)}, {"r2"})}
    assert second == {"m": ({"r3": ("r0c3", "r0c2", None)}, set())}
