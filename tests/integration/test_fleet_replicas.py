"""Robots held by whichever of two `corral serve` replicas (one PostgreSQL) they reach:
an operator's command sent through one replica reaches a robot on the other and its ack
is seen through the first; every replica shows (and streams) every robot's position;
killing the leader under load leaves robots connected (or back within moments), no
reservation granted to two robots, no command lost or doubled.

Times are printed, not asserted; bench/fleet.py keeps durations.
"""

import asyncio
import contextlib
import json
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from tests.support.leadership import leaders
from tests.support.robot_peer import Ledger, PeerRobot
from tests.support.server import ADMIN, ServeProcess, corral_command, wait_until
from tests.support.shuttles import SHUTTLES, keep_shuttling

from corral.model.fleet_map import grid_map
from corral.robot import RobotClient

HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def _env(pg_url: str) -> dict[str, str]:
    return {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_DATABASE_URL": pg_url,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_MDNS_ENABLED": "false",
        "CORRAL_REPLICA_POLL_SECONDS": "1.0",  # a loaded CI machine: see docs/replicas.md
    }


def _connected(metrics: str, channel: str) -> dict[str, float]:
    """corral_fleet_robots_connected for `channel`, by replica, from a /metrics text."""
    out = {}
    for line in metrics.splitlines():
        if line.startswith("corral_fleet_robots_connected{") and f'channel="{channel}"' in line:
            replica = line.split('replica="')[1].split('"')[0]
            out[replica] = float(line.rsplit(" ", 1)[1])
    return out


