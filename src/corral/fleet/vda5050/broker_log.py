"""Publishes the broker's ACLs refused, as events: Mosquitto says so only in its log (at
debug level), so the leader follows that file and makes each refusal on a VDA 5050 topic
a `vda5050.denied` event, once a minute per client and topic (the vehicle may retry)."""

import asyncio
import re
import time
from pathlib import Path

from prometheus_client import Counter

from corral.events import EventBus
from corral.fleet.vda5050.messages import Topics
from corral.waits import pause

DENIED = re.compile(rb"Denied PUBLISH from (\S+) \(d\d, q\d, r\d, m\d+, '([^'\n]*)'")
CHUNK = 8 << 20  # bytes read at most per look
QUIET = 60.0  # seconds before the same client and topic is said again


class BrokerLog:
    def __init__(
        self, path: Path, topics: Topics, bus: EventBus, counter: Counter, replica: str
    ) -> None:
        self.path = path
        self.topics = topics
        self.bus = bus
        self.counter = counter
        self.replica = replica
        self._said: dict[tuple[str, str], float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the file from its end (what was refused before is not news) until `stop`;
        a file cut short or replaced (rotation) is read again from its start."""
        position = await asyncio.to_thread(self._size)
        while not stop.is_set():
            size = await asyncio.to_thread(self._size)
            if size < position:
                position = 0
            if size > position:
                chunk = await asyncio.to_thread(self._read, position)
                complete = chunk.rfind(b"\n") + 1
                position += complete
                for found in DENIED.finditer(chunk, 0, complete):
                    await self._denied(found[1].decode(errors="replace"), found[2].decode())
            await pause(0.5, stop)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _read(self, position: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(position)
            return f.read(CHUNK)

    async def _denied(self, client: str, topic: str) -> None:
        parsed = self.topics.parse(topic)
        if parsed is None:
            return
        manufacturer, serial, name = parsed
        self.counter.labels("in", name, "denied", self.replica).inc()
        now = time.monotonic()
        if now - self._said.get((client, topic), -QUIET) < QUIET:
            return
        self._said[(client, topic)] = now
        await self.bus.emit(
            "vda5050.denied",
            f"vda5050/{manufacturer}/{serial}",
            f"the broker refused client {client} a publish on {topic}: the topic is not "
            "its own (broker ACL)",
            {"client": client, "topic": topic},
        )
