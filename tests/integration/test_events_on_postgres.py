"""Events appended on the machine's real PostgreSQL: stored in order with their ids, and
announced on `corral_events` once stored, in payloads that name their kinds and fit
PostgreSQL's limit (a large batch as several), for the other replicas to read."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from corral.model.events import EventFilter
from corral.store.database import Database
from corral.store.events import CHANNEL, NOTICE_BYTES, EventStore, heard

Heard = asyncio.Queue[str]  # payloads heard on corral_events


@asynccontextmanager
async def _announcing(pg_url: str, replica: str) -> AsyncIterator[tuple[EventStore, Heard]]:
    """A migrated store for `replica`, and what a LISTEN on `corral_events` hears."""
    db = Database(pg_url)
    await db.migrate()
    heard_here: Heard = asyncio.Queue()
    listener = await asyncpg.connect(db.dsn())
    try:
        await listener.add_listener(CHANNEL, lambda *args: heard_here.put_nowait(args[3]))
        yield EventStore(db, replica), heard_here
    finally:
        await listener.close()
        await db.close()


async def _drain(queue: Heard) -> list[str]:
    out = [await asyncio.wait_for(queue.get(), 5)]
    await asyncio.sleep(0.2)
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


async def test_a_batch_is_stored_in_order_and_announced_with_its_kinds(pg_url: str) -> None:
    async with _announcing(pg_url, "rep1") as (store, queue):
        batch = [
            ("mission.started", "mission/1", "m1 to r2c2", {"route": ["r0c0", "r2c2"]}),
            ("robot.waiting", "robot/a", "a waits for b", {"for": "b", "n": 1}),
            ("mission.started", "mission/2", "m2 'quoted' é", {}),
        ]
        events = await store.append_many(batch)
        assert [e.kind for e in events] == [k for k, _, _, _ in batch]
        ids = [e.id for e in events]
        assert ids == sorted(ids)

        [payload] = await _drain(queue)
        origin, announced, kinds = heard(payload)
        assert (origin, announced) == ("rep1", ids)
        assert sorted(kinds or ()) == ["mission.started", "robot.waiting"]

        stored = await store.query(EventFilter(after_id=ids[0] - 1))
        assert [(e.id, e.kind, e.resource, e.message, e.data) for e in stored] == [
            (i, k, r, m, d) for i, (k, r, m, d) in zip(ids, batch, strict=True)
        ]
        assert await store.by_ids(ids, ("robot.",)) == [stored[1]]

        one = await store.append("token.created", "token/9", "token 'x' created", {})
        [payload] = await _drain(queue)
        assert heard(payload) == ("rep1", [one.id], ("token.created",))


async def test_a_large_batch_is_announced_in_payloads_that_fit(pg_url: str) -> None:
    async with _announcing(pg_url, "rep2") as (store, queue):
        batch = [(f"robot.k{i % 5}", f"robot/r{i}", "moved", {"i": i}) for i in range(2_000)]
        events = await store.append_many(batch)
        payloads = await _drain(queue)
        assert len(payloads) > 1
        assert all(len(p.encode()) <= NOTICE_BYTES for p in payloads)
        assert [i for p in payloads for i in heard(p)[1]] == [e.id for e in events]
