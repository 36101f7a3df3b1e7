"""Each robot's live link, in memory: the open socket (if any), when it was last heard,
its latest telemetry, the HTTP channel's signature seal, and a wake-up for HTTP long polls.

Owned by the fleet service; nothing here is stored (telemetry is too frequent to write).
A robot held by another replica has a link here too, fed by that replica's batches.
"""

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from corral.robot.signing import new_nonce

ELSEWHERE = 3.0  # seconds another replica's word that it holds a robot lasts


class Channel(Protocol):
    """A robot's open socket, as the fleet sees it."""

    @property
    def kind(self) -> str:
        """The channel's name in metrics: websocket, vda5050."""

    async def send(self, message: dict[str, Any]) -> None: ...

    async def close(self, code: str, message: str, close: int) -> None:
        """Say why in an error message, then close with the WebSocket code `close`."""


@dataclass
class Seal:
    """One signed channel's guard against replays: the nonce corral gave it (every
    signature covers it) and the last counter taken under that nonce."""

    nonce: str = field(default_factory=new_nonce)
    counter: int = 0


@dataclass
class Link:
    channel: Channel | None = None  # the open socket, while there is one
    polls: int = 0  # HTTP long polls waiting now
    last_seen: float = 0.0
    online: bool = False
    telemetry: dict[str, Any] = field(default_factory=dict)
    http_seal: Seal | None = None  # the HTTP channel's, from its last nonce request
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    heard_at: float = 0.0  # wall clock, for people
    elsewhere: str | None = None  # the other replica that holds its socket or poll
    elsewhere_at: float = 0.0  # when that replica last said so (monotonic)

    @property
    def connected(self) -> bool:
        """A socket is open or a long poll is waiting (here, or on the replica that said
        so lately): the robot hears commands now."""
        if self.channel is not None or self.polls > 0:
            return True
        return self.elsewhere is not None and time.monotonic() - self.elsewhere_at < ELSEWHERE

    def heard(self) -> None:
        self.last_seen = time.monotonic()
        self.heard_at = time.time()


class Links:
    def __init__(self) -> None:
        self.by_robot: dict[str, Link] = {}

    def get(self, robot: str) -> Link:
        link = self.by_robot.get(robot)
        if link is None:
            link = self.by_robot[robot] = Link()
        return link

    def attach(self, robot: str, channel: Channel) -> Link:
        link = self.get(robot)
        link.channel = channel
        link.heard()
        return link

    def detach(self, robot: str, channel: Channel) -> bool:
        """The socket ended; a newer one of the same robot stays. True if it was the one."""
        link = self.by_robot.get(robot)
        if link is not None and link.channel is channel:
            link.channel = None
            return True
        return False

    async def cut(self, robot: str, code: str, message: str, close: int) -> None:
        """Close the robot's socket, if it has one, saying why (its credential ended)."""
        link = self.by_robot.get(robot)
        channel = link.channel if link else None
        if link is not None and channel is not None:
            link.channel = None
            with contextlib.suppress(Exception):  # already gone: nothing to tell
                await channel.close(code, message, close)

    def connected(self) -> dict[str, int]:
        """Robots connected now by channel (a socket's kind, `http` for a long poll
        waiting); read at each metrics scrape."""
        out: dict[str, int] = {}
        for link in self.by_robot.values():
            kind = link.channel.kind if link.channel is not None else "http" if link.polls else None
            if kind is not None:
                out[kind] = out.get(kind, 0) + 1
        return out

    async def forget(self, robot: str) -> None:
        await self.cut(robot, "unauthorized", f"robot {robot} was removed", 4401)
        self.by_robot.pop(robot, None)

    async def push(self, robot: str, message: dict[str, Any]) -> bool:
        """Send on the robot's socket if it has one; wake its long poll either way."""
        link = self.get(robot)
        link.arrived.set()
        channel = link.channel
        if channel is None:
            return False
        try:
            await channel.send(message)
        except Exception:  # a socket that broke under us: the robot gets it on reconnect
            if link.channel is channel:
                link.channel = None
            return False
        return True
