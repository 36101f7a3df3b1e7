"""The replicas' position batches: split under the payload limit, parsed back whole.

Pure: `_chunks` only, no database."""

import json

from corral.fleet.peers import MAX_PAYLOAD, _chunks


def test_chunks_split_under_the_limit_and_parse_back() -> None:
    items = [
        [f"robot-{i}", {"marker": f"r{i % 50}c{i % 80}", "x": i / 3}, 1764899999.125, i % 2 == 0]
        for i in range(700)
    ]
    for head in ({"f": "replica-a"}, {}):
        texts = _chunks(head, "r", items)
        assert len(texts) > 1
        assert all(len(text) < MAX_PAYLOAD for text in texts)
        parsed = [json.loads(text) for text in texts]
        assert all({k: v for k, v in p.items() if k != "r"} == head for p in parsed)
        assert [item for p in parsed for item in p["r"]] == items


def test_chunks_of_nothing_is_nothing() -> None:
    assert _chunks({"f": "a"}, "g", []) == []
    assert json.loads(_chunks({"f": "a"}, "g", ["x"])[0]) == {"f": "a", "g": ["x"]}


async def test_an_answer_is_heard_whether_orjson_or_only_json_can_read_it() -> None:
    """Payloads are read with orjson; one it refuses (a NaN that json.dumps wrote from a
    robot's report) is read by the standard library instead, never dropped."""
    import asyncio
    from typing import Any

    from corral.fleet.peers import DOWN, Peers
    from corral.store.database import Database

    db = Database("postgresql+asyncpg://corral@127.0.0.1:5432/unused")  # never connected
    try:
        peers = Peers(None, db, "me", lambda: False)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        for number, extra in ((1, 1.5), (2, float("nan"))):
            future: asyncio.Future[dict[str, Any] | None] = loop.create_future()
            peers.asked[number] = future
            answer = {"f": "other", "t": "me", "n": number, "e": None, "seen": extra}
            peers._heard(DOWN, json.dumps(answer))
            assert future.done(), f"answer {number} heard"
            assert future.result()["n"] == number  # type: ignore[index]
        peers._heard(DOWN, "{not json")  # garbage is ignored
    finally:
        await db.close()
