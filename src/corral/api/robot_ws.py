"""The robots' WebSocket `/fleet/ws` served straight off uvicorn's transport (RFC 6455,
server side): whole messages handed to the robot's session, no ASGI in between.

`robot_websockets(core)` is the protocol class given to uvicorn as `ws=`: uvicorn's HTTP
protocol builds it for every upgrade request and feeds it the request. An upgrade to
`/fleet/ws` (on corral's own port) is answered here: the handshake, masked client frames
parsed as they are read, fragments joined, ping answered with pong, the close handshake,
the size limit (uvicorn's `ws_max_size`), text checked as UTF-8. Every message of one read
goes to the session in one wake-up of its task (uvicorn's own protocol wakes it, and pauses
and resumes reading, once per frame). Any other upgrade is handed, untouched, to uvicorn's
standard WebSocket protocol and so to the ASGI app. No compression is offered (robot
messages are small; the Python client never asked for it) and the server sends no pings:
a robot's silence is the session's watchdog's business (RobotSession).
"""

import asyncio
import base64
import hashlib
import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

import structlog
from uvicorn.config import Config
from uvicorn.server import ServerState

from corral.api.robot_session import serve_robot
from corral.core import Core

log = structlog.get_logger("corral.fleet")
access = logging.getLogger("uvicorn.error")  # where uvicorn logs each WebSocket it accepts

