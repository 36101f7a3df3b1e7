"""The robot client (`corral.robot`): signing, and the client's logic against a small fake
server written here (websockets on 127.0.0.1, http.server for the HTTP variant).

The real corral server is tested against the protocol elsewhere.
"""

import asyncio
import hashlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from corral.robot import HttpRobot, RobotClient, RobotRefused
from corral.robot.client import ws_url
from corral.robot.signing import sign, verify
from corral.robot.sim import FleetSim, SimRobot, parse_map, pick_starts, register, run_fleet

KEY = "0f" * 32
NONCE = "5a" * 16
TOKEN = "robot-token"
Handler = Callable[[ServerConnection], Awaitable[None]]


# -- signing ---------------------------------------------------------------------------


def test_sign_verify_round_trip() -> None:
    message = {"type": "telemetry", "marker": "m1", "lane": None, "battery": 80.5}
    signed = sign(message, KEY, 7, NONCE)
    assert signed["n"] == 7
    assert "sig" not in message  # the original is left alone
    assert verify(signed, KEY, NONCE)
    # the signature is over the canonical JSON: key order does not matter
    assert verify(dict(reversed(list(signed.items()))), KEY, NONCE)


def test_the_signed_bytes_are_the_nonce_a_newline_and_the_canonical_json() -> None:
    # written out by hand from docs/fleet-protocol.md, not from corral's functions
    signed = sign({"type": "ping"}, KEY, 3, NONCE)
    data = NONCE.encode() + b'\n{"n":3,"type":"ping"}'
    assert signed["sig"] == hmac.new(bytes.fromhex(KEY), data, hashlib.sha256).hexdigest()
    # the worked example of the document
    assert signed["sig"] == "23cdf2ee7b387569f7b75c8bfccaca66bee2a36a3f6371b288f8796d1cc86edc"


def test_a_signature_under_another_nonce_fails() -> None:
    assert not verify(sign({"type": "ping"}, KEY, 1, NONCE), KEY, "1" * 32)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m.update(marker="m2"),
        lambda m: m.update(n=8),
        lambda m: m.update(extra=1),
        lambda m: m.pop("sig"),
        lambda m: m.pop("n"),
        lambda m: m.update(sig=m["sig"][:-1] + ("0" if m["sig"][-1] != "0" else "1")),
    ],
)
def test_tampered_message_fails(tamper: Callable[[dict[str, Any]], object]) -> None:
    signed = sign({"type": "checkpoint", "marker": "m1"}, KEY, 1, NONCE)
    tamper(signed)
    assert not verify(signed, KEY, NONCE)


def test_wrong_key_fails() -> None:
    assert not verify(sign({"type": "ping"}, KEY, 1, NONCE), "1f" * 32, NONCE)


def test_ws_url() -> None:
    assert ws_url("http://h:8080") == "ws://h:8080/fleet/ws"
    assert ws_url("https://h/corral/") == "wss://h/corral/fleet/ws"
    assert ws_url("ws://h:1/custom") == "ws://h:1/custom"
    with pytest.raises(ValueError, match="URL"):
        ws_url("h:8080")


# -- a fake fleet server ---------------------------------------------------------------


