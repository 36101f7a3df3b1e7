"""A robot's socket keeps being read while a checkpoint waits for the store: telemetry is
handled at once, a ping after the checkpoint is answered once it is stored, and what was
read is handled even if the robot hangs up. A fake socket and a fake fleet whose
checkpoint waits on a gate (the real ones are in tests/integration/test_fleet.py)."""

import asyncio
import contextlib
import json
from types import SimpleNamespace
from typing import Any, cast

from starlette.websockets import WebSocketDisconnect

from corral.api.robot_session import RobotSession
from corral.core import Core
from corral.fleet.meter import FleetMeter


class FakeSocket:
    def __init__(self) -> None:
        self.incoming: asyncio.Queue[str | None] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        text = await self.incoming.get()
        if text is None:
            return {"type": "websocket.disconnect", "code": 1000}
        return {"type": "websocket.receive", "text": text}

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def say(self, **message: Any) -> None:
        self.incoming.put_nowait(json.dumps(message))


class FakeFleet:
    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.log: list[str] = []
        self.links = SimpleNamespace(attach=lambda name, channel: None)
        self.meter = FleetMeter()

    def robot(self, name: str) -> Any:
        return SimpleNamespace(signed=False, map="yard")

    async def known(self, name: str, fresh: bool = False) -> Any:
        return self.robot(name)

    def detach(self, name: str, channel: Any) -> None:
        return None

    def check_signature(self, name: str, message: dict[str, Any], seal: Any) -> None:
        return None

    async def seen(self, name: str) -> None:
        return None

    async def pending(self, name: str) -> list[dict[str, Any]]:
        return []

    async def ack(self, name: str, ids: list[Any]) -> None:
        self.log.append(f"ack {ids}")

    async def telemetry(self, name: str, message: dict[str, Any], infer: bool = True) -> None:
        self.log.append(f"telemetry {message['marker']} infer={infer}")

    async def checkpoint(self, name: str, message: dict[str, Any]) -> None:
        await self.gate.wait()
        self.log.append(f"checkpoint {message['marker']}")


def _connected() -> tuple[FakeSocket, FakeFleet, "asyncio.Task[None]"]:
    """A session of robot r1 running on a fake socket, its hello sent."""
    socket, fleet = FakeSocket(), FakeFleet()
    core = SimpleNamespace(fleet=fleet, settings=SimpleNamespace(robot_heartbeat_seconds=5))
    session = RobotSession(cast(Core, core), cast(Any, socket), "r1")
    running = asyncio.create_task(session.run())
    socket.say(type="hello", robot="r1")
    return socket, fleet, running


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_telemetry_is_read_while_a_checkpoint_waits_and_ping_waits_for_it() -> None:
    socket, fleet, running = _connected()
    socket.say(type="checkpoint", marker="m1")
    socket.say(type="telemetry", marker="m1")
    socket.say(type="ping")
    socket.say(type="telemetry", marker="m1")
    await _settle()
    assert fleet.log == ["telemetry m1 infer=False", "telemetry m1 infer=False"]
    assert [m["type"] for m in socket.sent] == ["welcome"], "no pong before the checkpoint"

    fleet.gate.set()
    await _settle()
    assert fleet.log[2:] == ["checkpoint m1"]
    assert [m["type"] for m in socket.sent] == ["welcome", "pong"]
    socket.say(type="telemetry", marker="m1")
    await _settle()
    assert fleet.log[-1] == "telemetry m1 infer=True", "no checkpoint on its way any more"
    socket.incoming.put_nowait(None)
    with contextlib.suppress(WebSocketDisconnect):  # how the endpoint learns it hung up
        await running


async def test_what_was_read_is_handled_after_the_robot_hangs_up() -> None:
    socket, fleet, running = _connected()
    socket.say(type="checkpoint", marker="m1")
    socket.say(type="ack", id=7)
    socket.incoming.put_nowait(None)
    await _settle()
    assert not running.done(), "the session waits for its checkpoint and ack"
    fleet.gate.set()
    with contextlib.suppress(WebSocketDisconnect):
        await running
    assert fleet.log == ["checkpoint m1", "ack [7]"]
