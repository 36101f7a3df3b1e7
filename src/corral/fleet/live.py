"""The fleet's live view as a stream: every robot's document once, then every few tenths of
a second the robots whose place, state or telemetry changed, and the robots removed.

Served by `GET /fleet/stream` on the leader (which hears every replica's robots; a follower
passes the stream through), for dashboards and tools that follow a fleet without polling.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from corral.waits import pause

DocOf = Callable[[str], dict[str, Any] | None]  # a robot's document, None once it is gone
SLICE = 250  # robots' documents built per turn of the event loop
LOOK_EVERY = 0.5  # seconds: how soon a stream sees that its replica stopped leading


def _same(doc: dict[str, Any]) -> bytes:
    """What makes a document news: all of it but when the robot was last heard and when
    its latest report came (a robot standing still and saying so is not news)."""
    telemetry = {k: v for k, v in (doc.get("telemetry") or {}).items() if k != "at"}
    return orjson.dumps(
        {**doc, "last_seen": None, "telemetry": telemetry}, option=orjson.OPT_SORT_KEYS
    )


class LiveView:
    """One stream client's view: what it was last sent of each robot."""

    def __init__(self) -> None:
        self.sent: dict[str, bytes] = {}

    async def frame(self, names: list[str], doc_of: DocOf) -> tuple[list[Any], list[str]]:
        """(the documents of the robots that changed since the last frame, every robot in
        the first; the names of those gone since), built a slice at a time."""
        changed: list[Any] = []
        seen: set[str] = set()
        for at, name in enumerate(names):
            if at and at % SLICE == 0:
                await asyncio.sleep(0)
            doc = doc_of(name)
            if doc is None:
                continue
            seen.add(name)
            key = _same(doc)
            if self.sent.get(name) != key:
                self.sent[name] = key
                changed.append(doc)
        gone = sorted(set(self.sent) - seen)
        for name in gone:
            del self.sent[name]
        return changed, gone


def sse(kind: str, data: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def follow(
    names: Callable[[], list[str]],  # a new list each time: the robots may change meanwhile
    doc_of: DocOf,
    every: float,
    going: Callable[[], bool],
    stopping: asyncio.Event,
) -> AsyncIterator[bytes]:
    """The stream's frames: `robots` (a list of documents; the first one always, every
    robot, even none) and `removed` (a list of names) every `every` seconds while
    `going()` and not `stopping`, a comment when nothing changed (it keeps proxies from
    closing a quiet stream)."""
    view = LiveView()
    yield b": connected\n\n"
    first = True
    while going() and not stopping.is_set():
        changed, gone = await view.frame(names(), doc_of)
        if changed or first:
            yield sse("robots", changed)
        if gone:
            yield sse("removed", gone)
        if not (changed or gone or first):
            yield b": no change\n\n"
        first = False
        waited = 0.0
        while waited < every and going() and not stopping.is_set():  # a lost lead ends it soon
            step = min(LOOK_EVERY, every - waited)
            await pause(step, stopping)
            waited += step
