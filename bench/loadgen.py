"""bench/fleet.py's load generator: N simulated robots driven by one event loop, each a bare
WebSocket (asyncio protocol, hand-made frames), so the load costs little CPU.

No task per robot and no library frame code: one ticker walks the robots due in each 10 ms
slot and writes each one's report (its bytes built from a cached prefix and its running
number; masked with a zero key, which leaves the payload as it is). A robot acts like
corral's `SimRobot`: it takes move commands (one lane each), acks every command at once,
drives the lane in real time, reports a checkpoint at its end (at its goal followed by a
ping, whose pong says the mission is closed), and reports its marker at the rate while it
stands. Missions are asked for over HTTP (keep-alive connections, the
requests written by hand: `Poster`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

SLOT = 0.01  # seconds per ticker slot
MASK = b"\0\0\0\0"  # a client frame must be masked; a zero key leaves the payload as it is


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final, masked client frame."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, 0x80 | size)) + MASK + payload
    if size < 65536:
        return bytes((0x80 | opcode, 0xFE)) + size.to_bytes(2, "big") + MASK + payload
    return bytes((0x80 | opcode, 0xFF)) + size.to_bytes(8, "big") + MASK + payload


@dataclass
class Counts:
    """The load generator's counters (cumulative, but `lags` since the last snapshot)."""

    telemetry: int = 0  # telemetry messages written to a socket
    commands: int = 0
    checkpoints: int = 0
    missions: int = 0
    arrived: int = 0
    refused: int = 0  # mission requests answered 409 (the last one not closed yet)
    errors: int = 0  # error messages from corral, and failed mission requests
    disconnects: int = 0
    lags: list[float] = field(default_factory=list)  # ms a slot was late


