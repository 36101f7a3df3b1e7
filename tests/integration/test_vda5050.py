"""VDA 5050 master control against a real private Mosquitto and corral's own VDA 5050
vehicle simulator (written from the standard): crossing vehicles are never released the
same node or edge, the e-stop pauses a vehicle, a cancelled mission ends its order, and bad
or unknown messages are refused with events while corral keeps serving.

A recorder on the broker checks every order and state message against the standard's
schemas and the no-double-release rule.
"""

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import httpx
import pytest
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families
from tests.support.fleet_maps import corridor
from tests.support.private_brokers import LockedMosquitto
from tests.support.server import ADMIN, ServeProcess, ThreadServer, corral_command

from corral.config import Settings
from corral.model.fleet_map import grid_map, lane_key
from corral.robot.sim import run_fleet
from corral.robot.vda_sim import SimVehicle

SCHEMAS = Path(__file__).resolve().parents[2] / "src/corral/fleet/vda5050/schemas"
# every vehicle the tests run, with a user and password on the broker
VEHICLES = [("acme", f"sn{i}") for i in range(1, 9)]
VEHICLES += [
    ("acme", s)
    for s in ("lw1", "sk1", "ho1", "a1", "a2", "pd1", "em1", "f1", "f2", "es1", "mt1", "so1", "vz1")
]
VEHICLES += [("other", "sn9"), ("NewCo", "x1")]


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[LockedMosquitto]:
    """A private Mosquitto with corral's password and ACL files enforced."""
    broker = LockedMosquitto(tmp_path, VEHICLES).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def server(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto: LockedMosquitto
) -> Iterator[ThreadServer]:
    settings = Settings(
        home=tmp_path,
        bootstrap_token=ADMIN,
        local_docker_url="",
        robot_heartbeat_seconds=3.0,
        brokers={"vda": mosquitto.corral_url},
        vda5050_broker="vda",
        vda5050_broker_log=mosquitto.log,
        **getattr(request, "param", {}),  # more settings, from an indirect parametrize
    )
    with ThreadServer(settings) as running:
        yield running


class Recorder:
    """Every VDA 5050 message on the broker, checked as it passes: valid against its
    schema, and no node or edge released to two vehicles at once (a vehicle holds its last
    node and the released nodes and edges of its order it has not passed yet)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, dict[str, Any]]] = []
        self.claims: dict[str, set[str]] = {}
        self.violations: list[str] = []
        self.invalid: list[str] = []
        self.validators = {
            t: Draft202012Validator(json.loads((SCHEMAS / f"{t}.schema").read_text()))
            for t in ("order", "instantActions", "state", "connection")
        }

    def take(self, topic: str, body: dict[str, Any]) -> None:
        serial, name = topic.split("/")[3:5]
        self.messages.append((serial, name, body))
        check = self.validators.get(name)
        if check is not None and not check.is_valid(body):
            self.invalid.append(f"{name} of {serial}")
            return
        if name == "order":
            claim = {f"node:{n['nodeId']}" for n in body["nodes"] if n["released"]}
            claim |= {f"edge:{e['edgeId']}" for e in body["edges"] if e["released"]}
            self.claims[serial] = self.claims.get(serial, set()) | claim
        elif name == "state":
            claim = {f"node:{body['lastNodeId']}"} if body["lastNodeId"] else set()
            claim |= {f"node:{n['nodeId']}" for n in body["nodeStates"] if n["released"]}
            claim |= {f"edge:{e['edgeId']}" for e in body["edgeStates"] if e["released"]}
            self.claims[serial] = claim
        else:
            return
        self._check(serial, name)

    def _check(self, who: str, what: str) -> None:
        for other, theirs in self.claims.items():
            both = self.claims[who] & theirs
            if other != who and both:
                self.violations.append(f"{what} of {who}: {sorted(both)} held by {other}")

    def websocket(self, robot: str, telemetry: dict[str, Any]) -> None:
        """A WebSocket robot's report: it holds the marker or lane it is on."""
        if telemetry.get("marker"):
            self.claims[robot] = {f"node:{telemetry['marker']}"}
        elif telemetry.get("lane"):
            self.claims[robot] = {f"edge:{lane_key(*telemetry['lane'])}"}
        else:
            return
        self._check(robot, "telemetry")

    def orders(self, serial: str) -> list[dict[str, Any]]:
        return [b for s, n, b in self.messages if s == serial and n == "order"]

    async def run(self, url: str, ready: asyncio.Event) -> None:
        parts = urlsplit(url)
        async with aiomqtt.Client(
            "127.0.0.1",
            parts.port or 1883,
            username=parts.username,
            password=parts.password,
            identifier=f"test-recorder-{secrets.token_hex(3)}",
        ) as client:
            await client.subscribe("uagv/v2/#", qos=1)
            ready.set()
            async for message in client.messages:
                payload = message.payload
                if isinstance(payload, bytes):
                    try:
                        body = json.loads(payload)
                    except ValueError:
                        continue
                    if isinstance(body, dict):
                        self.take(str(message.topic), body)


