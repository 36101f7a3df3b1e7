"""Each robot's live link, in memory: the open socket (if any), when it was last heard,
its latest telemetry, the signature counter, and a wake-up for HTTP long polls.

Owned by the fleet service; nothing here is stored (telemetry is too frequent to write).
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Sender = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Link:
    send: Sender | None = None
    last_seen: float = 0.0
    online: bool = False
    telemetry: dict[str, Any] = field(default_factory=dict)
    counter: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    heard_at: float = 0.0  # wall clock, for people

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

    def attach(self, robot: str, send: Sender) -> Link:
        link = self.get(robot)
        link.send = send
        link.counter = 0
        link.heard()
        return link

    def detach(self, robot: str, send: Sender) -> None:
        link = self.by_robot.get(robot)
        if link is not None and link.send is send:
            link.send = None

    def forget(self, robot: str) -> None:
        self.by_robot.pop(robot, None)

    async def push(self, robot: str, message: dict[str, Any]) -> bool:
        """Send on the robot's socket if it has one; wake its long poll either way."""
        link = self.get(robot)
        link.arrived.set()
        if link.send is None:
            return False
        try:
            await link.send(message)
        except Exception:  # a socket that broke under us: the robot gets it on reconnect
            link.send = None
            return False
        return True