async def _sse(answer: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """The (event, data) frames of a server-sent event stream; a comment line (a quiet
    turn) as ("", None)."""
    kind, data = "message", ""
    async for line in answer.aiter_lines():
        if line.startswith(":"):
            yield "", None
        elif line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            data += line[len("data: ") :]
        elif not line and data:
            yield kind, json.loads(data)
            kind, data = "message", ""


def test_a_robot_on_one_replica_gets_a_command_sent_through_the_other(
    tmp_path: Path, pg_url: str
) -> None:
    env = _env(pg_url)
    first = ServeProcess(tmp_path / "a", env).start()
    with httpx.Client(base_url=first.url, headers=HEADERS, timeout=60) as a:
        wait_until(lambda: len(leaders(a)) == 1, "the first replica leads", 30)
    second = ServeProcess(tmp_path / "b", env).start()

    async def scenario() -> None:
        async with (
            httpx.AsyncClient(base_url=first.url, headers=HEADERS, timeout=60) as a,
            httpx.AsyncClient(base_url=second.url, headers=HEADERS, timeout=60) as b,
        ):
            grid = grid_map("yard", 2, 3).as_dict()
            assert (await a.post("/fleet/maps", json=grid)).status_code == 201
            made = await a.post("/fleet/robots", json={"name": "far", "map": "yard"})
            assert made.status_code == 201, made.text
            # The robot knows only the second replica, which does not lead.
            robot = RobotClient(second.url, "far", made.json()["token"])
            got: list[Any] = []

            async def handler(command: dict[str, Any]) -> None:
                got.append(command["payload"]["n"])

            robot.on_command(handler)
            running = asyncio.create_task(robot.run())
            try:
                await asyncio.wait_for(robot.connected.wait(), 30)
                await robot.telemetry(marker="r2c1", battery=81)

                async def seen_through(api: httpx.AsyncClient) -> dict[str, Any]:
                    async with asyncio.timeout(30):
                        while True:
                            view = (await api.get("/fleet/robots/far")).json()
                            # The report shows at once; the leader places the robot from it
                            # on its own deciding task, a moment later.
                            placed = view["marker"] == "r2c1" and view["state"] == "online"
                            heard = view["telemetry"].get("battery") == 81 and view["connected"]
                            if heard and placed:
                                return dict(view)
                            await asyncio.sleep(0.1)

                for api in (a, b):  # every replica shows where it is
                    view = await seen_through(api)
                    assert view["telemetry"]["marker"] == "r2c1"
                    assert view["state"] == "online"
                    assert view["marker"] == "r2c1", "the leader placed it from the report"

                # The live stream, asked of the follower (which passes the leader's on):
                # the robot's document at once, then its next report.
                async with b.stream("GET", "/fleet/stream", params={"every": 0.2}) as live:
                    assert live.status_code == 200
                    frames = _sse(live)
                    kind, first_frame = "", None
                    while not kind:  # past the comment that opens it
                        kind, first_frame = await anext(frames)
                    assert kind == "robots"
                    [doc] = [d for d in first_frame if d["name"] == "far"]
                    assert doc["telemetry"]["battery"] == 81
                    await robot.telemetry(marker="r2c1", battery=77)
                    news: list[Any] = []
                    async with asyncio.timeout(30):
                        async for kind, data in frames:
                            if kind == "robots":
                                news += [d for d in data if d["name"] == "far"]
                            if news and news[-1]["telemetry"]["battery"] == 77:
                                break
                    assert news, "the stream went on to the robot's next report"
                    assert news[-1]["telemetry"]["battery"] == 77
                # The same from a shell: `corral robot watch` through the follower.
                watcher = await asyncio.create_subprocess_exec(
                    *corral_command(),
                    *("robot", "watch", "--every", "0.2"),
                    env={**os.environ, "CORRAL_URL": second.url, "CORRAL_TOKEN": ADMIN},
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                try:
                    assert watcher.stdout is not None
                    line = (await asyncio.wait_for(watcher.stdout.readline(), 30)).decode()
                    assert line.split()[:4] == ["far", "online", "yard", "r2c1"], line
                    assert "77%" in line
                finally:
                    watcher.terminate()
                    await asyncio.wait_for(watcher.wait(), 10)
                for bad in ("0", "11", "nan", "soon"):
                    refused = await b.get("/fleet/stream", params={"every": bad})
                    assert refused.status_code == 422, (bad, refused.text)
                    assert "every" in refused.text

                for n in (1, 2, 3):
                    sent = await a.post(
                        "/fleet/robots/far/commands", json={"kind": "custom", "payload": {"n": n}}
                    )
                    assert sent.status_code == 201, sent.text
                    async with asyncio.timeout(30):
                        while True:  # the robot has it, and the first replica its ack
                            log = (await a.get("/fleet/robots/far/commands/log")).json()
                            if n in got and all(c["acked_at"] for c in log):
                                break
                            await asyncio.sleep(0.05)
                assert got == [1, 2, 3], "each command once, in order"

                # The socket is counted by the replica that holds it.
                held_a = _connected((await a.get("/metrics")).text, "websocket")
                held_b = _connected((await b.get("/metrics")).text, "websocket")
                assert sum(held_a.values()) == 0
                assert sum(held_b.values()) == 1
                assert robot.reconnects == 0
            finally:
                await robot.close()
                await asyncio.gather(running, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        second.stop()
        first.stop()


# Four robots shuttle across a 5x5 grid on crossing routes; twenty more stand on a dock
# map and only report and take operator commands.
DOCKED = 20


async def _orders(api: httpx.AsyncClient, names: list[str], stop: asyncio.Event) -> int:
    """An operator's custom commands to random robots, every 0.1 s; how many were taken."""
    taken = 0
    while not stop.is_set():
        name = random.choice(names)
        with contextlib.suppress(httpx.HTTPError):
            sent = await api.post(
                f"/fleet/robots/{name}/commands", json={"kind": "custom", "payload": {}}
            )
            taken += sent.status_code == 201
        await asyncio.sleep(0.1)
    return taken


def test_killing_the_leader_under_load_loses_no_command_and_doubles_no_grant(
    tmp_path: Path, pg_url: str
) -> None:
    env = {**_env(pg_url), "CORRAL_ROBOT_HEARTBEAT_SECONDS": "3"}
    first = ServeProcess(tmp_path / "a", env).start()
    with httpx.Client(base_url=first.url, headers=HEADERS, timeout=60) as a:
        wait_until(lambda: len(leaders(a)) == 1, "the first replica leads", 30)
    second = ServeProcess(tmp_path / "b", env).start()
    ledger, dock = Ledger(), Ledger()  # one per map: where robots stand is per map
    robots: dict[str, PeerRobot] = {}

    async def scenario() -> tuple[int, int]:
        stop, quiet = asyncio.Event(), asyncio.Event()
        trips = [0]
        async with httpx.AsyncClient(base_url=second.url, headers=HEADERS, timeout=30) as b:
            for fmap in (grid_map("yard", 5, 5), grid_map("dock", 5, 4)):
                assert (await b.post("/fleet/maps", json=fmap.as_dict())).is_success
            starts = {n: ("yard", e[0]) for n, e in SHUTTLES.items()}
            docks = [f"r{i // 5}c{i % 5}" for i in range(DOCKED)]
            starts |= {f"d{i}": ("dock", marker) for i, marker in enumerate(docks)}
            for i, (name, (map_name, marker)) in enumerate(starts.items()):
                made = await b.post(
                    "/fleet/robots", json={"name": name, "map": map_name, "marker": marker}
                )
                assert made.status_code == 201, made.text
                # half on each replica; one that loses its replica tries the other
                home, other = (first.url, second.url) if i % 2 else (second.url, first.url)
                book = ledger if map_name == "yard" else dock
                robots[name] = PeerRobot(
                    home, name, made.json()["token"], marker, book, also=(other,)
                )
            running = [asyncio.create_task(r.run(stop)) for r in robots.values()]
            driver = asyncio.create_task(keep_shuttling(b, quiet, trips))
            operator = asyncio.create_task(_orders(b, list(robots), quiet))
            watching = asyncio.create_task(_watch(b, quiet))
            watcher = await asyncio.create_subprocess_exec(  # `corral robot watch` too
                *corral_command(),
                *("robot", "watch", "--every", "0.2"),
                env={**os.environ, "CORRAL_URL": second.url, "CORRAL_TOKEN": ADMIN},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            printed: list[tuple[float, str]] = []
            reading = asyncio.create_task(_lines(watcher, printed))
            try:
                await asyncio.sleep(3)  # missions under way, commands flowing
                assert first.proc is not None
                os.kill(first.proc.pid, signal.SIGKILL)
                killed = time.monotonic()
                for _ in range(600):
                    if second.url in await _leader_urls(b):
                        break
                    await asyncio.sleep(0.1)
                led = time.monotonic()
                print(f"the second replica leads {led - killed:.2f} s after the kill")
                await asyncio.sleep(4)  # missions and commands on the new leader
                quiet.set()
                await driver
                ordered = await operator
                firsts = await watching
                # The live stream through the second replica ended with the first (the
                # leader it passed on) and came back from the second, whole both times.
                print(f"live stream connections, robots in each first frame: {firsts}")
                assert len(firsts) >= 2
                assert set(firsts) == {len(robots)}
                # The CLI followed the stream to the new leader: every robot printed again.
                async with asyncio.timeout(30):
                    while True:
                        if {n for at, n in printed if at > led} == set(robots):
                            break
                        await asyncio.sleep(0.2)
                # the last missions end, and every command is acknowledged
                async with asyncio.timeout(60):
                    while True:
                        active = (await b.get("/fleet/missions", params={"state": "active"})).json()
                        logs = {
                            name: (await b.get(f"/fleet/robots/{name}/commands/log")).json()
                            for name in robots
                        }
                        if not active and all(c["acked_at"] for log in logs.values() for c in log):
                            break
                        await asyncio.sleep(0.5)
            finally:
                quiet.set()
                stop.set()
                if watcher.returncode is None:
                    watcher.terminate()
                await asyncio.wait_for(watcher.wait(), 10)
                await asyncio.gather(
                    driver, operator, watching, reading, *running, return_exceptions=True
                )
            for name, log in logs.items():
                stored = sorted(c["id"] for c in log)
                book = ledger if name in SHUTTLES else dock
                received = sorted(c["id"] for c in book.commands[name])
                assert received == stored, f"{name}: stored {stored}, received {received}"
            return trips[0], ordered

    try:
        trips, ordered = asyncio.run(scenario())
        moves = sum(c.get("kind") == "move" for cs in ledger.commands.values() for c in cs)
        gaps = sorted(round(g, 2) for r in robots.values() for g in r.gaps)
        stayed = sum(r.connections == 1 for r in robots.values())
        print(f"{trips} missions, {moves} moves, {ordered} operator commands taken")
        print(f"{stayed} robots never reconnected; reconnection gaps (s): {gaps}")
        assert moves > 10, "the shuttles moved"
        assert ledger.shared == [], "no marker or lane granted to two robots at once"
        assert dock.shared == [], "no two robots on one dock marker"
        assert ledger.stale_moves == [], "every move starts where its robot stands"
        assert ledger.doubled_moves() == [], "no step of a mission commanded twice"
        assert stayed >= len(robots) // 2, "the robots on the surviving replica stayed"
        assert all(r.connections >= 1 for r in robots.values())
    finally:
        second.stop()
        first.stop()


async def _lines(process: asyncio.subprocess.Process, into: list[tuple[float, str]]) -> None:
    """Each line `corral robot watch` prints: (when, the robot it names), until it ends."""
    assert process.stdout is not None
    while line := await process.stdout.readline():
        words = line.decode().split()
        if words:
            into.append((time.monotonic(), words[0]))


async def _watch(api: httpx.AsyncClient, stop: asyncio.Event) -> list[int]:
    """Follow GET /fleet/stream until `stop`, connecting again whenever it ends (a 503
    while no replica leads is tried again); how many robots each connection's first frame
    held."""
    firsts: list[int] = []
    while not stop.is_set():
        with contextlib.suppress(httpx.HTTPError):
            async with api.stream("GET", "/fleet/stream", params={"every": 0.2}) as live:
                if live.status_code == 200:
                    first = True
                    async for kind, data in _sse(live):
                        if first and kind == "robots":
                            firsts.append(len(data))
                            first = False
                        if stop.is_set():
                            break
        await asyncio.sleep(0.2)
    return firsts


async def _leader_urls(api: httpx.AsyncClient) -> list[str]:
    with contextlib.suppress(httpx.HTTPError):
        answer = await api.get("/replicas")
        if answer.is_success:
            return [r["url"] for r in answer.json() if r["leader"]]
    return []