class FakeFleet:
    """Welcomes robot `r1` with TOKEN, answers pings, and files what robots send."""

    def __init__(self, heartbeat: float = 30.0, key: str | None = None) -> None:
        self.heartbeat = heartbeat
        self.key = key
        self.conns: list[ServerConnection] = []
        self.hellos: list[dict[str, Any]] = []
        self.inbox: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
        self.gate = asyncio.Event()  # connections after the first wait on it before welcome
        self.gate.set()
        self.answer_pings = True
        self.refuse: str | None = None  # "unauthorized": error + 4401; "close": 4403 alone
        self.counters: list[list[int]] = []  # signed mode: n of each message, per connection
        self.nonces: list[str] = []  # the nonce of each connection

    async def handler(self, ws: ServerConnection) -> None:
        number = len(self.conns)
        nonce = f"{number:032x}"
        if self.key is not None:
            await ws.send(json.dumps({"type": "challenge", "nonce": nonce}))
        self.nonces.append(nonce)
        hello = json.loads(await ws.recv())
        self.conns.append(ws)
        self.hellos.append(hello)
        self.counters.append([])
        self._check(number, hello)
        if self.refuse == "unauthorized":
            await ws.send(json.dumps({"type": "error", "code": "unauthorized", "message": "no"}))
            await ws.close(4401, "unauthorized")
            return
        if self.refuse == "close":
            await ws.close(4403, "forbidden")
            return
        if number:
            await self.gate.wait()
        welcome = {"type": "welcome", "robot": "r1", "heartbeat": self.heartbeat, "signed": False}
        await ws.send(json.dumps(welcome))
        async for raw in ws:
            message = json.loads(raw)
            self._check(number, message)
            if message["type"] == "ping":
                if self.answer_pings:
                    await ws.send('{"type":"pong"}')
                continue
            await self.inbox.put((number, message))

    def _check(self, number: int, message: dict[str, Any]) -> None:
        if self.key is not None:
            assert verify(message, self.key, self.nonces[number]), message
            self.counters[number].append(message["n"])

    async def next(self, kind: str | None = None) -> tuple[int, dict[str, Any]]:
        """The next message a robot sent (of `kind`), within 5 s."""
        while True:
            number, message = await asyncio.wait_for(self.inbox.get(), 5)
            if kind is None or message["type"] == kind:
                return number, message

    async def command(self, cid: int, kind: str, conn: int = -1, **fields: Any) -> None:
        await self.conns[conn].send(
            json.dumps({"type": "command", "id": cid, "kind": kind, **fields})
        )


@asynccontextmanager
async def serving(handler: Handler, **options: Any) -> AsyncIterator[str]:
    server: Server
    async with serve(handler, "127.0.0.1", 0, compression=None, **options) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"http://127.0.0.1:{port}"


@asynccontextmanager
async def running(client: RobotClient) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(client.run())
    try:
        yield task
    finally:
        await client.close()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)


