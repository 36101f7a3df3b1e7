"""The robots' WebSocket `/fleet/ws` as corral serves it (robot_ws.py), met by a strict
RFC 6455 client written here over a raw loopback socket: the handshake, fragments with a
ping between them, a binary frame, frames a server must refuse (unmasked: 1002; too big:
1009; not UTF-8: 1007), both close handshakes, bad tokens. Any other WebSocket goes to
uvicorn's own protocol, and the event stream still answers.
"""

import base64
import hashlib
import json
import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.server import ADMIN, ThreadServer, wait_until

from corral.api.robot_ws import RobotWebSocket
from corral.config import Settings
from corral.model.fleet_map import grid_map

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Peer:
    """A strict client: every frame it reads must be a server's (unmasked, no RSV bits,
    control frames whole and short)."""

    def __init__(self, port: int, headers: dict[str, str], target: str = "/fleet/ws") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.key = base64.b64encode(os.urandom(16)).decode()
        fields = {
            "Host": f"127.0.0.1:{port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": self.key,
            "Sec-WebSocket-Version": "13",
            **headers,
        }
        request = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        self.sock.sendall((request + "\r\n").encode())
        self.rest = b""
        head = self._until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }

    def _until(self, end: bytes) -> bytes:
        while end not in self.rest:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed before the end of its answer"
            self.rest += chunk
        head, _, self.rest = self.rest.partition(end)
        return head

    def _exactly(self, n: int) -> bytes:
        while len(self.rest) < n:
            chunk = self.sock.recv(65536)
            assert chunk, "the connection closed in the middle of a frame"
            self.rest += chunk
        out, self.rest = self.rest[:n], self.rest[n:]
        return out

    def send(self, opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> None:
        first = (0x80 if fin else 0) | opcode
        size = len(payload)
        mask_bit = 0x80 if masked else 0
        if size < 126:
            head = bytes((first, mask_bit | size))
        elif size < 65536:
            head = bytes((first, mask_bit | 126)) + struct.pack("!H", size)
        else:
            head = bytes((first, mask_bit | 127)) + struct.pack("!Q", size)
        if masked:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            head += key
        self.sock.sendall(head + payload)

    def text(self, message: dict[str, Any], fin: bool = True) -> None:
        self.send(0x1, json.dumps(message).encode(), fin)

    def frame(self) -> tuple[bool, int, bytes]:
        first, second = self._exactly(2)
        assert not first & 0x70, "a server sets no RSV bit without an extension"
        assert not second & 0x80, "a server's frames are not masked (RFC 6455 5.1)"
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", self._exactly(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self._exactly(8))[0]
        opcode = first & 0x0F
        if opcode >= 0x8:
            assert first & 0x80, "a control frame is never fragmented"
            assert size <= 125, "a control frame's payload is 125 bytes at most"
        return bool(first & 0x80), opcode, self._exactly(size)

    def message(self) -> dict[str, Any]:
        """The next message; it must be one whole text frame."""
        fin, opcode, payload = self.frame()
        assert (fin, opcode) == (True, 0x1), (fin, opcode, payload)
        return dict(json.loads(payload))

    def close_code(self) -> int:
        """The server's close frame (messages before it skipped), its code."""
        while True:
            _, opcode, payload = self.frame()
            if opcode == 0x8:
                return int(struct.unpack("!H", payload[:2])[0])

    def ended(self) -> bool:
        """The server closed TCP (after its close frame): nothing more comes."""
        if self.rest:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    settings = Settings(
        home=tmp_path, bootstrap_token=ADMIN, local_docker_url="", robot_heartbeat_seconds=600
    )
    with ThreadServer(settings) as running:
        yield running


@pytest.fixture
def connect(server: ThreadServer) -> Iterator[Callable[..., Peer]]:
    """Peers on the server's port; each closed at the test's end."""
    opened: list[Peer] = []

    def opening(headers: dict[str, str], target: str = "/fleet/ws") -> Peer:
        opened.append(Peer(server.port, headers, target))
        return opened[-1]

    yield opening
    for peer in opened:
        peer.close()


@pytest.fixture
def token(server: ThreadServer) -> str:
    with server.client() as api:
        assert api.post("/fleet/maps", json=grid_map("ws", 3, 3).as_dict()).status_code == 201
        answer = api.post("/fleet/robots", json={"name": "r1", "map": "ws"})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["token"])