class Bot(asyncio.Protocol):
    """One robot: its socket (once upgraded) and where it is."""

    def __init__(self, gen: Generator, name: str, token: str, home: str, start: str) -> None:
        self.gen, self.name, self.token, self.home = gen, name, token, home
        self.transport: asyncio.Transport | None = None
        self.upgraded = False
        self.connected = False
        self.buffer = bytearray()
        self.marker: str | None = start
        self.prefix = b""  # the report of standing on `marker`, up to its number
        self.lane: tuple[str, str] | None = None
        self.lane_text = ""
        self.t0 = 0.0
        self.speed = gen.speed
        self.moves: deque[tuple[str, str]] = deque()
        self.number = 0
        self.goal: str | None = None
        self.arrived: asyncio.Event | None = None
        self.pinged = False  # a ping sent after the goal's checkpoint, its pong not seen yet
        self.welcomed = asyncio.Event()
        self._stand(start)

    # -------------------------------------------------------------- the socket
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        parts = urlsplit(self.home)
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /fleet/ws HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {self.token}\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connected or self.upgraded:
            self.gen.counts.disconnects += 1
        self.transport, self.upgraded, self.connected = None, False, False
        self.buffer.clear()
        self.welcomed.clear()
        self._pong()  # the goal's checkpoint went or is lost with the socket: go on
        if not self.gen.stopping:
            asyncio.get_running_loop().call_later(0.5, self.gen.reconnect, self)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            del buffer[: end + 4]
            if b" 101 " not in status:
                self.gen.counts.errors += 1
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            self.send({"type": "hello", "robot": self.name})
        while len(buffer) >= 2:
            opcode, size = buffer[0] & 0x0F, buffer[1] & 0x7F
            at = 2
            if size == 126:
                if len(buffer) < 4:
                    return
                size, at = int.from_bytes(buffer[2:4], "big"), 4
            elif size == 127:
                if len(buffer) < 10:
                    return
                size, at = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < at + size:
                return
            payload = bytes(buffer[at : at + size])
            del buffer[: at + size]
            if opcode == 0x1:
                self.message(payload)
            elif opcode == 0x9 and self.transport is not None:  # ping: pong
                self.transport.write(frame(payload, 0xA))
            elif opcode == 0x8 and self.transport is not None:
                self.transport.close()

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is not None:
            self.transport.write(frame(json.dumps(message, separators=(",", ":")).encode()))

    def message(self, payload: bytes) -> None:
        message = json.loads(payload)
        kind = message.get("type")
        if kind == "command":
            self.gen.counts.commands += 1
            if message.get("kind") == "move":
                lane = message.get("lane")
                if isinstance(lane, list) and len(lane) == 2:
                    self.moves.append((str(lane[0]), str(lane[1])))
                    if self.lane is None:
                        self._drive(asyncio.get_running_loop().time())
            self.send({"type": "ack", "id": message["id"]})
        elif kind == "pong":
            self._pong()
        elif kind == "welcome":
            self.connected = True
            self.welcomed.set()
        elif kind == "error":
            self.gen.counts.errors += 1

    def _pong(self) -> None:
        if self.pinged and self.arrived is not None:
            self.pinged = False
            self.arrived.set()

    # -------------------------------------------------------------- the robot
    def _stand(self, marker: str) -> None:
        self.marker, self.lane = marker, None
        self.prefix = b'{"type":"telemetry","marker":"%s","lane":null,"battery":80.0,"status":"' % (
            marker.encode()
        )

    def _drive(self, now: float) -> None:
        start, end = self.moves.popleft()
        self.marker, self.lane, self.t0 = None, (start, end), now
        self.lane_text = f'"lane":["{start}","{end}"]'
        self.speed = self.gen.speed * (1 + self.gen.rng.uniform(-0.1, 0.1))

    def tick(self, now: float) -> None:
        """Due now: one report (and a checkpoint at a lane's end)."""
        transport = self.transport
        if transport is None or not self.connected:
            return
        self.number += 1
        number = str(self.number).encode()
        if self.lane is not None:
            done = self.speed * (now - self.t0)  # lanes are 1 m
            if done < 1.0:
                text = (
                    f'{{"type":"telemetry","marker":null,{self.lane_text},"progress":{done:.4f},'
                    f'"distance":{1.0 - done:.3f},"status":"'
                )
                transport.write(frame(text.encode() + number + b'"}'))
                self.gen.counts.telemetry += 1
                return
            end = self.lane[1]
            self._stand(end)
            transport.write(frame(b'{"type":"checkpoint","marker":"%s"}' % end.encode()))
            self.gen.counts.checkpoints += 1
            if self.goal == end and self.arrived is not None:
                # corral answers a ping once every checkpoint sent before it is stored
                # (docs/fleet-protocol.md): the mission is closed when the pong comes, and
                # the next one can be asked for without a 409
                transport.write(frame(b'{"type":"ping"}'))
                self.pinged = True
            if self.moves:
                self._drive(now)
        transport.write(frame(self.prefix + number + b'"}'))
        self.gen.counts.telemetry += 1


