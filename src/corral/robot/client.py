"""`RobotClient`: a robot's WebSocket link to corral (docs/fleet-protocol.md), asyncio.

Runs on the robot (a Raspberry Pi) and in the simulator; needs only the standard library and
`websockets`. Reconnects by itself, de-duplicates commands, never loses a checkpoint.
"""

import asyncio
import json
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .errors import RobotRefused
from .messages import telemetry_fields
from .signing import sign

log = logging.getLogger(__name__)

CommandHandler = Callable[[dict[str, Any]], Awaitable[None]]
ConnectHook = Callable[[dict[str, Any]], None]

BACKOFF_MIN = 0.2  # seconds before the first reconnection attempt
BACKOFF_MAX = 5.0  # the backoff doubles up to this
DEFAULT_HEARTBEAT = 10.0  # until the server's welcome says otherwise
OPEN_TIMEOUT = 10.0  # TCP + WebSocket handshake, then again for the welcome
REMEMBERED_IDS = 4096  # handled command ids kept for de-duplication
HELLO_IDS = 256  # the newest of them, sent in `hello`
REFUSED_CODES = {"unauthorized", "forbidden"}
REFUSED_CLOSE = {4401: "unauthorized", 4403: "forbidden"}


class _Retry(Exception):
    """This connection went wrong in a way a new connection may fix."""


