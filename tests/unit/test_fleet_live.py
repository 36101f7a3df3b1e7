"""The fleet's live stream: the first frame holds every robot, later ones only the robots
whose place, state or telemetry changed (not those merely heard again), and the removed."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from corral.fleet.live import LiveView, follow


def _doc(
    name: str, marker: str, battery: float, at: float, state: str = "online"
) -> dict[str, Any]:
    return {
        "name": name,
        "state": state,
        "connected": True,
        "map": "yard",
        "marker": marker,
        "group": None,
        "priority": 0,
        "last_seen": str(at),
        "telemetry": {"battery": battery, "marker": marker, "at": at},
    }


def test_frames_carry_what_changed_and_who_left() -> None:
    docs = {"a": _doc("a", "m1", 90, 1.0), "b": _doc("b", "m2", 80, 1.0)}

    async def frames() -> list[tuple[list[Any], list[str]]]:
        view = LiveView()
        out = [await view.frame(list(docs), docs.get)]
        docs["a"] = _doc("a", "m1", 90, 1.5)  # heard again, nothing new
        docs["b"] = _doc("b", "m3", 80, 1.5)  # moved on
        out.append(await view.frame(list(docs), docs.get))
        del docs["a"]
        docs["b"] = _doc("b", "m3", 80, 2.0, state="offline")
        out.append(await view.frame(["a", "b"], docs.get))  # a's name, but it is gone
        out.append(await view.frame(list(docs), docs.get))
        return out

    first, second, third, fourth = asyncio.run(frames())
    assert [d["name"] for d in first[0]] == ["a", "b"]
    assert first[1] == []
    assert [d["marker"] for d in second[0]] == ["m3"]
    assert second[1] == []
    assert [(d["name"], d["state"]) for d in third[0]] == [("b", "offline")]
    assert third[1] == ["a"]
    assert fourth == ([], [])


async def _first(frames: AsyncIterator[bytes], n: int) -> list[bytes]:
    """The stream's first n chunks; then it is closed, as a client hanging up closes it."""
    chunks = []
    async for chunk in frames:
        chunks.append(chunk)
        if len(chunks) == n:
            break
    await frames.aclose()  # type: ignore[attr-defined]
    return chunks


def test_the_stream_says_when_nothing_changed() -> None:
    docs = {f"r{i}": _doc(f"r{i}", "m1", 50, 1.0) for i in range(600)}  # more than a slice
    frames = follow(lambda: list(docs), docs.get, 0.01, lambda: True, asyncio.Event())

    chunks = asyncio.run(_first(frames, 3))
    assert chunks[0] == b": connected\n\n"
    assert chunks[1].startswith(b"event: robots\ndata: [")
    assert chunks[1].count(b'"name"') == 600
    assert chunks[2] == b": no change\n\n"


def test_an_empty_fleet_still_gets_its_first_frame() -> None:
    frames = follow(list, lambda _: None, 0.01, lambda: True, asyncio.Event())

    assert asyncio.run(_first(frames, 3)) == [
        b": connected\n\n",
        b"event: robots\ndata: []\n\n",
        b": no change\n\n",
    ]


def test_the_stream_ends_when_its_replica_stops_leading_or_stops() -> None:
    lead = [True]

    async def read(stopping: asyncio.Event, every: float) -> list[bytes]:
        chunks = []
        async for chunk in follow(list, lambda _: None, every, lambda: lead[0], stopping):
            chunks.append(chunk)
            if chunk.startswith(b"event: robots"):
                lead[0] = False  # lost while the stream waits out its 10 s: it ends
        return chunks

    assert len(asyncio.run(read(asyncio.Event(), 10.0))) == 2
    stopped = asyncio.Event()
    stopped.set()
    lead[0] = True
    assert asyncio.run(read(stopped, 10.0)) == [b": connected\n\n"]
