"""The fleet's figures in /metrics against a real corral: robots on raw WebSockets and one
polling over HTTP connect, report, take commands and ack them, drive a step of a mission;
each figure moves as a user reading /metrics would expect, and robots connected drop back.
"""

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support.fleet_maps import corridor
from tests.support.robot_socket import connect_robot
from tests.support.server import ADMIN, ThreadServer, wait_until

from corral.config import Settings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    settings = Settings(home=tmp_path, bootstrap_token=ADMIN, local_docker_url="")
    with ThreadServer(settings) as running:
        yield running


def scrape(api: httpx.Client) -> Samples:
    answer = api.get("/metrics")
    assert answer.status_code == 200, answer.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no {name}{labels} in /metrics"
    return samples[key]


class SocketRobot:
    """A robot on a raw WebSocket that counts every frame it sends and reads."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.sent = 0
        self.read = 0
        self.commands: list[dict[str, Any]] = []

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))
        self.sent += 1

    async def expect(self, kind: str) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            self.read += 1
            if message["type"] == "command":
                self.commands.append(message)
            if message["type"] == kind:
                return message

    async def settle(self) -> None:
        """A ping's pong comes after everything sent before it is handled and stored."""
        await self.send(type="ping")
        await self.expect("pong")

    async def ack_all(self) -> None:
        for command in self.commands:
            await self.send(type="ack", id=command["id"])
        self.commands = []
        await self.settle()


class PollingRobot(threading.Thread):
    """A robot on the HTTP channel: long polls for commands and acks each, counting its
    requests, until told to stop."""

    def __init__(self, url: str, name: str, token: str) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        self.name = name
        self.requests = 0
        self.taken: list[int] = []
        self.stopping = threading.Event()

    def post(self, path: str, body: dict[str, Any]) -> None:
        self.requests += 1
        answer = self.client.post(f"/fleet/robots/{self.name}/{path}", json=body)
        assert answer.status_code == 204, answer.text

    def run(self) -> None:
        after = 0
        with self.client:
            while not self.stopping.is_set():
                self.requests += 1
                answer = self.client.get(
                    f"/fleet/robots/{self.name}/commands", params={"after": after, "wait": 3}
                )
                for command in answer.json():
                    after = max(after, command["id"])
                    self.taken.append(command["id"])
                    self.post("acks", {"ids": [command["id"]]})

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
        assert not self.is_alive()


def register(api: httpx.Client, name: str, **extra: Any) -> str:
    answer = api.post("/fleet/robots", json={"name": name, **extra})
    assert answer.status_code == 201, answer.text
    token: str = answer.json()["token"]
    return token


