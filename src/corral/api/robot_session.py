"""One robot's WebSocket: its token checked (`serve_robot`), then hello and its messages,
in order, over any socket that reads like Starlette's (`RobotSocket`).

The socket is read all the time: checkpoints and acks, which wait for their batch to be
stored, go to the session's own worker (in the order they came, a ping after them too, so
its pong says they are stored); telemetry is handled at once, so a busy store never leaves
a robot's reports or keepalives unread.
"""

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast, runtime_checkable

import structlog
from starlette.websockets import WebSocketDisconnect

from corral.core import Core
from corral.errors import CorralError, Forbidden, Invalid
from corral.fleet.links import Seal

log = structlog.get_logger("corral.fleet")

MAX_MESSAGE = 65_536  # bytes of one message
QUEUED = 64  # checkpoints and acks waiting for the worker; past it, reading waits too
STORED_KINDS = ("checkpoint", "ack")  # answered once stored, by the worker
SILENT_CLOSE = 4408  # the close code for a robot silent for a whole heartbeat


class RobotSocket(Protocol):
    """What a session needs of its socket: Starlette's WebSocket (after accept) and the
    lean `/fleet/ws` socket (robot_ws.RobotWebSocket) both are one. `receive` gives
    ASGI-shaped messages: `websocket.receive` with `text` or `bytes`, and at the end
    `websocket.disconnect` with its `code`."""

    async def receive(self) -> Mapping[str, Any]: ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


@runtime_checkable
class QuickSocket(Protocol):
    """A socket that can hand a text message to the session as it is read (robot_ws's):
    `quick(text)` True means handled, with no wake-up of the session's task; False, that
    it goes to `receive` as usual."""

    quick: Callable[[str], bool] | None


async def serve_robot(
    core: Core, websocket: RobotSocket, authorization: str, query_token: str | None
) -> None:
    """An accepted robot socket: its token (the Authorization header's bearer, else the
    `token` query parameter) checked, then its session until it ends."""
    secret = authorization[7:] if authorization.lower().startswith("bearer ") else None
    secret = secret or query_token
    try:
        caller = await core.access.identify(secret)
    except CorralError as exc:
        await refuse(websocket, "unauthorized", exc.message, 4401)
        return
    if caller.role != "robot":
        await refuse(websocket, "forbidden", "this channel is for robot tokens", 4403)
        return
    with contextlib.suppress(WebSocketDisconnect):
        await RobotSession(core, websocket, caller.subject).run()


async def refuse(websocket: RobotSocket, code: str, message: str, close: int) -> None:
    """Say why in an error message, then close with the given code."""
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps({"type": "error", "code": code, "message": message}))
        await websocket.close(close)