def _greeted(connect: Callable[..., Peer], token: str) -> Peer:
    peer = connect({"Authorization": f"Bearer {token}"})
    assert peer.status == 101
    peer.text({"type": "hello", "robot": "r1"})
    assert peer.message()["type"] == "welcome"
    return peer


def test_the_handshake_follows_rfc_6455_and_is_served_lean(
    server: ThreadServer, connect: Callable[..., Peer], token: str
) -> None:
    peer = connect({"Authorization": f"Bearer {token}"})
    assert peer.status == 101
    assert peer.headers["upgrade"].lower() == "websocket"
    assert peer.headers["connection"].lower() == "upgrade"
    digest = hashlib.sha1(peer.key.encode() + GUID, usedforsecurity=False).digest()
    assert peer.headers["sec-websocket-accept"] == base64.b64encode(digest).decode()
    assert "sec-websocket-extensions" not in peer.headers
    connections = server.server.server_state.connections
    assert any(isinstance(c, RobotWebSocket) for c in connections), "not uvicorn's protocol"

    old = connect({"Sec-WebSocket-Version": "8"})
    assert old.status == 426
    assert old.headers["sec-websocket-version"] == "13"
    keyless = connect({"Sec-WebSocket-Key": "c2hvcnQ="})
    assert keyless.status == 400


def test_a_token_in_the_query_works_and_bad_tokens_get_4401_and_4403(
    server: ThreadServer, connect: Callable[..., Peer], token: str
) -> None:
    peer = connect({}, f"/fleet/ws?token={token}")
    peer.text({"type": "hello", "robot": "r1"})
    assert peer.message()["type"] == "welcome"

    bad = connect({"Authorization": "Bearer crl_not_a_token_at_all_0123456"})
    assert bad.status == 101, "accepted, then told why"
    assert bad.message()["code"] == "unauthorized"
    assert bad.close_code() == 4401
    bad.send(0x8, struct.pack("!H", 4401))  # the client's half of the close handshake
    assert bad.ended()

    admin = connect({"Authorization": f"Bearer {ADMIN}"})
    assert admin.message()["code"] == "forbidden"
    assert admin.close_code() == 4403

    other = connect({"Authorization": f"Bearer {token}"})
    other.text({"type": "hello", "robot": "r2"})
    assert other.message()["code"] == "forbidden"
    assert other.close_code() == 4403


def test_fragments_with_a_ping_between_make_one_message_and_the_ping_gets_its_pong(
    server: ThreadServer, connect: Callable[..., Peer], token: str
) -> None:
    peer = connect({"Authorization": f"Bearer {token}"})
    hello = json.dumps({"type": "hello", "robot": "r1"}).encode()
    peer.send(0x1, hello[:5], fin=False)
    peer.send(0x0, hello[5:9], fin=False)
    peer.send(0x9, b"between")  # a control frame may come between fragments (5.4)
    peer.send(0x0, hello[9:], fin=True)
    assert peer.frame() == (True, 0xA, b"between"), "the pong carries the ping's data"
    assert peer.message()["type"] == "welcome"
    # A ping and a message in one write: both answered, in order.
    peer.send(0x9, b"")
    peer.text({"type": "ping"})
    assert peer.frame() == (True, 0xA, b"")
    assert peer.message()["type"] == "pong"