@asynccontextmanager
async def obeying(
    fleet: FakeFleet, handler: Callable[[dict[str, Any]], Awaitable[None]]
) -> AsyncIterator[RobotClient]:
    """Robot r1 connected to the fake fleet, its commands going to `handler`."""
    async with serving(fleet.handler) as url:
        client = RobotClient(url, "r1", TOKEN)
        client.on_command(handler)
        async with running(client):
            await asyncio.wait_for(client.connected.wait(), 5)
            yield client


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll `condition` (a state of the client or the fake, not an event) for a while."""
    async with asyncio.timeout(seconds):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


def ack(cid: int) -> dict[str, Any]:
    return {"type": "ack", "id": cid}


# -- the WebSocket client ---------------------------------------------------------------


async def test_hello_and_welcome() -> None:
    fleet = FakeFleet(heartbeat=12.0)
    seen: list[dict[str, Any]] = []
    async with serving(fleet.handler) as url:
        client = RobotClient(url, "r1", TOKEN)
        client.on_connect(seen.append)
        async with running(client):
            await asyncio.wait_for(client.connected.wait(), 5)
            assert fleet.hellos == [{"type": "hello", "robot": "r1"}]
            assert fleet.conns[0].request is not None
            assert fleet.conns[0].request.headers["Authorization"] == f"Bearer {TOKEN}"
            assert client.heartbeat == 12.0
            assert [w["type"] for w in seen] == ["welcome"]
            assert await client.telemetry(marker="a", battery=90)
            _, message = await fleet.next()
            assert message == {"type": "telemetry", "marker": "a", "lane": None, "battery": 90}
        assert not client.connected.is_set()


async def test_command_acked_after_handler_returns() -> None:
    fleet = FakeFleet()
    order: list[str] = []
    release = asyncio.Event()

    async def handler(command: dict[str, Any]) -> None:
        order.append(f"start {command['id']}")
        await release.wait()
        order.append(f"done {command['id']}")

    async with obeying(fleet, handler):
        await fleet.command(1, "move", marker="b", lane=["a", "b"])
        await until(lambda: order == ["start 1"])
        await asyncio.sleep(0.1)
        assert fleet.inbox.empty()  # no ack while the handler works
        release.set()
        assert (await fleet.next())[1] == ack(1)
        assert order == ["start 1", "done 1"]


async def test_duplicate_ids_are_acked_not_handled_again() -> None:
    fleet = FakeFleet()
    handled: list[int] = []
    release = asyncio.Event()
    release.set()

    async def handler(command: dict[str, Any]) -> None:
        await release.wait()
        handled.append(command["id"])

    async with obeying(fleet, handler):
        await fleet.command(1, "move", marker="b", lane=["a", "b"])
        assert (await fleet.next())[1] == ack(1)
        await fleet.command(1, "move", marker="b", lane=["a", "b"])  # re-sent
        assert (await fleet.next())[1] == ack(1)  # acked again
        release.clear()  # a copy arriving while the first is in the handler
        await fleet.command(2, "stop")
        await fleet.command(2, "stop")
        await asyncio.sleep(0.05)
        release.set()
        assert (await fleet.next())[1] == ack(2)
        await asyncio.sleep(0.1)
        assert fleet.inbox.empty()
        assert handled == [1, 2]


async def test_estop_overtakes_queued_commands() -> None:
    fleet = FakeFleet()
    order: list[str] = []
    release = asyncio.Event()

    async def handler(command: dict[str, Any]) -> None:
        order.append(f"{command['kind']} {command['id']}")
        if command["id"] == 1:
            await release.wait()

    async with obeying(fleet, handler):
        await fleet.command(1, "move", marker="b", lane=["a", "b"])
        await fleet.command(2, "move", marker="c", lane=["b", "c"])
        await fleet.command(3, "estop")
        assert (await fleet.next())[1] == ack(3)  # while move 1 is still in the handler
        release.set()
        assert [(await fleet.next())[1] for _ in range(2)] == [ack(1), ack(2)]
        assert order == ["move 1", "estop 3", "move 2"]


async def test_handler_failure_is_not_acked() -> None:
    fleet = FakeFleet()
    calls: list[int] = []

    async def handler(command: dict[str, Any]) -> None:
        calls.append(command["id"])
        if len(calls) == 1:
            raise RuntimeError("motor controller busy")

    async with obeying(fleet, handler):
        await fleet.command(1, "custom", payload={"led": "red"})
        await until(lambda: calls == [1])
        await fleet.command(1, "custom", payload={"led": "red"})  # as after a reconnect
        assert (await fleet.next())[1] == ack(1)
        assert calls == [1, 1]


async def test_reconnects_and_delivers_queued_checkpoints_in_order() -> None:
    fleet = FakeFleet()
    handled: list[int] = []

    async def handler(command: dict[str, Any]) -> None:
        handled.append(command["id"])

    async with obeying(fleet, handler) as client:
        await fleet.command(1, "move", marker="b", lane=["a", "b"])
        assert (await fleet.next())[1] == ack(1)

        fleet.gate.clear()  # hold the next connection before its welcome
        transport = fleet.conns[0].transport
        assert isinstance(transport, asyncio.WriteTransport)
        transport.abort()  # the server side drops the link abruptly
        await until(lambda: not client.connected.is_set())
        assert not await client.checkpoint("b")
        assert not await client.telemetry(lane=["b", "c"], progress=0.5)  # dropped…
        assert not await client.checkpoint("c", distance=0.0)
        assert not await client.telemetry(marker="c")  # …but the newest is kept
        assert client.pending_checkpoints == 2

        await until(lambda: len(fleet.hellos) == 2)
        assert fleet.hellos[1] == {"type": "hello", "robot": "r1", "acked": [1]}
        fleet.gate.set()
        await asyncio.wait_for(client.connected.wait(), 5)
        received = [await fleet.next() for _ in range(3)]
        assert received == [
            (1, {"type": "checkpoint", "marker": "b"}),
            (1, {"type": "checkpoint", "marker": "c", "distance": 0.0}),
            (1, {"type": "telemetry", "marker": "c", "lane": None}),
        ]
        assert client.pending_checkpoints == 0
        assert client.reconnects == 1

        await fleet.command(1, "move", marker="b", lane=["a", "b"], conn=1)  # re-sent
        await fleet.command(2, "move", marker="d", lane=["c", "d"], conn=1)
        assert [(await fleet.next())[1] for _ in range(2)] == [ack(1), ack(2)]
        assert handled == [1, 2]


async def test_unanswered_pings_make_it_reconnect() -> None:
    fleet = FakeFleet()
    fleet.answer_pings = False
    async with serving(fleet.handler) as url:
        client = RobotClient(url, "r1", TOKEN, heartbeat=0.3)
        async with running(client):
            await asyncio.wait_for(client.connected.wait(), 5)
            assert client.heartbeat == 0.3  # shorter than the server's 30 s: kept
            await until(lambda: len(fleet.conns) >= 2)


@pytest.mark.parametrize("refuse", ["unauthorized", "close", "http"])
async def test_refused_credential_raises(refuse: str) -> None:
    fleet = FakeFleet()
    fleet.refuse = refuse

    def reject(ws: ServerConnection, request: Request) -> Response | None:
        return ws.respond(401, "bad token\n") if refuse == "http" else None

    async with serving(fleet.handler, process_request=reject) as url:
        client = RobotClient(url, "r1", "wrong")
        with pytest.raises(RobotRefused) as caught:
            await asyncio.wait_for(client.run(), 5)
    expected = {"unauthorized": "unauthorized", "close": "forbidden", "http": "http 401"}
    assert caught.value.code == expected[refuse]
    assert not client.connected.is_set()


async def test_signed_mode_counts_per_connection() -> None:
    fleet = FakeFleet(key=KEY)
    async with serving(fleet.handler) as url:
        client = RobotClient(url, "r1", TOKEN, key=KEY)
        async with running(client):
            await asyncio.wait_for(client.connected.wait(), 5)
            await client.telemetry(marker="a")
            await client.checkpoint("a")
            await fleet.next("checkpoint")
            assert fleet.counters[0] == [1, 2, 3]  # hello, telemetry, checkpoint
            assert client.drop_connection()
            await until(lambda: len(fleet.conns) == 2 and client.connected.is_set())
            await client.checkpoint("b")
            number, message = await fleet.next("checkpoint")
            assert (number, message["marker"]) == (1, "b")
            # a new connection counts from 1 again: hello, the newest telemetry, checkpoint
            assert fleet.counters[1] == [1, 2, 3]


# -- the HTTP variant --------------------------------------------------------------------


class FakeHttp:
    """A stdlib HTTP server for the robot endpoints and registration; files each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.commands: list[list[dict[str, Any]]] = []  # answers to GET …/commands, in turn
        self.existing: set[str] = set()  # robot names that answer 409
        self.key: str | None = None  # signed: bodies are checked under the last nonce
        self.nonces = 0  # nonces given out
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append((self.command, self.path, body))
                auth = self.headers.get("Authorization")
                if auth not in (f"Bearer {TOKEN}", "Bearer admin"):
                    self._answer(401, {"error": {"message": "bad token"}})
                elif self.path == "/fleet/robots" and body["name"] in fake.existing:
                    self._answer(409, {"error": {"message": "exists"}})
                elif self.path == "/fleet/robots":
                    self._answer(201, {"robot": {"name": body["name"]}, "token": "t-new"})
                elif self.path.endswith("/nonce"):
                    fake.nonces += 1
                    self._answer(200, {"nonce": f"{fake.nonces:032x}"})
                elif fake.key and body is not None and not verify(body, fake.key, fake.nonce):
                    error = {"code": "bad_signature", "message": "no"}
                    self._answer(401, {"error": error})
                elif self.path.endswith("/rotate"):
                    self._answer(200, {"token": "t-rotated", "key": KEY})
                elif "/commands?" in self.path:
                    self._answer(200, fake.commands.pop(0) if fake.commands else [])
                else:
                    self._answer(204)

            do_GET = do_POST = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def nonce(self) -> str:
        return f"{self.nonces:032x}"


