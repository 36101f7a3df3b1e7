"""A robot's link as an operator sees it, against a real corral over real sockets: a socket's
end (clean, cut, or silent) ends `connected`, a long poll counts as connected, and a new
credential is one step that works whether the robot is connected, gone, or never came.
"""

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from tests.support.robot_socket import connect_robot, expect
from tests.support.server import ADMIN, ThreadServer, wait_until

from corral.config import Settings
from corral.model.fleet_map import grid_map

LONG_HEARTBEAT = 600.0  # far longer than any wait here: only the socket's end can explain it


def _server(tmp_path: Path, heartbeat: float) -> ThreadServer:
    settings = Settings(
        home=tmp_path,
        bootstrap_token=ADMIN,
        local_docker_url="",
        robot_heartbeat_seconds=heartbeat,
    )
    return ThreadServer(settings)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    with _server(tmp_path, LONG_HEARTBEAT) as running:
        yield running


def _register(api: httpx.Client, name: str, **extra: Any) -> dict[str, Any]:
    if api.get("/fleet/maps/links").status_code == 404:
        assert api.post("/fleet/maps", json=grid_map("links", 3, 3).as_dict()).status_code == 201
    answer = api.post("/fleet/robots", json={"name": name, "map": "links", **extra})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def _greeted(url: str, token: str, name: str) -> Any:
    ws = await connect_robot(url, token)
    await ws.send(json.dumps({"type": "hello", "robot": name}))
    await expect(ws, "welcome")
    return ws


def _connected(api: httpx.Client, name: str) -> bool:
    return bool(api.get(f"/fleet/robots/{name}").json()["connected"])


async def _until(check: Any, what: str) -> None:
    await asyncio.to_thread(wait_until, check, what)


def test_a_socket_closed_or_cut_is_no_longer_connected(server: ThreadServer) -> None:
    with server.client() as api:
        robot = _register(api, "r1")

        async def scenario() -> None:
            ws = await _greeted(server.url, robot["token"], "r1")
            assert _connected(api, "r1")
            await ws.close()
            await _until(lambda: not _connected(api, "r1"), "a closed socket noticed")

            ws = await _greeted(server.url, robot["token"], "r1")
            assert _connected(api, "r1")
            ws.transport.abort()  # the TCP link dropped: no closing handshake
            await _until(lambda: not _connected(api, "r1"), "a cut socket noticed")

        asyncio.run(scenario())
        # still online: its heartbeat has not run out, and it keeps what it holds
        assert api.get("/fleet/robots/r1").json()["state"] == "online"


def test_a_silent_socket_is_closed_after_one_heartbeat(tmp_path: Path) -> None:
    with _server(tmp_path, 1.0) as server, server.client() as api:
        robot = _register(api, "quiet")

        async def scenario() -> None:
            ws = await _greeted(server.url, robot["token"], "quiet")
            error = await expect(ws, "error")
            assert error["code"] == "timeout", error
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4408

        asyncio.run(scenario())
        assert not _connected(api, "quiet")
        wait_until(lambda: api.get("/fleet/robots/quiet").json()["state"] == "offline", "offline")


def test_a_robot_that_only_reports_telemetry_is_not_silent(tmp_path: Path) -> None:
    """Telemetry is handled as the socket reads it (no wake-up of the session): it still
    counts as heard, so a robot that sends nothing else keeps its socket for three
    heartbeats, and its latest report is what an operator sees."""
    with _server(tmp_path, 1.0) as server, server.client() as api:
        robot = _register(api, "chatty")

        async def scenario() -> None:
            ws = await _greeted(server.url, robot["token"], "chatty")
            for n in range(16):  # 3.2 s: three heartbeats of 1 s
                spot = "r1c1" if n % 2 else "r1c2"
                await ws.send(json.dumps({"type": "telemetry", "marker": spot, "battery": n}))
                try:
                    said = await asyncio.wait_for(ws.recv(), 0.2)
                except TimeoutError:
                    continue  # nothing said, as it should be
                raise AssertionError(f"corral said {said!r} to a robot reporting")
            assert _connected(api, "chatty")
            await ws.close()

        asyncio.run(scenario())
        doc = api.get("/fleet/robots/chatty").json()
        assert doc["telemetry"]["battery"] == 15, doc
        assert doc["telemetry"]["marker"] == "r1c1", doc