async def until(check: Callable[[], Awaitable[object]], what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


class Bed:
    """The broker, a recorder on it, corral's API, and simulated vehicles."""

    def __init__(self, server: ThreadServer, mosquitto: LockedMosquitto) -> None:
        self.server, self.broker = server, mosquitto
        self.api = httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
        )
        self.recorder = Recorder()
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        ready = asyncio.Event()
        self.tasks.append(
            asyncio.create_task(self.recorder.run(self.broker.url_as("observer"), ready))
        )
        await asyncio.wait_for(ready.wait(), 30)

        async def connected() -> bool:
            brokers = (await self.api.get("/brokers")).json()
            return any(b["name"] == "vda" and b["connected"] for b in brokers)

        await until(connected, "corral on the broker")

    def vehicle(self, serial: str, start: str, speed: float = 4.0) -> SimVehicle:
        url = self.broker.vehicle_url("acme", serial)
        sim = SimVehicle(url, "acme", serial, start, speed=speed, state_every=0.5)
        self.tasks.append(asyncio.create_task(sim.run(self.stop)))
        return sim

    async def register(self, name: str, serial: str, map_name: str, marker: str) -> None:
        body = {
            "name": name,
            "manufacturer": "acme",
            "serial_number": serial,
            "map": map_name,
            "marker": marker,
        }
        answer = await self.api.post("/fleet/vda5050/vehicles", json=body)
        assert answer.status_code == 201, answer.text

    async def online(self, *names: str) -> None:
        async def all_online() -> bool:
            robots = {r["name"]: r for r in (await self.api.get("/fleet/robots")).json()}
            return all(robots[n]["state"] == "online" for n in names)

        await until(all_online, f"{names} online")

    async def mission(self, robot: str, goal: str) -> int:
        answer = await self.api.post("/fleet/missions", json={"robot": robot, "goal": goal})
        assert answer.status_code == 201, answer.text
        mission_id: int = answer.json()["id"]
        return mission_id

    async def mission_state(self, mission_id: int) -> str:
        state: str = (await self.api.get(f"/fleet/missions/{mission_id}")).json()["state"]
        return state

    async def done(self, missions: list[int], what: str, limit: float = 60) -> None:
        """Wait until every one of `missions` is done."""

        async def all_done() -> bool:
            return all([await self.mission_state(m) == "done" for m in missions])

        await until(all_done, what, limit)

    async def events(self, kind: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (
            await self.api.get("/events", params={"kind": kind, "limit": 100})
        ).json()
        return found

    async def close(self) -> None:
        self.stop.set()
        await asyncio.sleep(0.3)  # the vehicles say OFFLINE
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.api.aclose()


@pytest.fixture
async def bed(server: ThreadServer, mosquitto: LockedMosquitto) -> AsyncIterator[Bed]:
    testbed = Bed(server, mosquitto)
    await testbed.start()
    try:
        yield testbed
    finally:
        await testbed.close()


def _summary(orders: list[dict[str, Any]]) -> list[str]:
    return [
        f"{o['orderId']}#{o['orderUpdateId']}: "
        + " ".join(
            f"{n['nodeId']}/{n['sequenceId']}{'' if n['released'] else '?'}" for n in o["nodes"]
        )
        for o in orders
    ]


def _same_update(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("orderUpdateId", "nodes", "edges")
    return all(a[k] == b[k] for k in keys)


def _updates_are_consecutive(orders: list[dict[str, Any]]) -> bool:
    """Per orderId, orderUpdateIds 0, 1, 2, … and each update starts at the last base node
    of the one before (same nodeId and sequenceId). An update sent again unchanged (one
    the vehicle did not show it had) is allowed: the vehicle discards a repeat."""
    last: dict[str, dict[str, Any]] = {}
    for order in orders:
        before = last.get(order["orderId"])
        if before is not None and _same_update(before, order):
            continue
        if before is None:
            if order["orderUpdateId"] != 0:
                return False
        else:
            if order["orderUpdateId"] != before["orderUpdateId"] + 1:
                return False
            base_end = [n for n in before["nodes"] if n["released"]][-1]
            first = order["nodes"][0]
            if (first["nodeId"], first["sequenceId"]) != (
                base_end["nodeId"],
                base_end["sequenceId"],
            ):
                return False
        last[order["orderId"]] = order
    return True


async def test_two_vehicles_on_crossing_paths_are_never_released_the_same_node(
    bed: Bed,
) -> None:
    assert (await bed.api.post("/fleet/maps", json=grid_map("g", 3, 3).as_dict())).status_code in (
        200,
        201,
    )
    await bed.register("west", "sn1", "g", "r1c0")
    await bed.register("north", "sn2", "g", "r0c1")
    west, north = bed.vehicle("sn1", "r1c0"), bed.vehicle("sn2", "r0c1")
    await bed.online("west", "north")
    missions = [await bed.mission("west", "r1c2"), await bed.mission("north", "r2c1")]
    await bed.done(missions, "both missions done")
    await until(lambda: _at(west, "r1c2", north, "r2c1"), "the vehicles at their goals")
    assert west.reached == ["r1c1", "r1c2"]
    assert north.reached == ["r1c1", "r2c1"]
    for serial in ("sn1", "sn2"):
        orders = bed.recorder.orders(serial)
        assert orders, f"no order to {serial}"
        assert _updates_are_consecutive(orders), orders
        # each order releases exactly one stretch beyond where it starts
        assert all(len([n for n in o["nodes"] if n["released"]]) == 2 for o in orders)
    assert bed.recorder.invalid == []
    assert bed.recorder.violations == []
    robots = {r["name"]: r for r in (await bed.api.get("/fleet/robots")).json()}
    assert robots["west"]["marker"] == "r1c2"
    assert robots["north"]["marker"] == "r2c1"
    assert robots["west"]["telemetry"]["vda5050"]["operating_mode"] == "AUTOMATIC"
    vehicles = (await bed.api.get("/fleet/vda5050/vehicles")).json()
    assert {v["vda5050"]["serial_number"] for v in vehicles} == {"sn1", "sn2"}
    assert all(v["vda5050"]["connection"] == "ONLINE" for v in vehicles)
    listing = await asyncio.to_thread(
        subprocess.run,
        [*corral_command(), "robot", "ls"],
        env={**os.environ, "CORRAL_URL": bed.server.url, "CORRAL_TOKEN": ADMIN},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    acl = (await bed.api.get("/fleet/vda5050/mosquitto-acl")).text
    assert "user acme.sn1\ntopic write uagv/v2/acme/sn1/state\n" in acl
    assert "topic read uagv/v2/acme/sn2/order\n" in acl
    assert "topic readwrite uagv/v2/#" in acl
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines() if line}
    assert rows["west"][1:4] == ["online", "g", "r1c2"], listing.stdout
    assert rows["north"][1:4] == ["online", "g", "r2c1"], listing.stdout


async def _at(*pairs: Any) -> bool:
    it = iter(pairs)
    return all(vehicle.last_node == node for vehicle, node in zip(it, it, strict=True))


def _line_map() -> dict[str, Any]:
    return {
        "name": "line",
        "markers": [{"id": f"n{i}", "x": 2.0 * i, "y": 0} for i in range(6)],
        "lanes": [[f"n{i}", f"n{i + 1}"] for i in range(5)],
    }


async def test_estop_pauses_the_vehicle_and_cancel_ends_its_order(bed: Bed) -> None:
    assert (await bed.api.post("/fleet/maps", json=_line_map())).status_code == 201
    await bed.register("slow", "sn3", "line", "n0")
    sim = bed.vehicle("sn3", "n0", speed=1.0)
    await bed.online("slow")
    mission = await bed.mission("slow", "n5")

    async def driving() -> bool:
        return sim.driving and sim.position is not None and sim.position[0] > 0.2

    await until(driving, "the vehicle driving")
    answer = await bed.api.post("/fleet/robots/slow/commands", json={"kind": "estop"})
    assert answer.status_code == 201

    async def paused() -> bool:
        return sim.paused

    await until(paused, "the vehicle paused")
    where = sim.position
    await asyncio.sleep(0.5)
    assert sim.position == where, "a paused vehicle stands still"
    assert not sim.driving
    assert any(
        a["actionType"] == "startPause" and a["actionStatus"] == "FINISHED"
        for a in sim.actions.values()
    )
    await bed.api.post("/fleet/robots/slow/commands", json={"kind": "resume"})
    await until(lambda: _moving(sim), "the vehicle moving again")
    answer = await bed.api.delete(f"/fleet/missions/{mission}")
    assert answer.status_code == 200, answer.text

    async def cancelled() -> bool:
        return bool(await bed.events("vda5050.cancelOrder"))

    await until(cancelled, "the cancelOrder finished")
    [event] = await bed.events("vda5050.cancelOrder")
    assert event["data"]["status"] == "FINISHED"
    assert sim.nodes == []
    assert not sim.driving
    assert await bed.mission_state(mission) == "cancelled"

    async def holds_one() -> bool:
        traffic = (await bed.api.get("/fleet/maps/line/traffic")).json()
        return list(traffic["holds"].items()) == [(f"marker:{sim.last_node}", "slow")]

    await until(holds_one, "the vehicle holding only the node it stopped on")
    assert bed.recorder.invalid == []


async def _moving(sim: SimVehicle) -> bool:
    return not sim.paused and sim.driving


async def test_bad_and_unknown_messages_are_refused_and_corral_keeps_serving(
    bed: Bed,
) -> None:
    assert (await bed.api.post("/fleet/maps", json=_line_map())).status_code == 201
    await bed.register("good", "sn4", "line", "n0")
    async with _client(bed.broker, "acme", "sn4") as rogue:
        await rogue.publish("uagv/v2/acme/sn4/state", b"{not json", qos=1)
        await rogue.publish("uagv/v2/acme/sn4/state", json.dumps({"headerId": 1}), qos=1)
        await rogue.publish("uagv/v2/acme/sn4/connection", json.dumps([1, 2]), qos=1)
    async with _client(bed.broker, "other", "sn9") as stranger:
        await stranger.publish(
            "uagv/v2/other/sn9/connection",
            json.dumps(
                {
                    "headerId": 0,
                    "timestamp": "2026-01-01T00:00:00.00Z",
                    "version": "2.1.0",
                    "manufacturer": "other",
                    "serialNumber": "sn9",
                    "connectionState": "ONLINE",
                }
            ),
            qos=1,
        )

    async def refused() -> bool:
        return len(await bed.events("vda5050.invalid")) >= 3 and bool(
            await bed.events("vda5050.unknown")
        )

    await until(refused, "the refusals as events")
    problems = " ".join(e["message"] for e in await bed.events("vda5050.invalid"))
    assert "not JSON" in problems
    assert "'orderId' is a required property" in problems
    assert "not a JSON object" in problems
    [unknown] = await bed.events("vda5050.unknown")
    assert unknown["data"] == {
        "manufacturer": "other",
        "serial_number": "sn9",
        "topic": "connection",
    }
    # corral serves on: the registered vehicle comes online and drives
    sim = bed.vehicle("sn4", "n0")
    await bed.online("good")
    mission = await bed.mission("good", "n2")
    await bed.done([mission], "the mission done")
    assert sim.reached == ["n1", "n2"]
    metrics = (await bed.api.get("/metrics")).text
    invalid = re.compile(
        r'^corral_vda5050_messages_total\{direction="in",outcome="invalid",'
        r'replica="[0-9a-f]+",topic="state"\} 2\.0$',
        re.M,
    )
    assert invalid.search(metrics), metrics


def _sim_process(broker: str, start: str, serial_prefix: str = "lw") -> subprocess.Popen[bytes]:
    """`corral sim vda 1` as its own process, so that it can die as a vehicle does."""
    return subprocess.Popen(
        [
            *corral_command(),
            "sim",
            "vda",
            "1",
            "--broker",
            broker,
            "--start",
            start,
            "--manufacturer",
            "acme",
            "--serial-prefix",
            serial_prefix,
            "--speed",
            "1",
            "--state-every",
            "0.5",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_a_vehicle_that_dies_is_offline_keeps_its_reservations_and_goes_on_after(
    bed: Bed,
) -> None:
    assert (await bed.api.post("/fleet/maps", json=_line_map())).status_code == 201
    await bed.register("lw", "lw1", "line", "n0")
    vehicle = _sim_process(bed.broker.vehicle_url("acme", "lw1"), "n0")
    try:
        await bed.online("lw")
        mission = await bed.mission("lw", "n5")

        async def past_n1() -> bool:
            robot = (await bed.api.get("/fleet/robots/lw")).json()
            return robot["marker"] in ("n1", "n2")

        await until(past_n1, "the vehicle past n1")
    finally:
        vehicle.kill()  # SIGKILL: no OFFLINE, the broker sends its last will
        vehicle.wait()

    async def broken() -> bool:
        return any(
            e["data"].get("connection") == "CONNECTIONBROKEN"
            for e in await bed.events("robot.offline")
        )

    await until(broken, "the last will seen")
    robot = (await bed.api.get("/fleet/robots/lw")).json()
    assert robot["state"] == "offline"
    holds = (await bed.api.get("/fleet/maps/line/traffic")).json()["holds"]
    held = sorted(r for r, who in holds.items() if who == "lw")
    assert f"marker:{robot['marker']}" in held, "its reservations are held while it is away"
    assert await bed.mission_state(mission) == "active"
    # the vehicle comes back (rebooted: its order is gone) where corral last saw it
    again = _sim_process(bed.broker.vehicle_url("acme", "lw1"), robot["marker"])
    try:
        await bed.done([mission], "the mission done after the vehicle came back")
    finally:
        again.terminate()
        again.wait()
    assert await bed.events("vda5050.order_resent")
    assert bed.recorder.violations == []
    assert bed.recorder.invalid == []


async def test_two_vehicles_head_on_in_a_corridor_pass_by_the_siding(bed: Bed) -> None:
    assert (await bed.api.post("/fleet/maps", json=corridor())).status_code == 201
    await bed.register("east", "sn5", "corridor", "A")
    await bed.register("west", "sn6", "corridor", "D")
    east, west = bed.vehicle("sn5", "A"), bed.vehicle("sn6", "D")
    await bed.online("east", "west")
    missions = [await bed.mission("east", "D"), await bed.mission("west", "A")]
    await bed.done(missions, "both missions done")
    assert east.last_node == "D"
    assert west.last_node == "A"
    assert "S" in east.reached + west.reached, "one of them went by the siding"
    for serial in ("sn5", "sn6"):
        orders = bed.recorder.orders(serial)
        assert _updates_are_consecutive(orders), _summary(orders)
    assert bed.recorder.violations == []
    assert bed.recorder.invalid == []


async def test_orders_go_on_across_a_broker_restart(bed: Bed) -> None:
    assert (await bed.api.post("/fleet/maps", json=_line_map())).status_code == 201
    await bed.register("br", "sn7", "line", "n0")
    sim = bed.vehicle("sn7", "n0", speed=1.0)
    await bed.online("br")
    mission = await bed.mission("br", "n5")

    async def past_n1() -> bool:
        return "n1" in sim.reached

    await until(past_n1, "the vehicle past n1")
    await asyncio.to_thread(bed.broker.restart)
    await bed.done([mission], "the mission done after the broker restart", limit=90)
    assert sim.reached == ["n1", "n2", "n3", "n4", "n5"], "every node once, in order"
    assert sim.order_id == f"corral-mission-{mission}"
    assert sim.errors == [], "no order or update was refused"


async def test_a_vda_vehicle_and_a_websocket_robot_share_one_map_safely(bed: Bed) -> None:
    fmap = grid_map("mixed", 3, 3).as_dict()
    assert (await bed.api.post("/fleet/maps", json=fmap)).status_code == 201
    await bed.register("agv", "sn8", "mixed", "r1c0")
    agv = bed.vehicle("sn8", "r1c0", speed=2.0)
    fleet = await run_fleet(
        bed.server.url,
        ADMIN,
        fmap,
        1,
        prefix="ws",
        speed=2.0,
        rate=20.0,
        start_markers=["r0c1"],
        record=bed.recorder.websocket,
        seed=3,
    )
    try:
        await bed.online("agv", "ws-1")
        missions = [await bed.mission("agv", "r1c2"), await bed.mission("ws-1", "r2c1")]
        await bed.done(missions, "both missions done")
    finally:
        await fleet.stop()
    assert agv.reached == ["r1c1", "r1c2"]
    robots = {r["name"]: r for r in (await bed.api.get("/fleet/robots")).json()}
    assert robots["ws-1"]["marker"] == "r2c1"
    assert robots["agv"]["marker"] == "r1c2"
    assert bed.recorder.violations == []
    assert bed.recorder.invalid == []


async def test_corral_killed_mid_order_goes_on_with_the_next_update(
    tmp_path: Path, mosquitto: LockedMosquitto
) -> None:
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_MDNS_ENABLED": "false",
        "CORRAL_BROKERS": json.dumps({"vda": mosquitto.corral_url}),
        "CORRAL_VDA5050_BROKER": "vda",
    }
    serve = await asyncio.to_thread(ServeProcess(tmp_path / "corral", env).start)
    recorder, ready = Recorder(), asyncio.Event()
    recording = asyncio.create_task(recorder.run(mosquitto.url_as("observer"), ready))
    stop = asyncio.Event()
    url = mosquitto.vehicle_url("acme", "sk1")
    sim = SimVehicle(url, "acme", "sk1", "n0", speed=1.0, state_every=0.5)
    driving = asyncio.create_task(sim.run(stop))
    api = httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    try:
        await asyncio.wait_for(ready.wait(), 30)
        assert (await api.post(f"{serve.url}/fleet/maps", json=_line_map())).status_code == 201
        body = {"name": "sk", "manufacturer": "acme", "serial_number": "sk1"}
        body |= {"map": "line", "marker": "n0"}
        assert (await api.post(f"{serve.url}/fleet/vda5050/vehicles", json=body)).is_success
        answer = await api.post(f"{serve.url}/fleet/missions", json={"robot": "sk", "goal": "n5"})
        assert answer.status_code == 201, answer.text
        mission = answer.json()["id"]

        async def past_n2() -> bool:
            return "n2" in sim.reached

        await until(past_n2, "the vehicle past n2")
        await asyncio.to_thread(serve.stop, signal.SIGKILL)
        await asyncio.to_thread(serve.start)

        async def done() -> bool:
            found = await api.get(f"{serve.url}/fleet/missions/{mission}")
            return found.is_success and found.json()["state"] == "done"

        try:
            await until(done, "the mission done after corral's restart", limit=60)
        except AssertionError:
            print(
                "orders, errors, reached, state:",
                _summary(recorder.orders("sk1")),
                sim.errors,
                sim.reached,
                sim.state(),
            )
            print(serve.log.read_text()[-3000:])
            raise
    finally:
        stop.set()
        await asyncio.sleep(0.3)
        for task in (driving, recording):
            task.cancel()
        await asyncio.gather(driving, recording, return_exceptions=True)
        await api.aclose()
        await asyncio.to_thread(serve.stop)
    assert sim.reached == ["n1", "n2", "n3", "n4", "n5"], "every node once, in order"
    assert sim.errors == [], "no order or update was refused"
    assert _updates_are_consecutive(recorder.orders("sk1")), _summary(recorder.orders("sk1"))
    assert recorder.invalid == []


@pytest.mark.parametrize("server", [{"vda5050_admit_map": "line"}], indirect=True)
async def test_an_unknown_vehicle_is_admitted_on_its_first_connection_by_policy(
    bed: Bed,
) -> None:
    assert (await bed.api.post("/fleet/maps", json=_line_map())).status_code == 201
    url = bed.broker.vehicle_url("NewCo", "x1")
    sim = SimVehicle(url, "NewCo", "x1", "n3", speed=2.0, state_every=0.5)
    bed.tasks.append(asyncio.create_task(sim.run(bed.stop)))

    async def admitted() -> bool:
        found = await bed.api.get("/fleet/robots/newco-x1")
        return found.is_success and found.json()["marker"] == "n3"

    await until(admitted, "the vehicle admitted as robot newco-x1 at n3")
    vehicle = (await bed.api.get("/fleet/vda5050/vehicles/newco-x1")).json()
    assert vehicle["vda5050"]["manufacturer"] == "NewCo"
    assert vehicle["vda5050"]["serial_number"] == "x1"
    assert vehicle["map"] == "line"
    mission = await bed.mission("newco-x1", "n1")
    await bed.done([mission], "the admitted vehicle's mission done")
    assert sim.reached == ["n2", "n1"]


def _client(broker: LockedMosquitto, manufacturer: str, serial: str) -> aiomqtt.Client:
    """An MQTT client logged in as one vehicle's broker user."""
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=f"{manufacturer}.{serial}",
        password=broker.passwords[f"{manufacturer}.{serial}"],
        identifier=f"{manufacturer}-{serial}-rogue",
    )


async def test_with_broker_acls_a_vehicle_on_another_vehicles_topic_is_refused_with_an_event(
    bed: Bed,
) -> None:
    assert (await bed.api.post("/fleet/maps", json=_line_map())).status_code == 201
    await bed.register("a1", "a1", "line", "n0")
    sim = bed.vehicle("a1", "n0", speed=2.0)
    await bed.online("a1")
    mission = await bed.mission("a1", "n2")
    await bed.done([mission], "the mission done through the locked broker")
    # a2, logged in as itself, publishes a state on a1's topic: the broker drops it
    async with _client(bed.broker, "acme", "a2") as rogue:
        fake = {**sim.state(), **sim._header("state"), "lastNodeId": "n5"}
        await rogue.publish("uagv/v2/acme/a1/state", json.dumps(fake), qos=1)
        await rogue.publish("uagv/v2/acme/a2/order", json.dumps({}), qos=1)

    async def denied() -> bool:
        return len(await bed.events("vda5050.denied")) >= 2

    await until(denied, "the broker's refusals as events")
    said = {e["data"]["topic"]: e for e in await bed.events("vda5050.denied")}
    assert said["uagv/v2/acme/a1/state"]["data"]["client"] == "acme-a2-rogue"
    assert said["uagv/v2/acme/a1/state"]["resource"] == "vda5050/acme/a1"
    assert "uagv/v2/acme/a2/order" in said, "a vehicle may not write its own order topic"
    fakes = [b for s, n, b in bed.recorder.messages if n == "state" and b["lastNodeId"] == "n5"]
    assert fakes == [], "the broker let a2's state onto a1's topic"
    robot = (await bed.api.get("/fleet/robots/a1")).json()
    assert robot["marker"] == "n2"
    # no password, or a wrong one, is refused at the door
    for password in (None, "wrong"):
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                "127.0.0.1", bed.broker.port, username="acme.a1", password=password
            ):
                pass
    assert bed.recorder.invalid == []
    mission = await bed.mission("a1", "n0")
    await bed.done([mission], "corral drives on")


def _released_once(orders: list[dict[str, Any]]) -> bool:
    """Across the distinct updates of one order, each node and edge is released once (an
    update starts on the last base node of the one before, which it does not release anew;
    an update sent again unchanged is not a new release)."""
    seen: set[str] = set()
    last: dict[str, Any] | None = None
    for order in orders:
        if last is not None and _same_update(last, order):
            continue
        nodes = [n["nodeId"] for n in order["nodes"] if n["released"]]
        fresh = nodes if last is None or last["orderId"] != order["orderId"] else nodes[1:]
        fresh += [e["edgeId"] for e in order["edges"] if e["released"]]
        if seen & set(fresh):
            return False
        seen |= set(fresh)
        last = order
    return True


async def test_a_replica_that_takes_over_drives_a_vehicle_registered_after_it_started(
    tmp_path: Path, mosquitto: LockedMosquitto, pg_url: str
) -> None:
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_DATABASE_URL": pg_url,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_MDNS_ENABLED": "false",
        "CORRAL_REPLICA_POLL_SECONDS": "0.5",
        "CORRAL_BROKERS": json.dumps({"vda": mosquitto.corral_url}),
        "CORRAL_VDA5050_BROKER": "vda",
    }
    first = await asyncio.to_thread(ServeProcess(tmp_path / "a", env).start)
    api = httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)

    async def leads(serve: ServeProcess) -> bool:
        replicas = (await api.get(f"{serve.url}/replicas")).json()
        return any(r["leader"] and r["url"] == serve.url for r in replicas)

    second: ServeProcess | None = None
    recorder, ready = Recorder(), asyncio.Event()
    recording = asyncio.create_task(recorder.run(mosquitto.url_as("observer"), ready))
    stop = asyncio.Event()
    url = mosquitto.vehicle_url("acme", "ho1")
    sim = SimVehicle(url, "acme", "ho1", "n0", speed=1.0, state_every=0.5)
    driving: asyncio.Task[None] | None = None
    try:
        await until(lambda: leads(first), "the first replica leading")
        second = await asyncio.to_thread(ServeProcess(tmp_path / "b", env).start)
        await asyncio.wait_for(ready.wait(), 30)
        # registered after the second replica started: it has never read this vehicle
        b = second.url
        assert (await api.post(f"{b}/fleet/maps", json=_line_map())).status_code == 201
        body = {"name": "ho", "manufacturer": "acme", "serial_number": "ho1"}
        body |= {"map": "line", "marker": "n0"}
        assert (await api.post(f"{b}/fleet/vda5050/vehicles", json=body)).is_success
        driving = asyncio.create_task(sim.run(stop))
        answer = await api.post(f"{b}/fleet/missions", json={"robot": "ho", "goal": "n5"})
        assert answer.status_code == 201, answer.text
        mission = answer.json()["id"]
        await until(lambda: _reached(sim, "n2"), "the vehicle past n2")
        await asyncio.to_thread(first.stop, signal.SIGKILL)

        async def done() -> bool:
            found = await api.get(f"{b}/fleet/missions/{mission}")
            return found.is_success and found.json()["state"] == "done"

        try:
            await until(done, "the mission done under the second replica", limit=60)
        except AssertionError:
            print(_summary(recorder.orders("ho1")), sim.errors, sim.reached)
            print(second.log.read_text()[-3000:])
            raise
        assert await leads(second)
    finally:
        stop.set()
        await asyncio.sleep(0.3)
        for task in (driving, recording):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (driving, recording) if t), return_exceptions=True)
        await api.aclose()
        for serve in (second, first):
            if serve is not None:
                await asyncio.to_thread(serve.stop)
    orders = recorder.orders("ho1")
    assert sim.reached == ["n1", "n2", "n3", "n4", "n5"], "every node once, in order"
    assert sim.errors == [], "no order or update was refused"
    assert _updates_are_consecutive(orders), _summary(orders)
    assert _released_once(orders), _summary(orders)
    assert {o["orderId"] for o in orders} == {f"corral-mission-{mission}"}
    assert recorder.violations == []
    assert recorder.invalid == []