PATH = "/fleet/ws"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3
MAX_REQUEST = 65_536  # bytes of the upgrade request's head
INBOX_HIGH = 64  # messages read but not taken by the session: past it, reading pauses
CLOSE_TIMEOUT = 10.0  # seconds the peer has to answer our close frame
STALL_TIMEOUT = 20.0  # seconds a full write buffer may stay full before the link is cut
ZERO_MASK = b"\0\0\0\0"
# Close codes a peer may send (RFC 6455 7.4.1, and IANA's 1012-1014); others are 1002.
VALID_CLOSE = frozenset((1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)))

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    digest = hashlib.sha1(key.encode() + GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (a server never masks, 5.1)."""
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, size)) + payload
    if size < 65_536:
        return bytes((0x80 | opcode, 126)) + struct.pack("!H", size) + payload
    return bytes((0x80 | opcode, 127)) + struct.pack("!Q", size) + payload


def close_frame(code: int | None) -> bytes:
    return server_frame(CLOSE, b"" if code is None else struct.pack("!H", code))


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """The payload XOR the 4-byte key repeated (5.3), as one big-integer XOR."""
    size = len(payload)
    if mask == ZERO_MASK:
        return bytes(payload)
    key = (bytes(mask) * (size // 4 + 1))[:size]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return value.to_bytes(size, "big")


class ProtocolFault(Exception):
    """The peer broke RFC 6455: the connection is failed with this close code."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


class Request:
    """An upgrade request's head as uvicorn passed it on."""

    def __init__(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise ValueError("bad request line")
        self.method, self.target, self.version = parts
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError("bad header line")
            self.headers.append((name.strip().lower(), value.strip()))
        raw_path, _, self.query = self.target.partition("?")
        self.path = unquote(raw_path)

    def header(self, name: str) -> str | None:
        """The first value of a header (as Starlette's `headers.get`)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def tokens(self, name: str) -> list[str]:
        """A comma-separated header's tokens, lowercased, over all its lines."""
        return [
            token.strip().lower()
            for key, value in self.headers
            if key == name
            for token in value.split(",")
        ]

    def query_value(self, name: str) -> str | None:
        """A query parameter's last value (as Starlette's `query_params.get`)."""
        found = None
        for key, value in parse_qsl(self.query, keep_blank_values=True):
            if key == name:
                found = value
        return found


def handshake_error(request: Request) -> tuple[int, str] | None:
    """Why the request is not a WebSocket opening handshake (4.2.1), or None."""
    if request.method != "GET" or request.version != "HTTP/1.1":
        return 400, "a WebSocket opens with GET over HTTP/1.1"
    if request.header("host") is None:
        return 400, "no Host header"
    if "websocket" not in request.tokens("upgrade"):
        return 400, "Upgrade is not websocket"
    if "upgrade" not in request.tokens("connection"):
        return 400, "Connection does not say Upgrade"
    if request.header("sec-websocket-version") != "13":
        return 426, "only WebSocket version 13 is spoken here"
    key = request.header("sec-websocket-key") or ""
    try:
        raw = base64.b64decode(key, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        return 400, "Sec-WebSocket-Key is not 16 bytes in base64"
    return None


def http_answer(status: int, reason: str, text: str, extra: str = "") -> bytes:
    body = (text + "\n").encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    ).encode() + body


class RobotWebSocket(asyncio.Protocol):
    """One upgraded connection: the robot's socket, or a hand-over to `fallback`.

    To the session it is a socket like Starlette's: `receive()` gives ASGI-shaped
    messages (`websocket.receive` with `text` or `bytes`, then one `websocket.disconnect`),
    `send_text`, `close(code)`."""

    core: Core  # set on the class `robot_websockets` makes
    fallback: type[asyncio.Protocol]  # uvicorn's own WebSocket protocol

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config, self.server_state, self.app_state = config, server_state, app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.max_size = config.ws_max_size
        self.transport: asyncio.Transport | None = None
        self.head = b""  # the upgrade request until its end is read
        self.open = False  # the handshake was answered with 101
        self.buffer = bytearray()  # the start of a frame not read whole yet
        self.need = 0  # bytes `buffer` must hold before a frame can be parsed
        self.fragments: list[bytes] = []  # a fragmented message's frames so far
        self.fragmented: int | None = None  # that message's opcode (TEXT or BINARY)
        self.fragmented_size = 0
        self.inbox: deque[dict[str, Any]] = deque()  # messages for the session
        self.waiter: asyncio.Future[None] | None = None  # the session waits for a message
        self.ended = False  # the disconnect is in `inbox`: nothing more is delivered
        self.close_sent = False
        self.read_paused = False
        self.writable: asyncio.Future[None] | None = None  # set while writing is paused
        self.close_timer: asyncio.TimerHandle | None = None
        self.stall_timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        # The session's hand for a text message read while it waits and nothing is queued
        # before it (robot_session.QuickSocket): True when it took the message.
        self.quick: Callable[[str], bool] | None = None

    # ------------------------------------------------------------ uvicorn's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server_state.connections.add(cast(Any, self))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(cast(Any, self))
        for timer in (self.close_timer, self.stall_timer):
            if timer is not None:
                timer.cancel()
        self.close_timer = self.stall_timer = None
        self._end(1006)
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)  # senders see the socket gone, not a hang

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost ends the session

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = self.loop.create_future()
        if self.stall_timer is None:
            self.stall_timer = self.loop.call_later(STALL_TIMEOUT, self._stalled)

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None

    def shutdown(self) -> None:
        """uvicorn stops: the robot hears 1012 (service restart) and the session ends."""
        if self.transport is None:
            return
        if self.open and not self.close_sent:
            self.close_sent = True
            self.transport.write(close_frame(1012))
        self._end(1012)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self._upgrade(data)
            return
        if self.buffer:
            self.buffer += data
            if len(self.buffer) < self.need:
                return
            self._frames(self.buffer)
        else:
            self._frames(data)

    # ------------------------------------------------------------ the handshake

    def _upgrade(self, data: bytes) -> None:
        assert self.transport is not None
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_REQUEST:
                self._refuse_http(431, "Request Header Fields Too Large", "request head too large")
            return
        head, rest = self.head[: end + 4], self.head[end + 4 :]
        self.head = b""
        try:
            request = Request(head[:-4])
        except (ValueError, UnicodeDecodeError):
            self._refuse_http(400, "Bad Request", "invalid request")
            return
        port = (self.transport.get_extra_info("sockname") or ("", None))[1]
        settings = self.core.settings
        if request.path != PATH or port in (settings.edgeecho_port, settings.wasmiot_port):
            self._hand_over(head + rest)
            return
        fault = handshake_error(request)
        if fault is not None:
            status, why = fault
            if status == 426:
                answer = http_answer(426, "Upgrade Required", why, "Sec-WebSocket-Version: 13\r\n")
            else:
                answer = http_answer(400, "Bad Request", why)
            self.transport.write(answer)
            self.transport.close()
            return
        key = request.header("sec-websocket-key") or ""
        lines = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept_key(key)}",
        ]
        for name, value in self.server_state.default_headers:
            lines.append(f"{name.decode('latin-1')}: {value.decode('latin-1')}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        self.open = True
        peer = self.transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            # The whole target, as uvicorn logs it: corral's redaction hides a ?token=.
            access.info('%s:%d - "WebSocket %s" [accepted]', peer[0], peer[1], request.target)
        self.task = self.loop.create_task(self._serve(request), name="robot socket")
        self.server_state.tasks.add(self.task)
        self.task.add_done_callback(self._served)
        if rest:
            self.data_received(rest)

    def _hand_over(self, data: bytes) -> None:
        """Not the robots' socket: uvicorn's own protocol takes the connection as it is."""
        assert self.transport is not None
        self.server_state.connections.discard(cast(Any, self))
        standard: Any = self.fallback(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        standard.connection_made(self.transport)
        self.transport.set_protocol(standard)
        self.transport = None
        standard.data_received(data)

    def _refuse_http(self, status: int, reason: str, why: str) -> None:
        assert self.transport is not None
        self.transport.write(http_answer(status, reason, why))
        self.transport.close()

    # ------------------------------------------------------------ frames

    def _frames(self, data: bytes | bytearray) -> None:
        """Every whole frame in `data`; the start of one not whole stays in `buffer`."""
        size, at, need = len(data), 0, 0
        try:
            while size - at >= 2:
                first, second = data[at], data[at + 1]
                length = second & 0x7F
                head = at + 2
                if length == 126:
                    if size - head < 2:
                        break
                    length = (data[head] << 8) | data[head + 1]
                    head += 2
                elif length == 127:
                    if size - head < 8:
                        break
                    length = int.from_bytes(data[head : head + 8], "big")
                    head += 8
                    if length >> 63:
                        raise ProtocolFault(1002, "frame length with its top bit set")
                if not second & 0x80:
                    raise ProtocolFault(1002, "a client's frame must be masked")
                if first & 0x70:
                    raise ProtocolFault(1002, "reserved bits set without an extension")
                opcode = first & 0x0F
                if opcode >= 0x8:
                    if length > 125 or not first & 0x80:
                        raise ProtocolFault(1002, "a control frame is short and whole")
                elif self.fragmented_size + length > self.max_size:
                    raise ProtocolFault(1009, "message too big")
                end = head + 4 + length
                if end > size:
                    need = end - at
                    break
                payload = unmask(data[head + 4 : end], data[head : head + 4])
                at = end
                if opcode >= 0x8:
                    self._control(opcode, payload)
                    if self.ended:
                        at = size
                        break
                else:
                    self._data(opcode, bool(first & 0x80), payload)
        except ProtocolFault as fault:
            self._fail(fault.code)
            at = size
        self.need = need
        if at >= size:
            self.buffer = bytearray()
        elif data is self.buffer:
            del self.buffer[:at]
        else:
            self.buffer = bytearray(data[at:])
        if self.inbox:
            self._wake()
            if len(self.inbox) >= INBOX_HIGH and not self.read_paused and self.transport:
                self.read_paused = True
                self.transport.pause_reading()

    def _data(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode == CONT:
            if self.fragmented is None:
                raise ProtocolFault(1002, "a continuation frame with no message to continue")
            self.fragments.append(payload)
            self.fragmented_size += len(payload)
            if not fin:
                return
            opcode, payload = self.fragmented, b"".join(self.fragments)
            self.fragments, self.fragmented, self.fragmented_size = [], None, 0
        elif opcode in (TEXT, BINARY):
            if self.fragmented is not None:
                raise ProtocolFault(1002, "a new message before the last one's final frame")
            if not fin:
                self.fragments, self.fragmented = [payload], opcode
                self.fragmented_size = len(payload)
                return
        else:
            raise ProtocolFault(1002, f"unknown opcode {opcode}")
        if self.close_sent:
            return  # the session said its last word: what comes until the close is dropped
        if opcode == TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                raise ProtocolFault(1007, "a text message that is not UTF-8") from None
            if self.quick is not None and self.waiter is not None and not self.inbox:
                try:
                    if self.quick(text):
                        return
                except Exception:  # a fault of corral's: the usual way reports it
                    log.exception("robot socket: a message read could not be handled at once")
            self.inbox.append({"type": "websocket.receive", "text": text})
        else:
            self.inbox.append({"type": "websocket.receive", "bytes": payload})

    def _control(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == PING:
            if not self.close_sent:
                self.transport.write(server_frame(PONG, payload))
        elif opcode == CLOSE:
            code: int | None = None
            if len(payload) == 1:
                raise ProtocolFault(1002, "a close frame of one byte")
            if payload:
                code = (payload[0] << 8) | payload[1]
                if code not in VALID_CLOSE:
                    raise ProtocolFault(1002, f"close code {code}")
                try:
                    payload[2:].decode()
                except UnicodeDecodeError:
                    raise ProtocolFault(1007, "a close reason that is not UTF-8") from None
            if not self.close_sent:  # the peer closes first: echo its code (5.5.1)
                self.close_sent = True
                self.transport.write(close_frame(code))
            self._end(1005 if code is None else code)
            self.transport.close()  # the server closes TCP first (7.1.1)
        elif opcode != PONG:
            raise ProtocolFault(1002, f"unknown opcode {opcode}")

    def _fail(self, code: int) -> None:
        """Fail the connection (7.1.7): our close frame with the code, then TCP closed."""
        if self.transport is None:
            return
        if not self.close_sent:
            self.close_sent = True
            self.transport.write(close_frame(code))
        self._end(code)
        self.transport.close()

    def _end(self, code: int) -> None:
        """The session's last message: the socket is closed, with `code`."""
        if not self.ended:
            self.ended = True
            self.inbox.append({"type": "websocket.disconnect", "code": code})
            self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _stalled(self) -> None:
        """The robot has not read what was sent for STALL_TIMEOUT: the link is dead."""
        self.stall_timer = None
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------ the session's side

    async def receive(self) -> dict[str, Any]:
        """The next message, waiting for one; after the disconnect, the disconnect again."""
        inbox = self.inbox
        while not inbox:
            if self.ended:
                return {"type": "websocket.disconnect", "code": 1006}
            waiter = self.waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                if self.waiter is waiter:
                    self.waiter = None
        message = inbox.popleft()
        if self.read_paused and len(inbox) < INBOX_HIGH // 2 and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()
        return message

    async def send_text(self, data: str) -> None:
        await self._send(server_frame(TEXT, data.encode()))

    async def send_bytes(self, data: bytes) -> None:
        await self._send(server_frame(BINARY, data))

    async def _send(self, frame: bytes) -> None:
        if self.writable is not None:
            await asyncio.shield(self.writable)
        if self.close_sent or self.transport is None or self.transport.is_closing():
            raise ConnectionError("the robot's socket is closed")
        self.transport.write(frame)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Our close frame; the peer's answer (or CLOSE_TIMEOUT) ends the connection."""
        if self.close_sent or self.transport is None or self.transport.is_closing():
            return
        self.close_sent = True
        payload = struct.pack("!H", code) + (reason or "").encode()[:123]
        self.transport.write(server_frame(CLOSE, payload))
        self._end(code)
        if self.read_paused:  # the peer's close frame must be read
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.transport.close)

    # ------------------------------------------------------------ the session

    async def _serve(self, request: Request) -> None:
        await serve_robot(
            self.core, self, request.header("authorization") or "", request.query_value("token")
        )

    def _served(self, task: asyncio.Task[None]) -> None:
        self.server_state.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("robot socket failed", error=repr(task.exception()))
        transport = self.transport
        if transport is not None and not transport.is_closing() and not self.close_sent:
            self.close_sent = True  # the session ended without a word: a normal close
            transport.write(close_frame(1000))
            self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, transport.close)


def robot_websockets(core: Core) -> type[asyncio.Protocol]:
    """The `ws=` protocol class for uvicorn: `/fleet/ws` served lean for this core, any
    other WebSocket by uvicorn's standard protocol."""
    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

    if AutoWebSocketsProtocol is None:  # pragma: no cover - uvicorn[standard] is a dependency
        raise RuntimeError("uvicorn has no WebSocket protocol installed")
    fallback = cast(type[asyncio.Protocol], AutoWebSocketsProtocol)
    return type("CorralWebSocket", (RobotWebSocket,), {"core": core, "fallback": fallback})
