"""A lean MQTT 3.1.1 subscriber for high-rate feeds (VDA 5050 vehicles' state and
visualization): PUBLISH frames read straight off an asyncio transport and handed to a plain
callback, with no object, queue, lock or task per message.

aiomqtt (over paho) builds two objects per message, one with a `threading.Condition`,
matches its topic against every filter and queues it without bound: at 10,000 messages a
second that was a third of a core. Here a message costs the parsing of its frame. The
callback runs on the loop, inside the read: what it cannot do at once it keeps (bounded by
its own rule) and does later; while it runs, nothing else is read, so the kernel's socket
buffer and the broker hold what is not read yet, not this process.
"""

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import cast

import structlog

log = structlog.get_logger("corral.brokers")
FAULTS_LOGGED_EVERY = 10.0  # seconds
Deliver = Callable[[str, bytes, bool], None]  # (topic, payload, retained), on the loop
CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


def _length(n: int) -> bytes:
    """MQTT's remaining length: 7 bits a byte, low first (2.2.3)."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def connect_packet(
    client_id: str, username: str | None, password: str | None, keepalive: int
) -> bytes:
    """CONNECT (3.1), clean session, no last will."""
    flags = 0x02
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    body = _string("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive) + payload
    return b"\x10" + _length(len(body)) + body


def subscribe_packet(packet_id: int, filters: Sequence[tuple[str, int]]) -> bytes:
    """SUBSCRIBE (3.8): each filter with its maximum QoS."""
    body = struct.pack("!H", packet_id) + b"".join(_string(f) + bytes((q,)) for f, q in filters)
    return b"\x82" + _length(len(body)) + body


class FeedError(ConnectionError):
    """The feed's connection was refused or lost."""


class _Protocol(asyncio.Protocol):
    def __init__(self, deliver: Deliver) -> None:
        loop = asyncio.get_running_loop()
        self.deliver = deliver
        self.transport: asyncio.Transport | None = None
        self.rest = b""  # the start of a frame not read whole yet
        self.connack: asyncio.Future[int] = loop.create_future()
        self.suback: asyncio.Future[bytes] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.pinged: float | None = None  # when a PINGREQ went without its PINGRESP yet
        self.received = 0  # PUBLISH frames read
        self.faults = 0  # of those, how many the handler failed on
        self.fault_logged = -FAULTS_LOGGED_EVERY

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        lost = FeedError(f"MQTT feed connection lost: {exc or 'closed by the broker'}")
        for waiter in (self.connack, self.suback):
            if not waiter.done():
                waiter.set_exception(lost)
        if not self.closed.done():
            self.closed.set_exception(lost)

    def data_received(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
        size, at = len(data), 0
        deliver = self.deliver
        while size - at >= 2:
            first = data[at]
            length, shift, i = 0, 0, at + 1
            while True:  # the remaining length
                if i >= size:
                    self.rest = data[at:]
                    return
                digit = data[i]
                length |= (digit & 0x7F) << shift
                i += 1
                if not digit & 0x80:
                    break
                shift += 7
                if shift > 21:
                    self.abort()
                    return
            end = i + length
            if end > size:
                break
            if first >> 4 == 3:  # PUBLISH
                topic_end = i + 2 + ((data[i] << 8) | data[i + 1])
                topic = data[i + 2 : topic_end].decode(errors="replace")
                if first & 0x06:  # QoS 1 (2 is not asked for): acknowledge
                    self._write(b"\x40\x02" + data[topic_end : topic_end + 2])
                    topic_end += 2
                self.received += 1
                try:
                    deliver(topic, data[topic_end:end], bool(first & 0x01))
                except Exception as exc:  # the feed goes on
                    self._failed(topic, exc)
            else:
                self._control(first, data[i:end])
            at = end
            if self.transport is None:
                return
        self.rest = data[at:] if at < size else b""

    def _failed(self, topic: str, exc: Exception) -> None:
        """A handler's fault: logged at most once every FAULTS_LOGGED_EVERY seconds, with
        how many there were meanwhile."""
        self.faults += 1
        now = time.monotonic()
        if now - self.fault_logged >= FAULTS_LOGGED_EVERY:
            self.fault_logged = now
            log.error("mqtt feed handler failed", topic=topic, error=repr(exc), faults=self.faults)

    def _control(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == 2 and not self.connack.done():  # CONNACK
            self.connack.set_result(body[1] if len(body) > 1 else 255)
        elif kind == 9 and not self.suback.done():  # SUBACK
            self.suback.set_result(body[2:])
        elif kind == 13:  # PINGRESP
            self.pinged = None

    def _write(self, frame: bytes) -> None:
        if self.transport is not None:
            self.transport.write(frame)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class MqttFeed:
    """One connection of its own that subscribes to `filters` and hands every message to
    `deliver`. `open` returns once the broker granted every subscription; `run` keeps it
    alive (PINGREQ) and returns, raising FeedError, when it is lost."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        username: str | None,
        password: str | None,
        filters: Sequence[tuple[str, int]],
        deliver: Deliver,
        keepalive: int = 10,
        timeout: float = 5.0,
    ) -> None:
        self.host, self.port = host, port
        self.client_id = client_id
        self.username, self.password = username, password
        self.filters = list(filters)
        self.deliver = deliver
        self.keepalive = keepalive
        self.timeout = timeout
        self._protocol: _Protocol | None = None

    @property
    def received(self) -> int:
        return self._protocol.received if self._protocol is not None else 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        deliver = self.deliver
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: _Protocol(deliver), self.host, self.port),
            self.timeout,
        )
        self._protocol = protocol
        try:
            protocol._write(
                connect_packet(self.client_id, self.username, self.password, self.keepalive)
            )
            code = await asyncio.wait_for(protocol.connack, self.timeout)
            if code:
                raise FeedError(f"the broker refused: {CONNACK_CODES.get(code, f'code {code}')}")
            protocol._write(subscribe_packet(1, self.filters))
            granted = await asyncio.wait_for(protocol.suback, self.timeout)
            refused = [f for (f, _), g in zip(self.filters, granted, strict=False) if g == 0x80]
            if refused:
                raise FeedError(f"the broker refused the subscription to {', '.join(refused)}")
        except BaseException:
            self.close()
            raise

    async def run(self) -> None:
        protocol = self._protocol
        if protocol is None:
            raise FeedError("the MQTT feed is not open")
        loop = asyncio.get_running_loop()
        every = max(1.0, self.keepalive / 2)
        while True:
            done, _ = await asyncio.wait({protocol.closed}, timeout=every)
            if done:
                protocol.closed.result()  # raises what ended it
                return
            now = loop.time()
            if protocol.pinged is not None and now - protocol.pinged > self.keepalive:
                protocol.abort()
                raise FeedError("MQTT feed: the broker did not answer a PINGREQ")
            if protocol.pinged is None:
                protocol.pinged = now
            protocol._write(b"\xc0\x00")

    def close(self) -> None:
        """DISCONNECT and close (at once: nothing of ours is waiting to go)."""
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.write(b"\xe0\x00")
            protocol.transport.close()
        if protocol is not None:
            for waiter in (protocol.connack, protocol.suback, protocol.closed):
                if not waiter.done():
                    waiter.cancel()  # nobody waits for it past here
                elif not waiter.cancelled():
                    waiter.exception()  # seen: not "never retrieved"