async def _reached(sim: SimVehicle, node: str) -> bool:
    return node in sim.reached


def _statuses(recorder: Recorder, serial: str, action_id: str) -> list[str]:
    """The statuses of one action in the vehicle's states, each change once, in order."""
    seen: list[str] = []
    for who, name, body in recorder.messages:
        if who != serial or name != "state":
            continue
        for action in body["actionStates"]:
            if action["actionId"] == action_id and (not seen or seen[-1] != action["actionStatus"]):
                seen.append(action["actionStatus"])
    return seen


async def test_pick_and_drop_at_the_goal_are_followed_to_their_end(bed: Bed) -> None:
    assert (await bed.api.post("/fleet/maps", json=_line_map())).status_code == 201
    await bed.register("lift", "pd1", "line", "n0")
    sim = bed.vehicle("pd1", "n0")
    await bed.online("lift")

    async def mission(goal: str, action: str, **parameters: str) -> dict[str, Any]:
        actions = [{"type": action, "parameters": parameters}]
        body = {"robot": "lift", "goal": goal, "actions": actions}
        answer = await bed.api.post("/fleet/missions", json=body)
        assert answer.status_code == 201, answer.text
        made: dict[str, Any] = answer.json()
        assert made["actions"][0]["status"] in (None, "WAITING")  # not sent, or just taken
        return made

    async def ended(mission_id: int) -> bool:
        return await bed.mission_state(mission_id) != "active"

    made = await _cli(
        bed,
        "--json",
        "mission",
        "new",
        "lift",
        "n2",
        "--action",
        "pick:stationType=floor,loadType=EPAL",
    )
    assert made.returncode == 0, made.stderr
    pick = json.loads(made.stdout)
    assert pick["actions"][0]["status"] in (None, "WAITING")
    await until(lambda: ended(pick["id"]), "the pick mission ended")
    found = (await bed.api.get(f"/fleet/missions/{pick['id']}")).json()
    assert found["state"] == "done", found
    [action] = found["actions"]
    assert action["status"] == "FINISHED"
    assert sim.loads == [{"loadType": "EPAL"}]
    assert _statuses(bed.recorder, "pd1", action["id"]) == [
        "WAITING",
        "INITIALIZING",
        "RUNNING",
        "FINISHED",
    ]
    # the order carried the pick on its goal node, with its parameters
    first = bed.recorder.orders("pd1")[0]
    goal = next(n for n in first["nodes"] if n["nodeId"] == "n2")
    assert goal["actions"] == [
        {
            "actionType": "pick",
            "actionId": action["id"],
            "blockingType": "HARD",
            "actionParameters": [
                {"key": "stationType", "value": "floor"},
                {"key": "loadType", "value": "EPAL"},
            ],
        }
    ]
    events = await bed.events("mission.action")
    mine = [e for e in events if e["resource"] == f"mission/{pick['id']}"]
    assert {e["data"]["status"] for e in mine} >= {"RUNNING", "FINISHED"}
    [done] = [
        e for e in await bed.events("mission.done") if e["resource"] == f"mission/{pick['id']}"
    ]
    finished = next(e for e in mine if e["data"]["status"] == "FINISHED")
    assert done["id"] > finished["id"], "done only once the pick finished"

    drop = await mission("n4", "drop")
    await until(lambda: ended(drop["id"]), "the drop mission ended")
    assert await bed.mission_state(drop["id"]) == "done"
    assert sim.loads == []

    # nothing on board: the vehicle fails the drop, and so the mission fails
    again = await mission("n3", "drop")
    await until(lambda: ended(again["id"]), "the second drop mission ended")
    failed = (await bed.api.get(f"/fleet/missions/{again['id']}")).json()
    assert failed["state"] == "failed"
    assert failed["reason"] == "action drop at n3 failed"
    assert failed["actions"][0]["status"] == "FAILED"
    assert any(e["errorType"] == "dropError" for e in sim.errors)
    robot = (await bed.api.get("/fleet/robots/lift")).json()
    assert robot["marker"] == "n3"
    assert bed.recorder.invalid == []

    # a robot that speaks corral's own protocol cannot take actions
    made = await bed.api.post("/fleet/robots", json={"name": "ws", "map": "line", "marker": "n5"})
    assert made.status_code == 201, made.text
    body = {"robot": "ws", "goal": "n4", "actions": [{"type": "pick"}]}
    refused = await bed.api.post("/fleet/missions", json=body)
    assert refused.status_code == 409, refused.text  # that robot as it is: a conflict
    assert "need a VDA 5050 vehicle" in refused.json()["error"]["message"]