@contextmanager
def http_fake() -> Iterator[FakeHttp]:
    fake = FakeHttp()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        thread.join(5)


def test_http_robot_endpoints() -> None:
    with http_fake() as fake:
        robot = HttpRobot(fake.url, "r 1", TOKEN)
        robot.telemetry(lane=["a", "b"], progress=0.25, distance=1.5)
        robot.checkpoint("b")
        fake.commands = [[{"id": 4, "kind": "stop"}]]
        assert robot.commands(after=3, wait=2) == [{"id": 4, "kind": "stop"}]
        robot.ack([4])
        assert fake.requests == [
            (
                "POST",
                "/fleet/robots/r%201/telemetry",
                {"marker": None, "lane": ["a", "b"], "progress": 0.25, "distance": 1.5},
            ),
            ("POST", "/fleet/robots/r%201/checkpoint", {"marker": "b"}),
            ("GET", "/fleet/robots/r%201/commands?after=3&wait=2", None),
            ("POST", "/fleet/robots/r%201/acks", {"ids": [4]}),
        ]
        with pytest.raises(RobotRefused):
            HttpRobot(fake.url, "r1", "wrong").checkpoint("a")


def test_http_robot_signs_with_growing_counter_under_its_nonce() -> None:
    with http_fake() as fake:
        fake.key = KEY
        robot = HttpRobot(fake.url, "r1", TOKEN, key=KEY)
        robot.checkpoint("a")
        robot.checkpoint("a")
        assert [path for _, path, _ in fake.requests] == [
            "/fleet/robots/r1/nonce",
            "/fleet/robots/r1/checkpoint",
            "/fleet/robots/r1/checkpoint",
        ]
        bodies = [body for _, _, body in fake.requests[1:]]
        assert all(verify(body, KEY, fake.nonce) for body in bodies)
        assert bodies[0]["n"] < bodies[1]["n"]
        fake.nonces += 1  # corral restarted: it knows another nonce now
        robot.checkpoint("b")
        assert [path for _, path, _ in fake.requests[3:]] == [
            "/fleet/robots/r1/checkpoint",  # refused: signed under the old nonce
            "/fleet/robots/r1/nonce",
            "/fleet/robots/r1/checkpoint",
        ]
        assert verify(fake.requests[-1][2], KEY, fake.nonce)