class Generator:
    """N robots on corral's replicas (robot i on homes[i % k])."""

    def __init__(self, homes: list[str], rate: float, speed: float, seed: int) -> None:
        self.homes = homes
        self.rate, self.speed = rate, speed
        self.rng = random.Random(seed)
        self.counts = Counts()
        self.bots: list[Bot] = []
        self.stopping = False
        self.pending: set[asyncio.Future[None]] = set()  # reconnections under way
        self.period = max(1, round(1 / (rate * SLOT)))  # slots between a robot's reports
        self.slots: list[list[Bot]] = [[] for _ in range(self.period)]

    async def connect(self, bot: Bot) -> None:
        parts = urlsplit(bot.home)
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: bot, parts.hostname, parts.port)

    def reconnect(self, bot: Bot) -> None:
        if self.stopping:
            return

        async def again() -> None:
            try:
                await self.connect(bot)
            except OSError:
                asyncio.get_running_loop().call_later(0.5, self.reconnect, bot)

        task = asyncio.ensure_future(again())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def start(
        self, api: httpx.AsyncClient, n: int, starts: list[str], map_name: str, limit: float
    ) -> None:
        """Register robots sim-1..sim-n on their start markers, connect them all (run the
        ticker meanwhile: a robot silent for a heartbeat is cut off)."""
        gate = asyncio.Semaphore(16)

        async def one(i: int) -> Bot:
            name = f"sim-{i}"
            body = {"name": name, "map": map_name, "marker": starts[i - 1], "priority": i}
            async with gate:
                answer = await api.post("/fleet/robots", json=body)
                if answer.status_code == 409:
                    answer = await api.post(f"/fleet/robots/{name}/rotate")
                answer.raise_for_status()
                bot = Bot(
                    self,
                    name,
                    answer.json()["token"],
                    self.homes[i % len(self.homes)],
                    starts[i - 1],
                )
                self.slots[rng.randrange(self.period)].append(bot)  # reports once welcomed
                await self.connect(bot)
            return bot

        rng = random.Random(1)
        self.bots = list(await asyncio.gather(*(one(i) for i in range(1, n + 1))))
        deadline = time.monotonic() + limit
        for bot in self.bots:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(bot.welcomed.wait(), max(0.1, deadline - time.monotonic()))

    def connected(self) -> int:
        return sum(bot.connected for bot in self.bots)

    async def ticker(self) -> None:
        """Every SLOT: the robots due now report; a late slot is caught up at once."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        turn = 0
        lags = self.counts.lags
        while True:
            due += SLOT
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            now = loop.time()
            lags.append((now - due) * 1000)
            if len(lags) > 100_000:
                del lags[:50_000]
            lags = self.counts.lags
            for bot in self.slots[turn % self.period]:
                bot.tick(now)
            turn += 1

    async def stop(self) -> None:
        self.stopping = True
        for bot in self.bots:
            if bot.transport is not None:
                bot.transport.write(frame(b"\x03\xe8", 0x8))
                bot.transport.close()
        await asyncio.sleep(0.2)


Near = Callable[[str], str]


class PostFailed(Exception):
    """A mission request got no whole answer (connection refused, cut or garbled)."""


class Poster:
    """JSON POSTs over a few keep-alive HTTP/1.1 connections, each request and answer written
    and read by hand on asyncio streams: httpx's client spent about a third of the load
    generator's time on the missions' requests alone."""

    def __init__(self, url: str, headers: dict[str, str], connections: int = 32) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = f"Host: {self.host}:{self.port}\r\n{extra}Content-Type: application/json\r\n"
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.room = asyncio.Semaphore(connections)

    async def post(self, path: str, body: dict[str, Any]) -> int:
        """The answer's status (its body read and dropped). A kept connection the server
        closed meanwhile (uvicorn closes one idle for 5 s) is replaced and the request sent
        again: it never reached the server."""
        data = json.dumps(body, separators=(",", ":")).encode()
        request = (
            f"POST {path} HTTP/1.1\r\n{self.head}Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        async with self.room:
            while self.idle:
                reader, writer = self.idle.pop()
                if not reader.at_eof():
                    with contextlib.suppress(PostFailed):
                        return await self._exchange(reader, writer, request)
                writer.close()
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                raise PostFailed(str(exc)) from exc
            return await self._exchange(reader, writer, request)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> int:
        try:
            writer.write(request)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(head[0].split(" ", 2)[1])
            fields = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (line.partition(":") for line in head[1:] if line)
            )
            await reader.readexactly(int(fields.get("content-length", "0")))
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            writer.close()
            raise PostFailed(repr(exc)) from exc
        if fields.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status


async def drive(gen: Generator, bot: Bot, api: Poster, near: Near, rng: random.Random) -> None:
    """Missions one after the other, each to a goal near where the robot stands."""
    counts = gen.counts
    await asyncio.sleep(rng.uniform(0, 3))  # not all the first missions at once
    while True:
        here = bot.marker
        if here is None or not bot.connected:
            await asyncio.sleep(0.1)
            continue
        goal = near(here)
        bot.goal, bot.arrived = goal, asyncio.Event()
        try:
            status = await api.post("/fleet/missions", {"robot": bot.name, "goal": goal})
        except PostFailed:
            counts.errors += 1
            await asyncio.sleep(1)
            continue
        if status == 409:  # corral has not closed the last one yet
            counts.refused += 1
            await asyncio.sleep(0.2)
            continue
        if status != 201:
            counts.errors += 1
            await asyncio.sleep(1)
            continue
        counts.missions += 1
        await bot.arrived.wait()
        counts.arrived += 1
