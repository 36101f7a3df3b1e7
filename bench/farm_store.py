"""Print farm: what each of the farm's store writes costs in-process, on a SQLite file.

A farm of `--printers` printers (a bed in each) and two racks of clean beds; each printer
is ready once per round: its ready transaction (take and replace stored, a bed reserved,
the take claimed), the take's end, the replace's claim and its end, one after the other,
timed around `FarmStore` (the writer-thread hand-off included). No broker, no arm.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

from corral.control.tasks import moved_event
from corral.model.views import TaskView
from corral.store.database import Database
from corral.store.events import EventStore
from corral.store.farm import FarmStore, ReadyOutcome
from corral.store.tasks import Event


def _queued(printer: str) -> object:
    def note(outcome: ReadyOutcome) -> list[Event]:
        return [
            ("printer.finished", f"printer/{printer}", f"printer {printer} finished", {}),
            *(
                ("task.queued", f"task/{t.id}", f"task {t.id} queued", {"params": t.params})
                for t in outcome.tasks
            ),
        ]

    return note


def _moved(task: TaskView, note: str) -> Event:
    return ("farm.bed.moved", f"printer/{task.params.get('printer_id')}", note, {})


async def run(printers: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as home:
        db = Database(f"sqlite+aiosqlite:///{home}/corral.db")
        await db.migrate()
        store = FarmStore(db, EventStore(db))
        await store.put_rack("near", 0, 10_000)
        await store.put_rack("far", 50, 10_000)
        for i in range(printers * rounds + 10):
            rack = "near" if i % 2 == 0 else "far"
            await store.put_bed(f"spare-{i}", "pei", "clean", rack, i // 2 + 1)
        for i in range(printers):
            await store.put_bed(f"inside-{i}", "pei", "with_part", None, None)
            await store.put_printer(f"p{i}", f"door-{i}", "pei", 10, f"inside-{i}", False)
        times: dict[str, list[float]] = {"ready": [], "take done": [], "claim": [], "done": []}

        async def timed(what: str, write: object) -> object:
            began = time.perf_counter()
            result = await write  # type: ignore[misc]
            times[what].append((time.perf_counter() - began) * 1000)
            return result

        for _ in range(rounds):
            for i in range(printers):
                p = f"p{i}"
                ready = store.record_ready(
                    p,
                    "robot_arm",
                    600,
                    "bench",
                    None,
                    _queued(p),
                    moved_event,  # type: ignore[arg-type]
                )
                outcome: ReadyOutcome = await timed("ready", ready)  # type: ignore[assignment]
                assert outcome.claim is not None, outcome
                assert outcome.claim.task is not None, outcome
                await timed("take done", store.done(outcome.claim.task.id, "", moved_event, _moved))
                replace = outcome.tasks[1].id
                await timed("claim", store.claim(replace, "robot_arm", moved_event))
                await timed("done", store.done(replace, "", moved_event, _moved))
        await db.close()
    print(f"{'write':12} {'p50 ms':>8} {'p99 ms':>8} {'n':>6}")
    for what, found in times.items():
        found.sort()
        p99 = found[round(0.99 * (len(found) - 1))]
        print(f"{what:12} {statistics.median(found):8.2f} {p99:8.2f} {len(found):6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--printers", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"farm store writes, {args.printers} printers, {args.rounds} rounds, load {load}")
    asyncio.run(run(args.printers, args.rounds))


if __name__ == "__main__":
    main()
