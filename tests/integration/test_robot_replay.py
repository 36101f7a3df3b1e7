"""Signed robot messages cannot be replayed, against a real corral: a recorded hello and
telemetry sent again on a fresh socket, after corral restarted, or to the HTTP channel are
refused, and the robot's state keeps what the robot really said last.

The robot side here signs by hand, as docs/fleet-protocol.md says: HMAC-SHA256 with the
bytes of the hex key, over the nonce, a newline and the canonical JSON.
"""

import asyncio
import hmac
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from tests.support.robot_socket import connect_robot, expect
from tests.support.server import ADMIN, ThreadServer

from corral.config import Settings
from corral.model.fleet_map import grid_map


def _settings(home: Path) -> Settings:
    return Settings(
        home=home, bootstrap_token=ADMIN, local_docker_url="", robot_heartbeat_seconds=30.0
    )


def _signed(message: dict[str, Any], key: str, n: int, nonce: str) -> str:
    body = {**message, "n": n}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    body["sig"] = hmac.new(bytes.fromhex(key), nonce.encode() + b"\n" + canonical, "sha256")
    body["sig"] = body["sig"].hexdigest()
    return json.dumps(body)


async def _socket(url: str, token: str) -> tuple[Any, str]:
    """A socket and the nonce of its challenge."""
    ws = await connect_robot(url, token)
    return ws, (await expect(ws, "challenge"))["nonce"]


async def _refused_and_closed(ws: Any) -> None:
    assert (await expect(ws, "error"))["code"] == "bad_signature"
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 30)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403


def _battery(server: ThreadServer, name: str) -> Any:
    with server.client() as api:
        return api.get(f"/fleet/robots/{name}").json()["telemetry"].get("battery")


def test_a_recorded_hello_and_telemetry_are_refused_on_a_fresh_socket(tmp_path: Path) -> None:
    recorded: list[str] = []
    with ThreadServer(_settings(tmp_path)) as server, server.client() as api:
        assert api.post("/fleet/maps", json=grid_map("r", 2, 2).as_dict()).status_code == 201
        robot = api.post("/fleet/robots", json={"name": "s", "map": "r", "signed": True}).json()
        token, key = robot["token"], robot["key"]

        async def first() -> None:
            ws, nonce = await _socket(server.url, token)
            recorded.append(_signed({"type": "hello", "robot": "s"}, key, 1, nonce))
            recorded.append(_signed({"type": "telemetry", "battery": 40}, key, 2, nonce))
            for text in recorded:
                await ws.send(text)
            await expect(ws, "welcome")
            await ws.send(_signed({"type": "telemetry", "battery": 33}, key, 3, nonce))
            await ws.send(_signed({"type": "ping"}, key, 4, nonce))
            await expect(ws, "pong")
            await ws.close()

        async def replay() -> None:
            ws, _ = await _socket(server.url, token)
            await ws.send(recorded[0])  # the recorded hello
            await _refused_and_closed(ws)
            # a good hello, then the recorded telemetry
            ws, nonce = await _socket(server.url, token)
            await ws.send(_signed({"type": "hello", "robot": "s"}, key, 1, nonce))
            await expect(ws, "welcome")
            await ws.send(recorded[1])
            assert (await expect(ws, "error"))["code"] == "bad_signature"
            await ws.close()

        asyncio.run(first())
        assert _battery(server, "s") == 33
        asyncio.run(replay())
        assert _battery(server, "s") == 33, "the replayed telemetry changed nothing"

    # corral restarted on the same database: the recording is still worth nothing
    with ThreadServer(_settings(tmp_path)) as server:

        async def after_restart() -> None:
            ws, _ = await _socket(server.url, token)
            await ws.send(recorded[0])
            await _refused_and_closed(ws)

        asyncio.run(after_restart())
        assert _battery(server, "s") is None


def test_a_recorded_http_message_is_refused_with_401(tmp_path: Path) -> None:
    with ThreadServer(_settings(tmp_path)) as server, server.client() as api:
        assert api.post("/fleet/maps", json=grid_map("h", 2, 2).as_dict()).status_code == 201
        robot = api.post("/fleet/robots", json={"name": "h", "map": "h", "signed": True}).json()
        key = robot["key"]
        mine = httpx.Client(
            base_url=f"{server.url}/fleet/robots/h",
            headers={
                "Authorization": f"Bearer {robot['token']}",
                "Content-Type": "application/json",
            },
        )
        with mine:
            unsigned = mine.post("/telemetry", json={"battery": 50})
            assert unsigned.status_code == 401
            assert unsigned.json()["error"]["detail"]["code"] == "bad_signature"
            nonce = mine.post("/nonce").json()["nonce"]
            recorded = _signed({"battery": 40}, key, 1, nonce)
            assert mine.post("/telemetry", content=recorded).status_code == 204
            fresh = _signed({"battery": 33}, key, 2, nonce)
            assert mine.post("/telemetry", content=fresh).status_code == 204
            again = mine.post("/telemetry", content=recorded)
            assert again.status_code == 401, again.text
            assert mine.post("/nonce").json()["nonce"] != nonce
            assert mine.post("/telemetry", content=recorded).status_code == 401
            wrong = _signed({"battery": 20}, "00" * 32, 3, nonce)
            assert mine.post("/telemetry", content=wrong).status_code == 401
        assert _battery(server, "h") == 33
