"""The robot fleet against a real corral: simulated robots over real WebSockets crossing a
grid without ever sharing a marker or lane, a deadlock broken without an operator, the
HTTP channel, the emergency stop, signatures, tasks, and bad input of every kind.
"""

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from tests.support.fleet_maps import corridor
from tests.support.robot_socket import connect_robot, expect
from tests.support.server import ADMIN, ThreadServer, wait_until

from corral.config import Settings
from corral.model.fleet_map import grid_map, lane_key
from corral.robot.signing import sign
from corral.robot.sim import run_fleet


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    settings = Settings(
        home=tmp_path, bootstrap_token=ADMIN, local_docker_url="", robot_heartbeat_seconds=2.0
    )
    with ThreadServer(settings) as running:
        yield running


class Occupancy:
    """Checks, at every telemetry the robots send, that no two of them report the same
    marker or the same lane."""

    def __init__(self) -> None:
        self.where: dict[str, tuple[str, str]] = {}
        self.violations: list[str] = []
        self.reports = 0

    def record(self, robot: str, telemetry: dict[str, Any]) -> None:
        self.reports += 1
        if telemetry.get("marker"):
            spot = ("marker", str(telemetry["marker"]))
        elif telemetry.get("lane"):
            a, b = telemetry["lane"]
            spot = ("lane", lane_key(a, b))
        else:
            return
        self.where[robot] = spot
        others = [r for r, s in self.where.items() if s == spot and r != robot]
        if others:
            self.violations.append(f"{robot} and {others} both on {spot}")


def _missions(api: httpx.Client) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.get("/fleet/missions").json()
    return found


def _all_done(api: httpx.Client, count: int) -> bool:
    missions = _missions(api)
    return len(missions) == count and all(m["state"] == "done" for m in missions)


async def _missions_done(api: httpx.Client, count: int, limit: float) -> None:
    """Until `count` missions exist and all are done; fails with them after `limit` s."""
    deadline = time.monotonic() + limit
    while not await asyncio.to_thread(_all_done, api, count):
        assert time.monotonic() < deadline, _missions(api)
        await asyncio.sleep(0.1)


def test_twenty_robots_cross_a_grid_without_sharing_a_marker_or_lane(
    server: ThreadServer,
) -> None:
    fmap = grid_map("grid", 12, 12).as_dict()
    # Ten robots drive west -> east along rows 1..10, ten north -> south along columns 1..10:
    # every route crosses ten others.
    starts = [f"r{i}c0" for i in range(1, 11)] + [f"r0c{j}" for j in range(1, 11)]
    goals = [f"r{i}c11" for i in range(1, 11)] + [f"r11c{j}" for j in range(1, 11)]
    occupancy = Occupancy()

    async def scenario() -> None:
        with server.client() as api:
            assert api.post("/fleet/maps", json=fmap).status_code == 201
            sim = await run_fleet(
                server.url,
                ADMIN,
                fmap,
                20,
                prefix="x",
                speed=25.0,
                rate=20.0,
                jitter=0.3,
                start_markers=starts,
                record=occupancy.record,
                seed=7,
            )
            try:
                for i, goal in enumerate(goals, start=1):
                    answer = await asyncio.to_thread(
                        api.post, "/fleet/missions", json={"robot": f"x-{i}", "goal": goal}
                    )
                    assert answer.status_code == 201, answer.text
                await _missions_done(api, 20, 120)
            finally:
                await sim.stop()
            robots = {r["name"]: r for r in api.get("/fleet/robots").json()}
            for i, goal in enumerate(goals, start=1):
                assert robots[f"x-{i}"]["marker"] == goal
            traffic = api.get("/fleet/maps/grid/traffic").json()
            assert sorted(traffic["holds"].values()) == sorted(robots), "each holds one marker"

    asyncio.run(scenario())
    assert occupancy.reports > 400
    assert occupancy.violations == []