def test_http_poll_forever_estop_first_and_no_duplicates() -> None:
    with http_fake() as fake:
        fake.commands = [
            [{"id": 1, "kind": "move", "lane": ["a", "b"]}, {"id": 2, "kind": "estop"}],
            [{"id": 1, "kind": "move", "lane": ["a", "b"]}],  # re-sent: not handled again
            [{"id": 3, "kind": "resume"}],
        ]
        handled: list[int] = []
        stop = threading.Event()

        def handler(command: dict[str, Any]) -> None:
            handled.append(command["id"])
            if command["id"] == 3:
                stop.set()

        HttpRobot(fake.url, "r1", TOKEN).poll_forever(handler, wait=1, stop=stop)
        assert handled == [2, 1, 3]
        acks = [body["ids"] for method, path, body in fake.requests if path.endswith("/acks")]
        assert acks == [[2], [1], [1], [3]]
        polls = [path for _, path, _ in fake.requests if "/commands?" in path]
        assert polls[:3] == [
            "/fleet/robots/r1/commands?after=0&wait=1",
            "/fleet/robots/r1/commands?after=2&wait=1",
            "/fleet/robots/r1/commands?after=2&wait=1",
        ]


# -- the simulator ---------------------------------------------------------------------

MAP = {
    "name": "lab",
    "markers": [
        {"id": "a", "x": 0, "y": 0},
        {"id": "b", "x": 0.5, "y": 0},
        {"id": "c", "x": 0.5, "y": 0.5},
    ],
    "lanes": [["a", "b"], {"from": "b", "to": "c", "oneway": True}],
}


def test_map_and_start_markers() -> None:
    fmap = parse_map(MAP)
    assert fmap.length("a", "b") == fmap.length("b", "a") == 0.5
    assert fmap.length("c", "b") == 0.5
    assert fmap.lanes == [("a", "b"), ("b", "c")]
    assert pick_starts(fmap, 3) == ["a", "b", "c"]
    assert pick_starts(fmap, 1, ["c"]) == ["c"]
    with pytest.raises(ValueError, match="distinct"):
        pick_starts(fmap, 2, ["a", "a"])
    with pytest.raises(ValueError, match="only 3 markers"):
        pick_starts(fmap, 4)