def test_a_long_poll_counts_as_connected_while_it_waits(server: ThreadServer) -> None:
    with server.client() as api:
        robot = _register(api, "poller")
        assert not _connected(api, "poller")
        answers: list[Any] = []

        def poll() -> None:
            answers.append(
                httpx.get(
                    f"{server.url}/fleet/robots/poller/commands",
                    params={"wait": 30},
                    headers={"Authorization": f"Bearer {robot['token']}"},
                    timeout=60,
                ).json()
            )

        waiting = threading.Thread(target=poll)
        waiting.start()
        wait_until(lambda: _connected(api, "poller"), "the long poll counted as connected")
        command = api.post("/fleet/robots/poller/commands", json={"kind": "stop"}).json()
        waiting.join(60)
        assert [c["id"] for c in answers[0]] == [command["id"]]
        assert not _connected(api, "poller")


def test_rotate_gives_a_working_credential_after_the_robot_left(server: ThreadServer) -> None:
    with server.client() as api:
        robot = _register(api, "r2")

        async def gone() -> None:
            ws = await _greeted(server.url, robot["token"], "r2")
            ws.transport.abort()

        asyncio.run(gone())
        wait_until(lambda: not _connected(api, "r2"), "the cut socket noticed")
        rotated = api.post("/fleet/robots/r2/rotate")
        assert rotated.status_code == 200, rotated.text
        fresh = rotated.json()
        assert fresh["token"] != robot["token"]

        async def check() -> None:
            old = await connect_robot(server.url, robot["token"])
            assert (await expect(old, "error"))["code"] == "unauthorized"
            new = await _greeted(server.url, fresh["token"], "r2")
            await new.close()

        asyncio.run(check())
        tokens = {t["id"]: t for t in api.get("/tokens").json()}
        robot_tokens = [t for t in tokens.values() if t["subject"] == "r2"]
        assert [t["active"] for t in robot_tokens] == [False, True]

        signed = _register(api, "r4", signed=True)
        again = api.post("/fleet/robots/r4/rotate").json()
        assert isinstance(again["key"], str)
        assert again["key"] != signed["key"]


def test_rotate_cuts_off_a_robot_connected_with_the_old_credential(server: ThreadServer) -> None:
    with server.client() as api:
        robot = _register(api, "r3")

        async def scenario() -> None:
            ws = await _greeted(server.url, robot["token"], "r3")
            rotated = await asyncio.to_thread(api.post, "/fleet/robots/r3/rotate")
            assert rotated.status_code == 200, rotated.text
            assert (await expect(ws, "error"))["code"] == "unauthorized"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4401
            assert not _connected(api, "r3")
            new = await _greeted(server.url, rotated.json()["token"], "r3")
            assert _connected(api, "r3")
            await new.close()

        asyncio.run(scenario())


def test_every_input_on_the_socket_gets_an_answer_and_the_socket_stays(
    server: ThreadServer,
) -> None:
    with server.client() as api:
        robot = _register(api, "talker")
        _register(api, "other")
        command = api.post("/fleet/robots/talker/commands", json={"kind": "stop"}).json()["id"]

        async def scenario() -> None:
            ws = await _greeted(server.url, robot["token"], "talker")
            await ws.send(b"\x00\x01binary")
            error = await expect(ws, "error")
            assert error["code"] == "invalid"
            assert "text" in error["message"]
            await ws.send(json.dumps({"type": "hello", "robot": "other"}))
            error = await expect(ws, "error")
            assert error["code"] == "forbidden"
            assert "other" in error["message"]
            await ws.send(json.dumps({"type": "ack", "id": 987654}))
            error = await expect(ws, "error")
            assert error["code"] == "unknown_command"
            assert "987654" in error["message"]
            await ws.send(json.dumps({"type": "ack", "id": command}))
            await ws.send(json.dumps({"type": "ping"}))
            await expect(ws, "pong")  # still open, and the good ack is stored
            await ws.close()

        asyncio.run(scenario())
        log = api.get("/fleet/robots/talker/commands/log").json()
        assert [c["acked_at"] is not None for c in log] == [True]
        headers = {"Authorization": f"Bearer {robot['token']}"}
        unknown = httpx.post(
            f"{server.url}/fleet/robots/talker/acks", json={"ids": [987654]}, headers=headers
        )
        assert unknown.status_code == 404
        assert "987654" in unknown.json()["error"]["message"]