def ws_url(url: str) -> str:
    """corral's WebSocket endpoint for a base URL: http(s)://h:p[/prefix] -> ws(s)://…/fleet/ws.

    A ws:// or wss:// URL with a path is used as it is.
    """
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s):// or ws(s):// URL: {url!r}")
    path = parts.path.rstrip("/")
    if parts.scheme in ("http", "https") or not path:
        path += "/fleet/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class RobotClient:
    """One robot's connection to corral; `await run()` keeps it up until `close()`.

    `url` is corral's base URL (`http://host:port`), `name` the robot's registered name,
    `token` its bearer token, `key` its HMAC key (hex) when registered as signed.
    `heartbeat` (seconds) only ever shortens the server's: the client pings when it has
    sent nothing for a third of it.
    """

    def __init__(
        self,
        url: str,
        name: str,
        token: str,
        key: str | None = None,
        heartbeat: float | None = None,
    ) -> None:
        self.url = ws_url(url)
        self.name = name
        self.key = key
        self._token = token
        self._heartbeat_cap = heartbeat
        self.heartbeat: float = heartbeat or DEFAULT_HEARTBEAT
        self.welcome: dict[str, Any] | None = None  # the last welcome received
        self.sessions = 0  # welcomes received: connections that worked
        self._handler: CommandHandler | None = None
        self._handler_set = asyncio.Event()
        self._connect_hooks: list[ConnectHook] = []
        self._connected = asyncio.Event()
        self._closing = asyncio.Event()
        self._stopping = False  # close() was called: no more reconnections
        self._running = False
        self._conn: ClientConnection | None = None  # the open socket, welcomed or not
        self._ws: ClientConnection | None = None  # the socket once welcomed
        self._lock = asyncio.Lock()  # one writer at a time: counters and order hold
        self._n = 0  # signed mode: the counter of this connection
        self._nonce = ""  # signed mode: the nonce corral gave this connection
        self._last_sent = 0.0
        self._ping_at: float | None = None  # an unanswered ping went out then
        self._checkpoints: deque[dict[str, Any]] = deque()  # not yet written
        self._latest: dict[str, Any] | None = None  # the newest telemetry, replayed
        self._handled: OrderedDict[int, None] = OrderedDict()
        self._pending: set[int] = set()  # queued or in the handler now
        self._queue: deque[dict[str, Any]] = deque()
        self._queued = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- public API --------------------------------------------------------------------

    @property
    def connected(self) -> asyncio.Event:
        """Set while a welcomed connection is up; `await client.connected.wait()`."""
        return self._connected

    @property
    def reconnects(self) -> int:
        """How many times the link came back after the first connection."""
        return max(0, self.sessions - 1)

    @property
    def pending_checkpoints(self) -> int:
        """Checkpoints waiting for a connection."""
        return len(self._checkpoints)

    def on_command(self, handler: CommandHandler) -> CommandHandler:
        """Give commands to `handler` (`async def handler(command: dict) -> None`).

        The command is acknowledged when the handler returns; if it raises, it is not
        acknowledged and corral sends it again after the next reconnection. Commands are
        handled one at a time in order, except an `estop`, which is given to the handler
        at once, even while it works on another command. Usable as a decorator.
        """
        self._handler = handler
        self._handler_set.set()
        return handler

    def on_connect(self, hook: ConnectHook) -> ConnectHook:
        """Call `hook(welcome)` each time a connection is welcomed (first one and after)."""
        self._connect_hooks.append(hook)
        return hook

    async def telemetry(
        self,
        marker: str | None = None,
        lane: Sequence[str] | None = None,
        progress: float | None = None,
        distance: float | None = None,
        battery: float | None = None,
        status: str | None = None,
    ) -> bool:
        """Say where the robot is: at `marker`, or on `lane` [FROM, TO] at `progress` 0..1.

        Sent now if connected (True), else dropped (False); the newest one is sent again
        after each reconnection, so corral learns the position at once.
        """
        message: dict[str, Any] = {
            "type": "telemetry",
            **telemetry_fields(marker, lane, progress, distance, battery, status),
        }
        self._latest = message
        return await self._send(message)

    async def checkpoint(self, marker: str, **extra: Any) -> bool:
        """Report reaching `marker`. Never dropped: queued while disconnected and sent, in
        order, before anything else after the reconnection. True if written now."""
        self._checkpoints.append({"type": "checkpoint", "marker": marker, **extra})
        return await self._send(None)

    async def run(self) -> None:
        """Connect, and stay connected (reconnecting with backoff) until `close()`.

        Raises `RobotRefused` when corral refuses the credential; returns after `close()`.
        """
        if self._running:
            raise RuntimeError("RobotClient.run() is already running")
        self._running = True
        worker = asyncio.create_task(self._work())
        linker = asyncio.create_task(self._link())
        closing = asyncio.create_task(self._closing.wait())
        try:
            await asyncio.wait({linker, closing}, return_when=asyncio.FIRST_COMPLETED)
            if linker.done():
                linker.result()  # RobotRefused
        finally:
            for task in (linker, closing, worker, *self._tasks):
                task.cancel()
            await asyncio.gather(linker, closing, worker, *self._tasks, return_exceptions=True)
            self._connected.clear()
            self._ws = self._conn = None
            self._running = False

    async def close(self) -> None:
        """Close the connection and stop `run()` (it returns); no reconnection after."""
        self._stopping = True
        conn = self._conn
        if conn is not None:
            with suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)
        self._closing.set()

    def drop_connection(self) -> bool:
        """Cut the current connection abruptly (no closing handshake), as a network failure
        would; the client reconnects by itself. For tests and the simulator."""
        conn = self._conn
        if conn is None:
            return False
        transport = conn.transport
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
        else:
            transport.close()
        return True

    # -- connection --------------------------------------------------------------------

    async def _link(self) -> None:
        delay = BACKOFF_MIN
        while not self._stopping:
            before = self.sessions
            try:
                await self._connection()
            except RobotRefused:
                raise
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    raise RobotRefused(f"http {status}", str(exc)) from None
                log.info("robot %s: %s", self.name, exc)
            except (_Retry, ConnectionClosed, OSError, TimeoutError) as exc:
                log.info("robot %s: connection lost: %s", self.name, exc or type(exc).__name__)
            except Exception as exc:  # keep the robot's link up whatever went wrong
                log.warning("robot %s: connection failed: %r", self.name, exc)
            if self.sessions > before:
                delay = BACKOFF_MIN
            if self._stopping:
                return
            pause = delay * random.uniform(0.75, 1.25)
            delay = min(delay * 2, BACKOFF_MAX)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), pause)

    async def _connection(self) -> None:
        async with connect(
            self.url,
            additional_headers={"Authorization": f"Bearer {self._token}"},
            open_timeout=OPEN_TIMEOUT,
            compression=None,  # small messages: deflate costs more than it saves
            close_timeout=2.0,
        ) as conn:
            self._conn = conn
            try:
                await self._session(conn)
            except ConnectionClosed as exc:
                self._check_close(exc.rcvd.code if exc.rcvd else conn.close_code)
                raise
            finally:
                self._connected.clear()
                self._ws = None
                self._conn = None

    async def _session(self, conn: ClientConnection) -> None:
        if self.key is not None:  # signed: corral's first word is this connection's nonce
            challenge = self._decode(await asyncio.wait_for(conn.recv(), OPEN_TIMEOUT))
            if challenge.get("type") == "error":
                self._check_error(challenge)
            nonce = challenge.get("nonce")
            if challenge.get("type") != "challenge" or not isinstance(nonce, str):
                raise _Retry(f"expected a challenge, got {str(challenge)[:200]}")
            self._nonce = nonce
        hello: dict[str, Any] = {"type": "hello", "robot": self.name}
        if self._handled:
            hello["acked"] = list(self._handled)[-HELLO_IDS:]
        async with self._lock:
            self._n = 0
            await self._write(conn, hello)
        reply = self._decode(await asyncio.wait_for(conn.recv(), OPEN_TIMEOUT))
        if reply.get("type") == "error":
            self._check_error(reply)
        if reply.get("type") != "welcome":
            raise _Retry(f"expected welcome, got {str(reply)[:200]}")
        self.welcome = reply
        server_heartbeat = reply.get("heartbeat")
        beat = float(server_heartbeat) if isinstance(server_heartbeat, int | float) else 0.0
        beat = beat if beat > 0 else DEFAULT_HEARTBEAT
        self.heartbeat = min(beat, self._heartbeat_cap or beat)
        self._ping_at = None
        async with self._lock:
            self._ws = conn
            await self._flush(conn)
            if self._latest is not None:
                await self._write(conn, self._latest)
        self.sessions += 1
        self._connected.set()
        for hook in self._connect_hooks:
            try:
                hook(reply)
            except Exception:
                log.exception("robot %s: on_connect hook failed", self.name)
        pinger = asyncio.create_task(self._pinger(conn))
        try:
            async for raw in conn:
                self._ping_at = None
                await self._receive(self._decode(raw))
        finally:
            pinger.cancel()
            with suppress(asyncio.CancelledError):
                await pinger
        self._check_close(conn.close_code)

    def _decode(self, raw: str | bytes) -> dict[str, Any]:
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("robot %s: not JSON from corral: %r", self.name, raw[:200])
            return {}
        return message if isinstance(message, dict) else {}

    def _check_error(self, message: dict[str, Any]) -> None:
        code = str(message.get("code"))
        if code in REFUSED_CODES:
            raise RobotRefused(code, str(message.get("message") or ""))
        log.warning("robot %s: corral says %s: %s", self.name, code, message.get("message"))

    def _check_close(self, code: int | None) -> None:
        if code in REFUSED_CLOSE:
            raise RobotRefused(REFUSED_CLOSE[code], f"connection closed with code {code}")

    async def _receive(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "command":
            await self._command(message)
        elif kind == "error":
            self._check_error(message)

    async def _pinger(self, conn: ClientConnection) -> None:
        """Ping when nothing went out for heartbeat/3; cut a link whose ping goes unanswered
        for a whole heartbeat (a Wi-Fi drop can leave TCP hanging for minutes)."""
        while True:
            interval = self.heartbeat / 3
            now = time.monotonic()
            if self._ping_at is not None and now - self._ping_at > self.heartbeat:
                log.info("robot %s: no answer for %.1f s, reconnecting", self.name, self.heartbeat)
                self.drop_connection()
                return
            idle = now - self._last_sent
            if idle >= interval:
                if self._ping_at is None:
                    self._ping_at = now
                await self._send({"type": "ping"})
                idle = 0.0
            await asyncio.sleep(interval - idle)

    # -- sending -----------------------------------------------------------------------

    async def _send(self, message: dict[str, Any] | None) -> bool:
        """Write pending checkpoints, then `message`, if connected; True if all went out."""
        async with self._lock:
            conn = self._ws
            if conn is None:
                return False
            try:
                if self._checkpoints:
                    await self._flush(conn)
                if message is not None:
                    await self._write(conn, message)
            except ConnectionClosed:
                return False
            return True

    async def _flush(self, conn: ClientConnection) -> None:
        while self._checkpoints:
            await self._write(conn, self._checkpoints[0])
            self._checkpoints.popleft()

    async def _write(self, conn: ClientConnection, message: dict[str, Any]) -> None:
        if self.key is not None:
            self._n += 1
            message = sign(message, self.key, self._n, self._nonce)
        await conn.send(_encode(message))
        self._last_sent = time.monotonic()

    # -- commands ----------------------------------------------------------------------

    async def _command(self, command: dict[str, Any]) -> None:
        cid = command.get("id")
        if not isinstance(cid, int):
            log.warning("robot %s: command without an id: %r", self.name, command)
            return
        if cid in self._handled:
            await self._send({"type": "ack", "id": cid})  # again: the first ack was lost
            return
        if cid in self._pending:
            return  # a re-sent copy of one not handled yet; acked when it is
        self._pending.add(cid)
        if command.get("kind") == "estop":
            task = asyncio.create_task(self._dispatch(command))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._queue.append(command)
            self._queued.set()

    async def _work(self) -> None:
        while True:
            await self._queued.wait()
            while self._queue:
                await self._dispatch(self._queue.popleft())
            self._queued.clear()

    async def _dispatch(self, command: dict[str, Any]) -> None:
        cid: int = command["id"]
        await self._handler_set.wait()
        handler = self._handler
        assert handler is not None
        try:
            await handler(command)
        except Exception:
            log.exception("robot %s: handler failed on command %s", self.name, cid)
            self._pending.discard(cid)
            return
        self._pending.discard(cid)
        self._handled[cid] = None
        while len(self._handled) > REMEMBERED_IDS:
            self._handled.popitem(last=False)
        await self._send({"type": "ack", "id": cid})