async def test_a_vehicles_errors_and_operating_mode_show_in_the_api(bed: Bed) -> None:
    assert (await bed.api.post("/fleet/maps", json=_line_map())).status_code == 201
    await bed.register("em", "em1", "line", "n0")
    sim = bed.vehicle("em1", "n0")
    sim.operating_mode = "SEMIAUTOMATIC"
    await bed.online("em")
    # an instant action the vehicle does not know: it reports an error
    dance = {"actionType": "dance", "actionId": "d1", "blockingType": "NONE"}
    body = {"kind": "custom", "payload": {"actions": [dance | {"actionParameters": []}]}}
    assert (await bed.api.post("/fleet/robots/em/commands", json=body)).status_code == 201

    async def shown() -> dict[str, Any]:
        found: dict[str, Any] = (await bed.api.get("/fleet/vda5050/vehicles/em")).json()
        return found

    async def with_error() -> bool:
        return bool((await shown())["vda5050"]["errors"])

    await until(with_error, "the vehicle's error in the API")
    vehicle = (await shown())["vda5050"]
    assert vehicle["operating_mode"] == "SEMIAUTOMATIC"
    [error] = vehicle["errors"]
    assert error["errorType"] == "unsupportedAction"
    assert error["errorLevel"] == "WARNING"
    assert error["errorReferences"] == [{"referenceKey": "actionId", "referenceValue": "d1"}]
    robot = (await bed.api.get("/fleet/robots/em")).json()
    assert robot["telemetry"]["vda5050"]["errors"] == [error]
    # the operator takes it over by hand: the API follows
    sim.operating_mode = "MANUAL"

    async def manual() -> bool:
        return bool((await shown())["vda5050"]["operating_mode"] == "MANUAL")

    await until(manual, "the new operating mode in the API")
    assert "vda5050 MANUAL" in (await bed.api.get("/fleet/robots/em")).json()["telemetry"]["status"]


