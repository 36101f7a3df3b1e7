"""A robot for fault tests, written from docs/fleet-protocol.md alone (it imports nothing of
corral): one raw WebSocket, hello with the ids it has handled, acks every command, drives
each granted move along its lane in a set time and checkpoints at its end, reconnects
whenever the socket ends (1012 at a leader's loss, 4503, 4408, a refused connection).

It records what a user would check: every command it received (with redeliveries of ids it
had handled), where it stood at each report (to find two robots on one marker or lane), and
moves that do not start where the robot stands (a doubled or stale grant).
"""

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import websockets

Spot = tuple[str, str]  # ("marker", id) or ("lane", "A|B" with A < B)


def lane_spot(a: str, b: str) -> Spot:
    return ("lane", "|".join(sorted((a, b))))


@dataclass
class Ledger:
    """What every robot of a test saw, shared by them (one event loop: no lock needed)."""

    where: dict[str, Spot] = field(default_factory=dict)
    shared: list[str] = field(default_factory=list)  # two robots on one spot
    commands: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    redelivered: int = 0
    stale_moves: list[str] = field(default_factory=list)

    def stand(self, robot: str, spot: Spot) -> None:
        self.where[robot] = spot
        others = sorted(r for r, s in self.where.items() if s == spot and r != robot)
        if others:
            self.shared.append(f"{robot} and {others} on {spot}")

    def doubled_moves(self) -> list[str]:
        """Distinct commands that grant the same step of the same mission."""
        out = []
        for robot, received in self.commands.items():
            seen: dict[tuple[Any, ...], int] = {}
            for command in received:
                if command.get("kind") != "move":
                    continue
                step = (command.get("mission"), command.get("marker"), tuple(command["lane"]))
                if step in seen and seen[step] != command["id"]:
                    out.append(f"{robot}: commands {seen[step]} and {command['id']} both {step}")
                seen.setdefault(step, command["id"])
        return out


class PeerRobot:
    def __init__(
        self,
        url: str,
        name: str,
        token: str,
        start: str,
        ledger: Ledger,
        lane_seconds: float = 0.25,
        also: tuple[str, ...] = (),
    ) -> None:
        # where it connects: `url`, and after a connection that ends or fails the next of
        # `also` in turn (a robot that knows several corral replicas)
        self.urls = [u.replace("http://", "ws://").rstrip("/") + "/fleet/ws" for u in (url, *also)]
        self.url = self.urls[0]
        self.gaps: list[float] = []  # seconds from a connection's end to the next welcome
        self.ended_at: float | None = None
        self.name, self.token, self.ledger = name, token, ledger
        self.lane_seconds = lane_seconds
        self.marker = start  # where it stands, or where its lane ends while driving
        self.handled: set[int] = set()
        self.moves: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.planned_end = start  # where the last queued move ends
        self.driving = start  # the end of the lane it is on
        self.connections = 0
        self.socket: Any = None
        ledger.commands[name] = []
        ledger.stand(name, ("marker", start))

    async def run(self, stop: asyncio.Event) -> None:
        driver = asyncio.create_task(self._drive(stop))
        try:
            while not stop.is_set():
                with contextlib.suppress(OSError, websockets.WebSocketException, TimeoutError):
                    await self._session(stop)
                if self.ended_at is None:
                    self.ended_at = time.monotonic()
                self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]
                await asyncio.sleep(0.2)
        finally:
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driver

    async def _send(self, message: dict[str, Any]) -> None:
        if self.socket is not None:
            with contextlib.suppress(websockets.WebSocketException):
                await self.socket.send(json.dumps(message))

    async def _session(self, stop: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with websockets.connect(self.url, additional_headers=headers, open_timeout=5) as ws:
            await ws.send(
                json.dumps({"type": "hello", "robot": self.name, "acked": sorted(self.handled)})
            )
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if welcome.get("type") != "welcome":
                return
            self.connections += 1
            if self.ended_at is not None:
                self.gaps.append(time.monotonic() - self.ended_at)
                self.ended_at = None
            self.socket = ws
            beat = asyncio.create_task(self._beat(stop))
            try:
                async for raw in ws:
                    message = json.loads(raw)
                    if message.get("type") == "command":
                        await self._command(message)
            finally:
                self.socket = None
                beat.cancel()

    async def _command(self, command: dict[str, Any]) -> None:
        await self._send({"type": "ack", "id": command["id"]})
        if command["id"] in self.handled:  # at least once: a redelivery, ignored
            self.ledger.redelivered += 1
            return
        self.handled.add(command["id"])
        self.ledger.commands[self.name].append(command)
        if command.get("kind") == "move":
            start, end = command["lane"]
            if start != self.planned_end:
                self.ledger.stale_moves.append(
                    f"{self.name} told to drive {start}->{end} but it will be at "
                    f"{self.planned_end} (command {command['id']}, mission "
                    f"{command.get('mission')}; it had {self.ledger.commands[self.name][-6:-1]})"
                )
                return
            self.planned_end = end
            await self.moves.put(command)

    async def _beat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._report()
            await asyncio.sleep(0.3)

    async def _report(self) -> None:
        spot = self.ledger.where[self.name]
        if spot[0] == "marker":
            await self._send({"type": "telemetry", "marker": spot[1], "lane": None})
        else:
            await self._send(
                {"type": "telemetry", "marker": None, "lane": [self.marker, self.driving]}
            )

    async def _drive(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            move = await self.moves.get()
            start, end = move["lane"]
            self.driving = end
            self.ledger.stand(self.name, lane_spot(start, end))
            await self._report()
            await asyncio.sleep(self.lane_seconds)
            self.marker = end
            self.ledger.stand(self.name, ("marker", end))
            await self._send({"type": "checkpoint", "marker": end})
            await self._report()