def test_a_head_on_deadlock_resolves_without_an_operator(server: ThreadServer) -> None:
    occupancy = Occupancy()

    async def scenario() -> None:
        with server.client() as api:
            assert api.post("/fleet/maps", json=corridor()).status_code == 201
            sim = await run_fleet(
                server.url,
                ADMIN,
                corridor(),
                2,
                prefix="dl",
                speed=10.0,
                start_markers=["B", "C"],
                record=occupancy.record,
            )
            try:
                # dl-1 at B must pass C, dl-2 at C must pass B: each needs the other's marker.
                for robot, goal in (("dl-1", "D"), ("dl-2", "A")):
                    answer = api.post("/fleet/missions", json={"robot": robot, "goal": goal})
                    assert answer.status_code == 201, answer.text
                await _missions_done(api, 2, 60)
            finally:
                await sim.stop()
            events = api.get("/events", params={"kind": "traffic.rerouted"}).json()
            assert events, "the deadlock was broken by a re-route or a side-step"
            assert "dl-1" in events[0]["message"]  # the lower priority (1) gives way

    asyncio.run(scenario())
    assert occupancy.violations == []


def test_wrong_tokens_and_bad_messages_are_refused_and_others_keep_working(
    server: ThreadServer,
) -> None:
    with server.client() as api:
        assert api.post("/fleet/maps", json=grid_map("g", 3, 3).as_dict()).status_code == 201
        one = api.post("/fleet/robots", json={"name": "one", "map": "g", "marker": "r0c0"}).json()
        two = api.post("/fleet/robots", json={"name": "two", "map": "g", "marker": "r2c2"}).json()

        async def scenario() -> None:
            ws = await connect_robot(server.url, "crl_not_a_token_at_all_000000")
            error = await expect(ws, "error", within=10)
            assert error["code"] == "unauthorized"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4401

            ws = await connect_robot(server.url, one["token"])
            await ws.send(json.dumps({"type": "hello", "robot": "two"}))
            error = await expect(ws, "error", within=10)
            assert error["code"] == "forbidden"
            assert "one" in error["message"]

            good = await connect_robot(server.url, two["token"])
            await good.send(json.dumps({"type": "hello", "robot": "two"}))
            await expect(good, "welcome", within=10)
            for bad, field in (
                ({"type": "telemetry", "battery": 150}, "battery"),
                ({"type": "telemetry", "marker": "r9c9"}, "r9c9"),
                ({"type": "telemetry", "lane": ["r0c0", "r2c2"]}, "r0c0"),
                ({"type": "telemetry", "speed": 3}, "speed"),
                ({"type": "checkpoint", "marker": "r0c0"}, "r0c0"),
                ({"type": "launch"}, "launch"),
            ):
                await good.send(json.dumps(bad))
                error = await expect(good, "error", within=10)
                assert field in error["message"], (bad, error)
            await good.send("{not json")
            assert (await expect(good, "error", within=10))["code"] == "invalid"
            await good.send(json.dumps({"type": "ping"}))
            await expect(good, "pong", within=10)
            await good.close()

        asyncio.run(scenario())

        other = httpx.post(
            f"{server.url}/fleet/robots/two/telemetry",
            json={"marker": "r2c2"},
            headers={"Authorization": f"Bearer {one['token']}"},
        )
        assert other.status_code == 403
        assert api.post("/fleet/missions", json={"robot": "one", "goal": "zz"}).status_code == 404
        assert "zz" in api.post("/fleet/missions", json={"robot": "one", "goal": "zz"}).text
        assert (
            api.post("/fleet/missions", json={"robot": "ghost", "goal": "r1c1"}).status_code == 404
        )
        bad_map = api.post(
            "/fleet/maps",
            json={"name": "m", "markers": [{"id": "A", "x": 0, "y": 0}], "lanes": [["A", "Q"]]},
        )
        assert bad_map.status_code == 422
        assert "Q" in bad_map.json()["error"]["message"]
        clash = api.post("/fleet/robots", json={"name": "three", "map": "g", "marker": "r0c0"})
        assert clash.status_code == 409
        assert "one" in clash.json()["error"]["message"]
        # corral still serves the good robot after all that.
        assert api.get("/fleet/robots/two").json()["telemetry"] == {}