async def _cli(bed: Bed, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [*corral_command(), *args],
        env={**os.environ, "CORRAL_URL": bed.server.url, "CORRAL_TOKEN": ADMIN},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_vehicles_file_registers_vehicles_idempotently(bed: Bed, tmp_path: Path) -> None:
    assert (await bed.api.post("/fleet/maps", json=_line_map())).status_code == 201
    file = tmp_path / "vehicles.yml"
    file.write_text(
        "vehicles:\n"
        "  f1:\n    manufacturer: acme\n    serial_number: f1\n    map: line\n    marker: n0\n"
        "  f2:\n    manufacturer: acme\n    serial_number: f2\n    map: line\n    marker: n5\n"
    )
    applied = await _cli(bed, "robot", "apply-vda", str(file))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == ["f1: created", "f2: created"]
    again = await _cli(bed, "robot", "apply-vda", str(file))
    assert again.stdout.splitlines() == ["f1: unchanged", "f2: unchanged"], again.stderr
    # the file's vehicles drive like any other
    sim = bed.vehicle("f1", "n0")
    await bed.online("f1")
    mission = await bed.mission("f1", "n2")
    await bed.done([mission], "the declared vehicle's mission done")
    assert sim.reached == ["n1", "n2"]
    # a changed priority is applied; f2, gone from the file, is removed with --prune
    file.write_text(
        "vehicles:\n  f1:\n    manufacturer: acme\n    serial_number: f1\n    priority: 7\n"
    )
    pruned = await _cli(bed, "robot", "apply-vda", str(file), "--prune")
    assert pruned.stdout.splitlines() == ["f1: updated", "f2: removed"], pruned.stderr
    robots = {r["name"]: r for r in (await bed.api.get("/fleet/robots")).json()}
    assert robots["f1"]["priority"] == 7
    assert robots["f1"]["marker"] == "n2", "a known vehicle stays where it is"
    assert "f2" not in robots
    vehicles = (await bed.api.get("/fleet/vda5050/vehicles")).json()
    assert [v["name"] for v in vehicles] == ["f1"]
    # a bad file: every problem with its line, and nothing changes
    file.write_text(
        "vehicles:\n"
        "  f1:\n    manufacturer: acme\n    serial_number: f1\n    priority: 7\n"
        "  f3:\n    manufacturer: acme\n    serial_number: f 3\n    speed: 2\n"
    )
    bad = await _cli(bed, "robot", "apply-vda", str(file))
    assert bad.returncode == 2
    assert f"{file}: line 8: vehicles.f3.serial_number: String should match" in bad.stderr
    assert "line 9: vehicles.f3.speed: unknown key" in bad.stderr
    # one vehicle under another name: refused by the API, nothing changes
    file.write_text("vehicles:\n  f9:\n    manufacturer: acme\n    serial_number: f1\n")
    taken = await _cli(bed, "robot", "apply-vda", str(file))
    assert taken.returncode != 0
    assert "vehicle acme/f1 is robot f1 already" in taken.stderr
    body = {"vehicles": [{"name": "x", "manufacturer": "acme", "serial_number": "f2"}] * 2}
    twice = await bed.api.put("/fleet/vda5050/vehicles", json=body)
    assert twice.status_code == 422
    assert twice.json()["error"]["message"] == "vehicles[1]: x is vehicles[0] already"
    vehicles = (await bed.api.get("/fleet/vda5050/vehicles")).json()
    assert [v["name"] for v in vehicles] == ["f1"]


async def test_an_estop_overtakes_a_pending_order_and_the_vehicle_stays_stopped(bed: Bed) -> None:
    assert (await bed.api.post("/fleet/maps", json=_line_map())).status_code == 201
    await bed.register("es", "es1", "line", "n0")
    url = bed.broker.vehicle_url("acme", "es1")
    away = asyncio.Event()
    first = SimVehicle(url, "acme", "es1", "n0", speed=1.0, state_every=0.5)
    running = asyncio.create_task(first.run(away))
    await bed.online("es")
    away.set()  # the vehicle goes away (OFFLINE): what corral sends now waits for it
    await running

    async def offline() -> bool:
        return (await bed.api.get("/fleet/robots/es")).json()["state"] == "offline"

    await until(offline, "the vehicle offline")
    mission = await bed.mission("es", "n5")
    answer = await bed.api.post("/fleet/robots/es/commands", json={"kind": "estop"})
    assert answer.status_code == 201
    log = (await bed.api.get("/fleet/robots/es/commands/log")).json()
    pending = {c["kind"] for c in log if c["acked_at"] is None}
    assert {"move", "estop"} <= pending, log
    # it comes back where it was: the e-stop goes first, then the order
    sim = bed.vehicle("es1", "n0", speed=1.0)

    async def stopped_with_its_order() -> bool:
        return sim.paused and sim.order_id == f"corral-mission-{mission}"

    await until(stopped_with_its_order, "the vehicle paused, holding its order")
    sent = [
        (n, b)
        for s, n, b in bed.recorder.messages
        if s == "es1" and n in ("order", "instantActions")
    ]
    kinds = [n if n == "order" else b["actions"][0]["actionType"] for n, b in sent]
    assert kinds[:2] == ["startPause", "order"], kinds
    assert sim.reached == [], "it never moved"
    assert sim.position in (None, (0.0, 0.0)), "it never moved"
    assert not sim.driving
    # resumed, it drives the order to its end
    await bed.api.post("/fleet/robots/es/commands", json={"kind": "resume"})
    await bed.done([mission], "the mission done after the resume")
    assert sim.reached == ["n1", "n2", "n3", "n4", "n5"]
    assert bed.recorder.violations == []
    assert bed.recorder.invalid == []


async def test_a_vehicle_counts_in_the_fleet_metrics_while_online(bed: Bed) -> None:
    assert (await bed.api.post("/fleet/maps", json=_line_map())).status_code == 201
    await bed.register("mt", "mt1", "line", "n0")
    replica = next(r["id"] for r in (await bed.api.get("/replicas")).json() if r["this"])

    async def figures() -> dict[tuple[str, str], float]:
        """(metric, channel or direction) -> value, of this replica's vda5050 samples."""
        text = (await bed.api.get("/metrics")).text
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("replica") == replica and labels.get("channel") == "vda5050":
                    out[(sample.name, labels.get("direction", ""))] = sample.value
        return out

    connected = ("corral_fleet_robots_connected", "")
    assert (await figures())[connected] == 0
    away = asyncio.Event()
    sim = SimVehicle(bed.broker.vehicle_url("acme", "mt1"), "acme", "mt1", "n0", state_every=0.5)
    running = asyncio.create_task(sim.run(away))
    try:
        await bed.online("mt")

        async def attached() -> bool:
            return (await figures())[connected] == 1

        await until(attached, "the vehicle counted as connected")
        mission = await bed.mission("mt", "n2")
        await bed.done([mission], "the vehicle's mission")
        online = await figures()
        assert online[("corral_fleet_telemetry_total", "")] >= 1  # its states at least
        assert (
            online[("corral_fleet_messages_total", "in")]
            > online[("corral_fleet_telemetry_total", "")]
        )  # its connection message too
        assert online[("corral_fleet_messages_total", "out")] >= 1  # its order
    finally:
        away.set()  # it says OFFLINE
        await running

    async def gone() -> bool:
        return (await figures())[connected] == 0

    await until(gone, "the vehicle no longer counted")


async def test_positions_between_nodes_come_from_visualizations(bed: Bed) -> None:
    """States come at nodes (and every 30 s here); the positions between nodes that corral
    shows are the vehicle's visualizations, each checked and counted."""
    assert (await bed.api.post("/fleet/maps", json=_line_map())).status_code == 201
    await bed.register("vz", "vz1", "line", "n0")
    url = bed.broker.vehicle_url("acme", "vz1")
    sim = SimVehicle(url, "acme", "vz1", "n0", speed=1.0, state_every=30)
    bed.tasks.append(asyncio.create_task(sim.run(bed.stop)))
    await bed.online("vz")
    mission = await bed.mission("vz", "n2")
    seen: set[float] = set()

    async def between_nodes() -> bool:
        telemetry = (await bed.api.get("/fleet/robots/vz")).json()["telemetry"]
        x = telemetry.get("position", {}).get("x")
        if isinstance(x, float | int):
            seen.add(float(x))
        return any(x % 2.0 for x in seen)  # nodes are 2 m apart

    await until(between_nodes, "a position between two nodes")
    await bed.done([mission], "the mission done")
    metrics = (await bed.api.get("/metrics")).text
    ok = re.search(
        r'direction="in",outcome="ok",replica="\w+",topic="visualization"\} (\S+)', metrics
    )
    assert ok is not None
    assert float(ok[1]) > 0


@pytest.mark.parametrize("server", [{"vda5050_visualization": False}], indirect=True)
async def test_with_visualization_off_positions_come_from_states(bed: Bed) -> None:
    assert (await bed.api.post("/fleet/maps", json=_line_map())).status_code == 201
    await bed.register("so", "so1", "line", "n0")
    sim = bed.vehicle("so1", "n0")
    await bed.online("so")
    mission = await bed.mission("so", "n2")
    await bed.done([mission], "the mission done")
    assert sim.reached == ["n1", "n2"]

    async def at_n2() -> bool:
        telemetry = (await bed.api.get("/fleet/robots/so")).json()["telemetry"]
        return bool(telemetry.get("position", {}).get("x") == 4.0)

    await until(at_n2, "the position of n2 from a state")
    sent = [b for s, n, b in bed.recorder.messages if s == "so1" and n == "visualization"]
    assert sent, "the vehicle sends visualizations all the same"
    metrics = (await bed.api.get("/metrics")).text
    assert not re.search(
        r'direction="in",outcome="ok",replica="\w+",topic="visualization"', metrics
    )
    assert re.search(r'direction="in",outcome="ok",replica="\w+",topic="state"', metrics)