def test_fleet_metrics_follow_robots_messages_decisions_and_round_trips(
    server: ThreadServer,
) -> None:
    async def scenario() -> None:
        with server.client() as api:
            replica = next(r["id"] for r in api.get("/replicas").json() if r["this"])
            assert api.post("/fleet/maps", json=corridor()).status_code == 201
            tokens = {
                "w1": register(api, "w1", map="corridor", marker="A"),
                "w2": register(api, "w2", map="corridor", marker="C"),
                "h1": register(api, "h1"),
            }

            def connected(samples: Samples, channel: str) -> float:
                return value(
                    samples, "corral_fleet_robots_connected", replica=replica, channel=channel
                )

            before = scrape(api)
            for channel in ("websocket", "http", "vda5050"):
                assert connected(before, channel) == 0
            assert (
                value(before, "corral_fleet_reservations_held", replica=replica, map="corridor")
                == 2
            )

            w1 = SocketRobot(await connect_robot(server.url, tokens["w1"]))
            w2 = SocketRobot(await connect_robot(server.url, tokens["w2"]))
            for name, robot in (("w1", w1), ("w2", w2)):
                await robot.send(type="hello", robot=name)
                await robot.expect("welcome")
            poller = PollingRobot(server.url, "h1", tokens["h1"])
            poller.start()
            try:
                await asyncio.to_thread(
                    wait_until, lambda: connected(scrape(api), "http") == 1, "h1 polls", 10
                )
                samples = scrape(api)
                assert connected(samples, "websocket") == 2
                assert connected(samples, "vda5050") == 0

                # telemetry: five on a socket, three over HTTP
                for battery in range(90, 95):
                    await w1.send(type="telemetry", marker="A", battery=battery)
                await w1.settle()
                for battery in (80, 81, 82):
                    await asyncio.to_thread(poller.post, "telemetry", {"battery": battery})
                samples = scrape(api)
                telemetry = "corral_fleet_telemetry_total"
                assert value(samples, telemetry, replica=replica, channel="websocket") == 5
                assert value(samples, telemetry, replica=replica, channel="http") == 3
                assert value(samples, telemetry, replica=replica, channel="vda5050") == 0

                # an operator's command to each channel, each acknowledged
                for name in ("w1", "h1"):
                    answer = api.post(
                        f"/fleet/robots/{name}/commands", json={"kind": "custom", "payload": {}}
                    )
                    assert answer.status_code == 201, answer.text
                await w1.expect("command")
                await w1.ack_all()
                await asyncio.to_thread(
                    wait_until, lambda: len(poller.taken) == 1, "h1's command", 10
                )

                # a step of a mission: A -> B granted; at B, C is w2's: w1 waits (refused)
                answer = api.post("/fleet/missions", json={"robot": "w1", "goal": "D"})
                assert answer.status_code == 201, answer.text
                while len(w1.commands) < 2:  # the mission, then the move to B
                    await w1.expect("command")
                await w1.ack_all()
                await w1.send(type="checkpoint", marker="B")
                await w1.settle()
                await w2.send(type="checkpoint", marker="D")  # not reserved for it: refused
                error = await w2.expect("error")
                assert error["code"] == "conflict", error
                await w2.settle()

                def trips_counted() -> bool:
                    count = (
                        "corral_fleet_command_round_trip_seconds_count",
                        (("replica", replica),),
                    )
                    return scrape(api).get(count) == 4

                # h1's ack is its own request: it may be stored a moment after its answer is read
                await asyncio.to_thread(wait_until, trips_counted, "4 round trips", 10)
                samples = scrape(api)
                trip = "corral_fleet_command_round_trip_seconds"
                assert value(samples, f"{trip}_bucket", replica=replica, le="+Inf") == 4
                assert value(samples, f"{trip}_bucket", replica=replica, le="10.0") == 4
                assert 0 < value(samples, f"{trip}_sum", replica=replica) < 40
                decided = "corral_fleet_checkpoints_total"
                assert value(samples, decided, replica=replica, outcome="taken") == 1
                assert value(samples, decided, replica=replica, outcome="refused") == 1
                requests = "corral_fleet_reservations_total"
                assert value(samples, requests, replica=replica, outcome="granted") == 1
                assert value(samples, requests, replica=replica, outcome="refused") == 1
                held = "corral_fleet_reservations_held"
                assert value(samples, held, replica=replica, map="corridor") == 2  # B and C

                messages = "corral_fleet_messages_total"
                robots_sent = w1.sent + w2.sent
                robots_read = w1.read + w2.read
                ws = {"replica": replica, "channel": "websocket"}
                assert value(samples, messages, **ws, direction="in") == robots_sent
                assert value(samples, messages, **ws, direction="out") == robots_read
                assert (
                    value(samples, messages, replica=replica, channel="http", direction="out") == 1
                )

                # robots go: connected drops back, the counters stay
                await w1.ws.close()
                await w2.ws.close()
                await asyncio.to_thread(poller.stop)

                def all_gone() -> bool:
                    now = scrape(api)
                    return all(connected(now, c) == 0 for c in ("websocket", "http", "vda5050"))

                await asyncio.to_thread(wait_until, all_gone, "robots connected back to 0", 10)
                after = scrape(api)
                assert value(after, telemetry, replica=replica, channel="websocket") == 5
                http_in = value(after, messages, replica=replica, channel="http", direction="in")
                assert http_in == poller.requests
            finally:  # a failure above leaves nothing open behind it
                poller.stopping.set()
                for robot in (w1, w2):
                    await robot.ws.close()

    asyncio.run(scenario())