def test_http_robot_long_polls_its_commands_and_estop_overtakes_the_queue(
    server: ThreadServer,
) -> None:
    with server.client() as api:
        assert api.post("/fleet/maps", json=grid_map("h", 4, 1).as_dict()).status_code == 201
        robot = api.post("/fleet/robots", json={"name": "h1", "map": "h", "marker": "r0c0"})
        token = robot.json()["token"]
        mine = httpx.Client(
            base_url=f"{server.url}/fleet/robots/h1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=40,
        )
        with mine:
            assert mine.post("/telemetry", json={"marker": "r0c0"}).status_code == 204
            mission = api.post("/fleet/missions", json={"robot": "h1", "goal": "r0c3"}).json()
            after = 0
            while True:
                commands = mine.get("/commands", params={"after": after, "wait": 10}).json()
                assert commands, "a long poll returns when a command arrives"
                moves = [c for c in commands if c["kind"] == "move"]
                after = commands[-1]["id"]
                assert (
                    mine.post("/acks", json={"ids": [c["id"] for c in commands]}).status_code == 204
                )
                for move in moves:
                    assert (
                        mine.post("/checkpoint", json={"marker": move["marker"]}).status_code == 204
                    )
                if api.get(f"/fleet/missions/{mission['id']}").json()["state"] == "done":
                    break

            # Offline robot: commands queue; an estop is delivered ahead of them.
            for kind in ("stop", "resume"):
                api.post("/fleet/robots/h1/commands", json={"kind": kind})
            assert api.post("/fleet/broadcast", json={"kind": "estop"}).status_code == 200
            queued = mine.get("/commands", params={"after": after}).json()
            assert [c["kind"] for c in queued] == ["estop", "stop", "resume"]
            assert mine.get("/commands", params={"wait": 0.2, "after": 10**9}).json() == []


def test_signed_robot_messages_need_a_good_hmac(server: ThreadServer) -> None:
    with server.client() as api:
        assert api.post("/fleet/maps", json=grid_map("s", 2, 2).as_dict()).status_code == 201
        answer = api.post(
            "/fleet/robots", json={"name": "s1", "map": "s", "marker": "r0c0", "signed": True}
        ).json()
        key = answer["key"]
        assert isinstance(key, str)

        async def scenario() -> None:
            ws = await connect_robot(server.url, answer["token"])
            nonce = (await expect(ws, "challenge", within=10))["nonce"]
            await ws.send(json.dumps(sign({"type": "hello", "robot": "s1"}, key, 1, nonce)))
            assert (await expect(ws, "welcome", within=10))["signed"] is True
            await ws.send(json.dumps({"type": "telemetry", "battery": 50}))
            assert (await expect(ws, "error", within=10))["code"] == "bad_signature"
            forged = sign({"type": "telemetry", "battery": 50}, "00" * 32, 2, nonce)
            await ws.send(json.dumps(forged))
            assert (await expect(ws, "error", within=10))["code"] == "bad_signature"
            replay = sign({"type": "telemetry", "battery": 50}, key, 1, nonce)
            await ws.send(json.dumps(replay))
            assert (await expect(ws, "error", within=10))["code"] == "bad_signature"
            other = sign({"type": "telemetry", "battery": 50}, key, 2, "0" * 32)
            await ws.send(json.dumps(other))
            assert (await expect(ws, "error", within=10))["code"] == "bad_signature"
            await ws.send(json.dumps(sign({"type": "telemetry", "battery": 51}, key, 2, nonce)))
            await ws.send(json.dumps(sign({"type": "ping"}, key, 3, nonce)))
            await expect(ws, "pong", within=10)
            await ws.close()

        asyncio.run(scenario())
        assert api.get("/fleet/robots/s1").json()["telemetry"]["battery"] == 51


