"""A Docker engine driver once closed opens no new connection (a call still running in a
worker thread at shutdown would otherwise leave one open), a failed probe only drops its
connections and the next probe connects afresh, and an event stream is closed for good
even when the engine reset its connection."""

import contextlib
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from corral.errors import Unreachable
from corral.hosts.docker_engine import DockerEngine
from corral.model.hosts import HostSpec


def _refusing_url() -> str:
    """A loopback TCP port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def test_a_failed_probe_reconnects_next_time() -> None:
    engine = DockerEngine(HostSpec(name="gone", url=_refusing_url()), timeout=1)
    for _ in range(2):
        with pytest.raises(Unreachable) as refused:
            engine.probe()
        assert "closed" not in refused.value.message
    engine.close()


def test_a_closed_engine_opens_no_new_client() -> None:
    engine = DockerEngine(HostSpec(name="done", url=_refusing_url()), timeout=1)
    engine.close()
    with pytest.raises(Unreachable, match="connection is closed"):
        engine.probe()
    assert engine._clients == {}


def _inode_of(port: int) -> str:
    """The socket inode of this machine's loopback TCP connection from `port`."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[9] != "0":  # 0: TIME_WAIT
            return fields[9]
    raise AssertionError(f"no TCP connection from port {port}")


def _held(inode: str) -> bool:
    """Whether this process still has that socket open."""
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == f"socket:[{inode}]":
                return True
    return False


class _ResettingEngine:
    """A loopback endpoint that answers an events request with one event, then, once told,
    drops the connection with a reset (an engine or a link that went away)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.drop = threading.Event()
        self.dropped = threading.Event()
        self.client_port = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, (_, self.client_port) = self.listener.accept()
        with conn:
            asked = b""
            while b"\r\n\r\n" not in asked:
                asked += conn.recv(4096)
            event = b'{"Type":"container","Action":"start"}\n'
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            head += b"Transfer-Encoding: chunked\r\n\r\n"
            conn.sendall(head + b"%x\r\n%s\r\n" % (len(event), event))
            self.drop.wait(10)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.dropped.set()

    def close(self) -> None:
        self.drop.set()
        self.listener.close()


@pytest.mark.parametrize("closed_by", ["the driver", "its consumer"])
def test_an_event_stream_the_engine_reset_is_closed(closed_by: str) -> None:
    """docker-py's own close raises on a connection the engine reset (ENOTCONN) before it
    closes the socket: the socket must still be closed, not left to the collector."""
    peer = _ResettingEngine()
    engine = DockerEngine(HostSpec(name="reset", url=peer.url), timeout=5)
    events = engine.events({})
    assert next(events)["Action"] == "start"
    corrals_end = _inode_of(peer.client_port)
    assert _held(corrals_end)
    peer.drop.set()
    assert peer.dropped.wait(10)
    time.sleep(0.1)  # the reset reaches corral's end
    if closed_by == "the driver":
        engine.close()
    else:
        events.close()  # a consumer that stops early; closing must not raise
    assert not _held(corrals_end)  # while `events` is still referenced
    engine.close()
    peer.close()


class _QuietContainer:
    """A loopback endpoint for one container, `x`, that has a terminal (Tty), said `hello`
    and then says nothing more: a follow of its output waits for a next line."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.follower_port = 0
        self.gone = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, (_, port) = self.listener.accept()
                threading.Thread(target=self._serve, args=(conn, port), daemon=True).start()

    def _serve(self, conn: socket.socket, port: int) -> None:
        with conn, contextlib.suppress(OSError):
            asked = b""
            while True:
                while b"\r\n\r\n" not in asked:
                    more = conn.recv(4096)
                    if not more:
                        return
                    asked += more
                request, asked = asked.split(b"\r\n\r\n", 1)
                path = request.split(b" ")[1]
                if b"/containers/x/json" in path:
                    body = b'{"Id": "x", "Config": {"Tty": true}}'
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    continue
                self.follower_port = port
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n6\r\nhello\n\r\n"
                )
                conn.recv(1)  # quiet until the reader hangs up
                self.gone.set()
                return

    def close(self) -> None:
        self.listener.close()


def test_a_quiet_follow_ends_when_closed_from_another_thread() -> None:
    """A reader waiting for a quiet container's next line (a viewer who left, say) stops as
    soon as the output is closed, and the engine connection with it."""
    peer = _QuietContainer()
    engine = DockerEngine(HostSpec(name="quiet", url=peer.url), timeout=5)
    output = engine.logs("x", -1, True)
    assert b"".join(next(output) for _ in range(6)) == b"hello\n"  # a terminal's bytes
    follow = _inode_of(peer.follower_port)
    got: list[bytes | None] = []
    reader = threading.Thread(target=lambda: got.append(next(output, None)), daemon=True)
    reader.start()
    reader.join(0.3)
    assert reader.is_alive()  # waiting for a line that does not come
    output.close()
    reader.join(5)
    assert not reader.is_alive()
    assert got == [None]  # the end of the output, not an error
    assert not _held(follow)
    assert peer.gone.wait(5)  # the engine saw the connection go
    engine.close()
    peer.close()