class RobotSession:
    kind = "websocket"  # the fleet's Channel protocol

    def __init__(self, core: Core, websocket: RobotSocket, name: str) -> None:
        self.core, self.websocket, self.name = core, websocket, name
        self.counts = core.fleet.meter.websocket  # bound once: each message bumps it
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUED)
        self.stored_pending = 0  # checkpoints and acks read but not yet handled
        self.gone = False  # the robot hung up: what is left is handled without answers
        self.seal = Seal()  # this connection's nonce and counter (signed robots)
        self.watch: asyncio.TimerHandle | None = None  # the silence watchdog's next look
        self.reader: asyncio.Task[Any] | None = None  # the task that reads the socket
        self.reading = False  # it waits for a frame now, since `read_since`
        self.read_since = 0.0
        self.silent = False  # the watchdog cut it: a heartbeat without a frame

    async def send(self, message: dict[str, Any]) -> None:
        await self.websocket.send_text(json.dumps(message))
        self.counts.sent += 1

    async def close(self, code: str, message: str, close: int) -> None:
        await refuse(self.websocket, code, message, close)

    async def run(self) -> None:
        """The session until the socket ends; the robot's link forgets it then, at once."""
        try:
            if await self._greet():
                await self._serve()
        finally:
            if self.watch is not None:
                self.watch.cancel()
                self.watch = None
            self.core.fleet.detach(self.name, self)

    async def _serve(self) -> None:
        worker = asyncio.create_task(self._work(), name=f"robot {self.name}")
        quick = isinstance(self.websocket, QuickSocket)
        if quick:
            cast(QuickSocket, self.websocket).quick = self._quick
        try:
            while True:
                message = await self._next()
                try:
                    # Signatures are checked as read: their counter must grow in that order.
                    self.core.fleet.check_signature(self.name, message, self.seal)
                except CorralError as exc:
                    await self._refused(exc)
                    continue
                kind = message.get("type")
                if kind in STORED_KINDS or (kind == "ping" and self.stored_pending):
                    # A ping after checkpoints or acks is answered once they are stored.
                    self.stored_pending += 1
                    await self.queue.put(message)
                else:
                    await self._answer(message)
        finally:
            if quick:
                cast(QuickSocket, self.websocket).quick = None
            # What was read is handled even when the socket is gone: nothing is lost.
            self.gone = True
            await self.queue.put(None)
            await worker

    async def _greet(self) -> bool:
        """A signed robot's challenge; the hello: the right robot, a valid signature; then
        welcome and what is open."""
        fleet = self.core.fleet
        try:
            signed = (await fleet.known(self.name, fresh=True)).signed
        except CorralError as exc:
            await refuse(self.websocket, "forbidden", exc.message, 4403)
            return False
        if signed:
            await self.send({"type": "challenge", "nonce": self.seal.nonce})
        hello = await self._next()
        if hello.get("type") != "hello":
            await refuse(self.websocket, "protocol", "the first message must be hello", 4400)
            return False
        if hello.get("robot") != self.name:
            await refuse(
                self.websocket,
                "forbidden",
                f"this token belongs to robot {self.name}, not {hello.get('robot')!r}",
                4403,
            )
            return False
        try:
            fleet.check_signature(self.name, hello, self.seal)
        except CorralError as exc:
            await refuse(self.websocket, "bad_signature", exc.message, 4403)
            return False
        fleet.links.attach(self.name, self)
        await fleet.seen(self.name)
        row = fleet.robot(self.name)
        await self.send(
            {
                "type": "welcome",
                "robot": self.name,
                "heartbeat": self.core.settings.robot_heartbeat_seconds,
                "signed": row.signed,
                "map": row.map,
            }
        )
        acked = hello.get("acked")
        if isinstance(acked, list):
            with contextlib.suppress(CorralError):
                ids = [i for i in acked if isinstance(i, int)]
                await fleet.ack(self.name, ids, known=False)  # its memory may be older
        for command in await fleet.pending(self.name):
            await self.send(command)
        return True

    async def _receive(self) -> str | None:
        """The next frame's text (None for a binary frame); a robot silent for a whole
        heartbeat is gone (a link dropped without a word): the socket is closed. The
        session's watchdog timer (`_watch`, re-armed about once a heartbeat) sees to that,
        not a timeout per read (one per message cost 8% of a replica's CPU)."""
        loop = asyncio.get_running_loop()
        if self.watch is None:
            self.reader = asyncio.current_task()
            self.watch = loop.call_later(self.core.settings.robot_heartbeat_seconds, self._watch)
        self.read_since = loop.time()
        self.reading = True
        try:
            frame = await self.websocket.receive()
        except asyncio.CancelledError:
            if not self.silent or self.reader is None:
                raise
            self.reader.uncancel()
            heartbeat = self.core.settings.robot_heartbeat_seconds
            await self.close("timeout", f"nothing heard for {heartbeat:g} s", SILENT_CLOSE)
            raise WebSocketDisconnect(SILENT_CLOSE) from None
        finally:
            self.reading = False
        if frame["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(frame.get("code", 1000))
        self.counts.received += 1
        text = frame.get("text")
        return text if isinstance(text, str) else None

    def _quick(self, text: str) -> bool:
        """A telemetry report handled as the socket reads it, while this session's task
        waits for a message: most of a robot's traffic then costs no task wake-up. What
        is not plain telemetry, or needs an await (`Fleet.telemetry_now`), goes the usual
        way, through `receive`, in order."""
        if len(text) > MAX_MESSAGE:
            return False
        try:
            message = json.loads(text)
        except ValueError:
            return False
        if not isinstance(message, dict) or message.get("type") != "telemetry":
            return False
        if not self.core.fleet.telemetry_now(self.name, message, self.stored_pending == 0):
            return False
        self.read_since = asyncio.get_running_loop().time()  # heard: the watchdog sees it
        counts = self.counts
        counts.received += 1
        counts.telemetry += 1
        return True

    def _watch(self) -> None:
        """The watchdog: a read that waited a whole heartbeat is cancelled (the socket is
        closed as silent); else it looks again when the current read's heartbeat ends."""
        heartbeat = self.core.settings.robot_heartbeat_seconds
        loop = asyncio.get_running_loop()
        delay = heartbeat
        if self.reading:
            delay = self.read_since + heartbeat - loop.time()
            if delay <= 0 and self.reader is not None:
                self.silent = True
                self.watch = None
                self.reader.cancel()
                return
        self.watch = loop.call_later(max(delay, 0.01), self._watch)

    async def _next(self) -> dict[str, Any]:
        """The next message that is a JSON object; what is not gets an error, and is skipped."""
        while True:
            text = await self._receive()
            if text is None:
                await self.send(
                    {"type": "error", "code": "invalid", "message": "messages are text frames"}
                )
                continue
            if len(text) > MAX_MESSAGE:
                await self.send({"type": "error", "code": "too_large", "message": "too large"})
                continue
            try:
                message = json.loads(text)
            except ValueError:
                await self.send(
                    {"type": "error", "code": "invalid", "message": "the message is not JSON"}
                )
                continue
            if not isinstance(message, dict):
                await self.send(
                    {"type": "error", "code": "invalid", "message": "a message is a JSON object"}
                )
                continue
            return message

    async def _work(self) -> None:
        """Checkpoints and acks, one at a time in the order read, each until stored."""
        while (message := await self.queue.get()) is not None:
            try:
                await self._answer(message)
            except Exception:  # one bad message must not stop the robot's later ones
                if self.gone:  # an answer (a pong) to a robot that hung up: nothing to say
                    continue
                log.exception("robot message failed", robot=self.name, kind=message.get("type"))
                with contextlib.suppress(Exception):
                    await self.send(
                        {"type": "error", "code": "internal", "message": "corral failed on it"}
                    )
            finally:
                self.stored_pending -= 1

    async def _answer(self, message: dict[str, Any]) -> None:
        """Handle one message; a refusal goes back to the robot as an error message."""
        try:
            await self._handle(message)
        except CorralError as exc:
            await self._refused(exc)

    async def _refused(self, exc: CorralError) -> None:
        code = exc.detail.get("code") if isinstance(exc.detail, dict) else None
        with contextlib.suppress(Exception):  # the socket may be gone by now
            await self.send({"type": "error", "code": code or exc.code, "message": exc.message})

    async def _handle(self, message: dict[str, Any]) -> None:
        fleet = self.core.fleet
        kind = message.get("type")
        if kind == "telemetry":
            # While a checkpoint is on its way, a report of standing on that marker is
            # not a lost checkpoint: let the worker's own checkpoint decide.
            await fleet.telemetry(self.name, message, infer=self.stored_pending == 0)
            self.counts.telemetry += 1
        elif kind == "checkpoint":
            await fleet.checkpoint(self.name, message)
        elif kind == "ack":
            await fleet.ack(self.name, [message.get("id")])
        elif kind == "ping":
            await fleet.seen(self.name)
            await self.send({"type": "pong"})
        elif kind == "hello":
            if message.get("robot") != self.name:
                raise Forbidden(
                    f"this socket is robot {self.name}'s, not {message.get('robot')!r}'s",
                    {"code": "forbidden"},
                )
            await fleet.seen(self.name)
        else:
            raise Invalid(f"unknown message type {kind!r}", {"code": "invalid"})