def test_goto_tasks_go_to_the_nearest_idle_robot(server: ThreadServer) -> None:
    fmap = grid_map("t", 6, 1).as_dict()

    async def scenario() -> None:
        with server.client() as api:
            assert api.post("/fleet/maps", json=fmap).status_code == 201
            sim = await run_fleet(
                server.url, ADMIN, fmap, 2, prefix="t", speed=20.0, start_markers=["r0c0", "r0c5"]
            )
            try:
                task = api.post(
                    "/tasks",
                    json={"kind": "goto", "target": "fleet", "params": {"marker": "r0c4"}},
                ).json()
                deadline = time.monotonic() + 60
                while api.get(f"/tasks/{task['id']}").json()["state"] != "done":
                    assert time.monotonic() < deadline, api.get(f"/tasks/{task['id']}").json()
                    await asyncio.sleep(0.1)
                [mission] = _missions(api)
                assert mission["robot"] == "t-2", "t-2 (at r0c5) is nearer r0c4 than t-1"
                assert mission["task_id"] == task["id"]
                refused = api.post(
                    "/tasks", json={"kind": "goto", "target": "fleet", "params": {"marker": "no"}}
                )
                assert refused.status_code == 422
            finally:
                await sim.stop()

    asyncio.run(scenario())


def test_a_silent_robot_goes_offline_and_keeps_its_marker(server: ThreadServer) -> None:
    with server.client() as api:
        assert api.post("/fleet/maps", json=grid_map("o", 2, 1).as_dict()).status_code == 201
        token = api.post("/fleet/robots", json={"name": "o1", "map": "o", "marker": "r0c0"}).json()[
            "token"
        ]
        headers = {"Authorization": f"Bearer {token}"}
        httpx.post(f"{server.url}/fleet/robots/o1/telemetry", json={}, headers=headers)
        wait_until(lambda: api.get("/fleet/robots/o1").json()["state"] == "online", "online")
        wait_until(lambda: api.get("/fleet/robots/o1").json()["state"] == "offline", "offline")
        assert api.get("/fleet/maps/o/traffic").json()["holds"] == {"marker:r0c0": "o1"}
        assert api.post("/fleet/robots/o1/clear").json()["released"] == ["marker:r0c0"]
        kinds = [e["kind"] for e in api.get("/events", params={"limit": 50}).json()]
        assert "robot.offline" in kinds