async def test_register_then_rotate_when_it_exists() -> None:
    with http_fake() as fake:
        fake.existing = {"sim-2"}
        assert await register(fake.url, "admin", "sim-1", "lab", "a", 1) == ("t-new", None)
        assert await register(fake.url, "admin", "sim-2", "lab", "b", 2) == ("t-rotated", KEY)
        assert [(m, p) for m, p, _ in fake.requests] == [
            ("POST", "/fleet/robots"),
            ("POST", "/fleet/robots"),
            ("POST", "/fleet/robots/sim-2/rotate"),
        ]
        assert fake.requests[0][2] == {"name": "sim-1", "marker": "a", "priority": 1, "map": "lab"}


async def test_sim_robot_moves_stops_and_resumes() -> None:
    fleet = FakeFleet()
    records: list[dict[str, Any]] = []
    async with serving(fleet.handler) as url:
        robot = SimRobot(
            RobotClient(url, "r1", TOKEN),
            "a",
            parse_map(MAP),
            speed=5.0,
            rate=50.0,
            jitter=0.0,
            record=lambda name, telemetry: records.append(telemetry),
        )
        robot.start()
        try:
            assert (await fleet.next())[1] == {"type": "telemetry", "marker": "a", "lane": None}
            await fleet.command(1, "move", marker="b", lane=["a", "b"])
            assert (await fleet.next())[1] == ack(1)  # accepted at once, driven afterwards
            moving = [(await fleet.next())[1] for _ in range(3)]
            assert all(m["lane"] == ["a", "b"] and m["marker"] is None for m in moving)
            assert [m["progress"] for m in moving] == sorted(m["progress"] for m in moving)
            _, arrived = await fleet.next("checkpoint")
            assert arrived == {"type": "checkpoint", "marker": "b"}
            assert (await fleet.next())[1] == {"type": "telemetry", "marker": "b", "lane": None}
            assert robot.stats.reached == ["b"]

            await fleet.command(2, "stop")
            await fleet.command(3, "move", marker="c", lane=["b", "c"])
            await until(lambda: robot.stats.commands == 3)
            await asyncio.sleep(0.2)
            assert robot.stats.marker == "b"  # frozen: no motion until resume
            await fleet.command(4, "resume")
            await until(lambda: robot.stats.reached == ["b", "c"])
            assert records[0] == {"marker": "a", "lane": None}
            assert records[-1] == {"marker": "c", "lane": None}
        finally:
            await robot.stop()


async def test_run_fleet_connects_robots_and_survives_drops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def fake_register(*args: Any) -> tuple[str, str | None]:
        return TOKEN, None

    monkeypatch.setattr("corral.robot.sim.register", fake_register)
    welcomed: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        hello = json.loads(await ws.recv())
        welcomed.append(hello["robot"])
        await ws.send(json.dumps({"type": "welcome", "robot": hello["robot"], "heartbeat": 30}))
        async for _ in ws:
            pass

    lines: list[str] = []
    async with serving(handler) as url:
        sim: FleetSim = await run_fleet(
            url, "admin", MAP, 3, disconnect_every=0.2, log=lines.append, connect_timeout=5
        )
        try:
            assert sim.connected() == 3
            assert {s.start for s in sim.stats.values()} == {"a", "b", "c"}
            await until(lambda: all(s.reconnects >= 1 for s in sim.stats.values()))
        finally:
            await sim.stop()
    assert sorted(set(welcomed)) == ["sim-1", "sim-2", "sim-3"]
    assert "sim-1 connected" in lines
    assert "sim-1 reconnected" in lines


async def test_token_goes_in_the_header_only() -> None:
    # the client sends nothing but the bearer token as a credential (no token in the query)
    fleet = FakeFleet()
    seen: list[Headers] = []

    def look(ws: ServerConnection, request: Request) -> Response | None:
        seen.append(request.headers)
        return None

    async with serving(fleet.handler, process_request=look) as url:
        client = RobotClient(url, "r1", TOKEN)
        async with running(client):
            await asyncio.wait_for(client.connected.wait(), 5)
    assert seen[0]["Authorization"] == f"Bearer {TOKEN}"
    assert fleet.conns[0].request is not None
    assert "token=" not in fleet.conns[0].request.path