def test_a_binary_frame_or_an_oversize_message_gets_an_error_and_the_socket_stays(
    server: ThreadServer, connect: Callable[..., Peer], token: str
) -> None:
    peer = _greeted(connect, token)
    peer.send(0x2, b'{"type": "ping"}')
    assert peer.message() == {
        "type": "error",
        "code": "invalid",
        "message": "messages are text frames",
    }
    big = json.dumps({"type": "telemetry", "status": "x" * 70_000}).encode()
    peer.send(0x1, big)
    assert peer.message()["code"] == "too_large"
    peer.text({"type": "ping"})
    assert peer.message()["type"] == "pong", "the socket is still open"


def test_a_frame_past_the_size_limit_is_refused_from_its_header_with_1009(
    server: ThreadServer, connect: Callable[..., Peer], token: str
) -> None:
    peer = _greeted(connect, token)
    limit = server.server.config.ws_max_size
    # Only the header and the mask: the server must not wait for 16 MiB to refuse it.
    peer.sock.sendall(bytes((0x81, 0x80 | 127)) + struct.pack("!Q", limit + 1) + os.urandom(4))
    assert peer.close_code() == 1009
    assert peer.ended()


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        ([(0x1, b'{"type": "ping"}', True, False)], 1002),  # unmasked (5.1)
        ([(0x0, b"{}", True, True)], 1002),  # a continuation of nothing
        ([(0x1, b"{", False, True), (0x1, b"}", True, True)], 1002),  # a new message
        ([(0x3, b"", True, True)], 1002),  # a reserved opcode
        ([(0x9, b"x" * 126, True, True)], 1002),  # a control frame over 125 bytes
        ([(0x9, b"", False, True)], 1002),  # a fragmented control frame
        ([(0x8, b"\x03", True, True)], 1002),  # a close frame of one byte
        ([(0x8, struct.pack("!H", 1005), True, True)], 1002),  # a code never sent
        ([(0x1, b"\xff\xfe", True, True)], 1007),  # text that is not UTF-8
    ],
)
def test_frames_a_server_must_refuse_fail_the_connection(
    connect: Callable[..., Peer], token: str, frames: list[tuple[int, bytes, bool, bool]], code: int
) -> None:
    peer = _greeted(connect, token)
    for opcode, payload, fin, masked in frames:
        peer.send(opcode, payload, fin, masked)
    assert peer.close_code() == code
    assert peer.ended()


def test_reserved_bits_fail_the_connection(connect: Callable[..., Peer], token: str) -> None:
    peer = _greeted(connect, token)
    peer.sock.sendall(bytes((0x80 | 0x40 | 0x1, 0x80 | 2)) + b"\0\0\0\0{}")
    assert peer.close_code() == 1002


def test_the_robots_close_is_echoed_and_the_server_ends_tcp(
    server: ThreadServer, connect: Callable[..., Peer], token: str
) -> None:
    peer = _greeted(connect, token)
    peer.send(0x8, struct.pack("!H", 1000) + b"bye")
    assert peer.frame() == (True, 0x8, struct.pack("!H", 1000))
    assert peer.ended()
    with server.client() as api:
        wait_until(lambda: not api.get("/fleet/robots/r1").json()["connected"], "r1 gone")

    empty = _greeted(connect, token)
    empty.send(0x8, b"")  # no code: the answer has none either
    assert empty.frame() == (True, 0x8, b"")
    assert empty.ended()


def test_other_websockets_go_to_uvicorns_protocol_and_the_event_stream_answers(
    server: ThreadServer, connect: Callable[..., Peer], token: str
) -> None:
    other = connect({"Authorization": f"Bearer {ADMIN}"}, "/events/stream")
    # No WebSocket route there: the app closes before accepting, and uvicorn's protocol
    # turns that into HTTP 403 (corral's robot socket never answers 403).
    assert other.status == 403
    near = connect({"Authorization": f"Bearer {token}"}, "/fleet/ws/")
    assert near.status == 403, "only /fleet/ws itself is served lean"
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.stream("GET", f"{server.url}/events/stream", headers=headers, timeout=15) as sse:
        assert sse.status_code == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