def test_the_robot_list_carries_each_robots_latest_telemetry(server: ThreadServer) -> None:
    with server.client() as api:
        assert api.post("/fleet/maps", json=grid_map("t", 2, 1).as_dict()).status_code == 201
        sent = {
            "t1": {"marker": "r0c0", "battery": 51.5, "status": "chargé"},
            "t2": {"lane": ["r0c0", "r0c1"], "progress": 0.25, "distance": 12},
        }
        for name, marker in (("t1", "r0c0"), ("t2", "r0c1")):
            token = api.post(
                "/fleet/robots", json={"name": name, "map": "t", "marker": marker}
            ).json()["token"]
            answer = httpx.post(
                f"{server.url}/fleet/robots/{name}/telemetry",
                json=sent[name],
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 204
        listed = {r["name"]: r for r in api.get("/fleet/robots").json()}
        assert listed["t1"]["telemetry"]["status"] == "chargé"
        assert listed["t1"]["telemetry"]["battery"] == 51.5
        assert listed["t2"]["telemetry"]["lane"] == ["r0c0", "r0c1"]
        assert listed["t2"]["telemetry"]["progress"] == 0.25
        assert [listed[n]["state"] for n in ("t1", "t2")] == ["online", "online"]


def test_a_robot_goes_around_one_that_stands_in_its_way(server: ThreadServer) -> None:
    fmap = grid_map("park", 3, 2).as_dict()
    occupancy = Occupancy()

    async def scenario() -> None:
        with server.client() as api:
            assert api.post("/fleet/maps", json=fmap).status_code == 201
            sim = await run_fleet(
                server.url,
                ADMIN,
                fmap,
                2,
                prefix="pk",
                speed=10.0,
                start_markers=["r0c0", "r0c1"],
                record=occupancy.record,
            )
            try:
                # pk-2 stands on r0c1 with no mission, right on pk-1's shortest way.
                answer = api.post("/fleet/missions", json={"robot": "pk-1", "goal": "r0c2"})
                assert answer.status_code == 201
                assert "r0c1" not in answer.json()["route"], "the first route avoids it"
                await _missions_done(api, 1, 30)
            finally:
                await sim.stop()

    asyncio.run(scenario())
    assert occupancy.violations == []


def test_blocked_by_a_standing_robot_with_no_way_around_is_said_once(
    server: ThreadServer,
) -> None:
    line = {
        "name": "line",
        "markers": [{"id": m, "x": i, "y": 0} for i, m in enumerate("ABC")],
        "lanes": [["A", "B"], ["B", "C"]],
    }
    with server.client() as api:
        assert api.post("/fleet/maps", json=line).status_code == 201
        for name, marker in (("mover", "A"), ("parked", "B")):
            added = api.post("/fleet/robots", json={"name": name, "map": "line", "marker": marker})
            assert added.status_code == 201
        assert api.post("/fleet/missions", json={"robot": "mover", "goal": "C"}).status_code == 201
        wait_until(
            lambda: api.get("/events", params={"kind": "traffic.blocked"}).json(),
            "the block is reported",
        )
        time.sleep(1.5)  # the monitor retries every half second: still one report
        blocked = api.get("/events", params={"kind": "traffic.blocked"}).json()
        assert len(blocked) == 1
        assert "parked" in blocked[0]["message"]
        traffic = api.get("/fleet/maps/line/traffic").json()
        assert traffic["holds"]["marker:B"] == "parked"


def test_mapping_mode_builds_a_scaled_map_from_what_a_robot_reports(
    server: ThreadServer,
) -> None:
    with server.client() as api:
        token = api.post("/fleet/robots", json={"name": "scout"}).json()["token"]
        started = api.post("/fleet/mapping", json={"robot": "scout", "map": "arena"})
        assert started.status_code == 201, started.text

        async def drive() -> None:
            ws = await connect_robot(server.url, token)
            await ws.send(json.dumps({"type": "hello", "robot": "scout"}))
            await expect(ws, "welcome", within=10)
            # A square of side 2 (robot units), driven round once, back to the start.
            for marker, x, y in (("A", 0, 0), ("B", 2, 0), ("C", 2, 2), ("D", 0, 2), ("A", 0, 0)):
                await ws.send(json.dumps({"type": "checkpoint", "marker": marker, "x": x, "y": y}))
            await ws.send(json.dumps({"type": "checkpoint", "marker": "E", "x": "far"}))
            error = await expect(ws, "error", within=10)
            assert "x" in error["message"]
            await ws.send(json.dumps({"type": "ping"}))
            await expect(ws, "pong", within=10)
            await ws.close()

        asyncio.run(drive())
        [session] = api.get("/fleet/mapping").json()
        assert session["markers"] == ["A", "B", "C", "D"]
        assert len(session["lanes"]) == 4
        assert api.post("/fleet/mapping/scout/finish", json={"diameter": 0}).status_code == 422
        built = api.post("/fleet/mapping/scout/finish", json={"diameter": 1.0})
        assert built.status_code == 200, built.text
        fmap = built.json()
        assert fmap["name"] == "arena"
        assert len(fmap["markers"]) == 4
        assert len(fmap["lanes"]) == 4
        spots = {m["id"]: (m["x"], m["y"]) for m in fmap["markers"]}
        diagonal = (
            (spots["C"][0] - spots["A"][0]) ** 2 + (spots["C"][1] - spots["A"][1]) ** 2
        ) ** 0.5
        assert abs(diagonal - 1.0) < 1e-6, "the widest span is the arena's diameter, 1 m"
        robot = api.get("/fleet/robots/scout").json()
        assert robot["map"] == "arena"
        assert robot["marker"] == "A"
        assert api.get("/fleet/mapping").json() == []
        assert api.post("/fleet/mapping/scout/finish", json={"diameter": 1}).status_code == 404


def test_a_robot_standing_where_it_was_sent_counts_as_arrived(server: ThreadServer) -> None:
    """A checkpoint lost in a corral restart: the robot's next telemetry at the granted
    marker stands for it."""
    with server.client() as api:
        assert api.post("/fleet/maps", json=grid_map("lost", 3, 1).as_dict()).status_code == 201
        token = api.post(
            "/fleet/robots", json={"name": "quiet", "map": "lost", "marker": "r0c0"}
        ).json()["token"]
        mine = httpx.Client(
            base_url=f"{server.url}/fleet/robots/quiet",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        with mine:
            mission = api.post("/fleet/missions", json={"robot": "quiet", "goal": "r0c2"}).json()
            for step in ("r0c1", "r0c2"):
                moves = [
                    c
                    for c in mine.get("/commands", params={"wait": 5}).json()
                    if c["kind"] == "move"
                ]
                assert moves[-1]["marker"] == step
                mine.post("/acks", json={"ids": [m["id"] for m in moves]})
                assert mine.post("/telemetry", json={"marker": step}).status_code == 204
        assert api.get(f"/fleet/missions/{mission['id']}").json()["state"] == "done"


def test_a_robot_cut_off_mid_route_gets_its_queued_commands_in_order(
    server: ThreadServer,
) -> None:
    with server.client() as api:
        assert api.post("/fleet/maps", json=grid_map("cut", 3, 1).as_dict()).status_code == 201
        token = api.post(
            "/fleet/robots", json={"name": "away", "map": "cut", "marker": "r0c0"}
        ).json()["token"]

        async def scenario() -> None:
            ws = await connect_robot(server.url, token)
            await ws.send(json.dumps({"type": "hello", "robot": "away"}))
            await expect(ws, "welcome", within=10)
            mission = await asyncio.to_thread(
                api.post, "/fleet/missions", json={"robot": "away", "goal": "r0c2"}
            )
            told = await expect(ws, "command", within=10)
            assert told["kind"] == "mission"
            await ws.send(json.dumps({"type": "ack", "id": told["id"]}))
            move = await expect(ws, "command", within=10)
            assert move["kind"] == "move"
            await ws.close()  # cut off on its way to r0c1, the move not acknowledged

            for n in (1, 2):
                sent = await asyncio.to_thread(
                    api.post,
                    "/fleet/robots/away/commands",
                    json={"kind": "custom", "payload": {"n": n}},
                )
                assert sent.status_code == 201

            ws = await connect_robot(server.url, token)
            await ws.send(json.dumps({"type": "hello", "robot": "away"}))
            await expect(ws, "welcome", within=10)
            queued = [await expect(ws, "command", within=10) for _ in range(3)]
            assert [c["kind"] for c in queued] == ["move", "custom", "custom"]
            assert [c.get("payload", {}).get("n") for c in queued] == [None, 1, 2]
            assert [c["id"] for c in queued] == sorted(c["id"] for c in queued)
            for command in queued:
                await ws.send(json.dumps({"type": "ack", "id": command["id"]}))
            for marker in ("r0c1", "r0c2"):
                await ws.send(json.dumps({"type": "checkpoint", "marker": marker}))
                if marker == "r0c1":
                    assert (await expect(ws, "command", within=10))["marker"] == "r0c2"
            await ws.send(json.dumps({"type": "ping"}))
            await expect(ws, "pong", within=10)  # everything before it was handled
            await ws.close()
            done = await asyncio.to_thread(api.get, f"/fleet/missions/{mission.json()['id']}")
            assert done.json()["state"] == "done"

        asyncio.run(scenario())
