"""Stacks on two real engines joined in a swarm: the Go1 example, restarts, a host that
goes away, images that exist on one host only, and the seed's own curl commands.

The edge host is this machine's dockerd; the robot host is the dockerd in netns corral-robot.
"""

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.engines import LOCAL_URL, ROBOT_URL, RobotEngine, engine_container_ids
from tests.support.server import ADMIN, ThreadServer

from corral.config import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "go1"
EDGE_SERVICES = {
    "ros-master",
    "digital-replica",
    "gesture-control-app",
    "go1-navigation",
    "rviz-vnc",
}
ROBOT_SERVICES = {"lidar-drivers", "go1-base"}


def _docker(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "-H", url, *args], capture_output=True, text=True, timeout=120, check=False
    )


def _wait(check: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def _clean(stack: str) -> None:
    """Remove what an earlier, interrupted run left of a stack, and the example's images."""
    for url in (LOCAL_URL, ROBOT_URL):
        ids = engine_container_ids(url, f"corral.stack={stack}")
        if ids:
            _docker(url, "rm", "-f", *ids)
        nets = _docker(url, "network", "ls", "-q", "--filter", f"label=corral.stack={stack}")
        for net in nets.stdout.split():
            _docker(url, "network", "rm", net)
        images = _docker(url, "images", "-q", "go1/*")
        if images.stdout.split():
            _docker(url, "rmi", "-f", *images.stdout.split())


@pytest.fixture(scope="module")
def server(swarm: RobotEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    settings = Settings(
        home=tmp_path_factory.mktemp("stacks"),
        bootstrap_token=ADMIN,
        local_docker_url="",
        engine_networks=["127.0.0.0/8", "10.231.0.0/24"],
        host_refresh_seconds=1.0,
        stack_resync_seconds=5.0,
        go1_file=EXAMPLE / "compose.yml",
        go1_anonymous=True,
    )
    _clean("go1")
    with ThreadServer(settings) as running, running.client() as api:
        hosts = {"hosts": [
            {"name": "edge", "url": LOCAL_URL, "labels": {"role": "edge"}},
            {"name": "robot", "url": ROBOT_URL, "labels": {"role": "robot"}},
        ]}  # fmt: skip
        assert api.put("/hosts", json=hosts).status_code == 200
        yield running


def _go1(api: httpx.Client) -> dict[str, object]:
    text = (EXAMPLE / "compose.yml").read_text()
    body = {"name": "go1", "file": text, "base_dir": str(EXAMPLE), "env": {"RVIZ_PORT": "16080"}}
    response = api.post("/stacks", json=body, timeout=300)
    assert response.status_code in (200, 201), response.text
    result: dict[str, object] = response.json()
    return result


def _by_service(stack: dict[str, object]) -> dict[str, dict[str, str]]:
    return {s["service"]: s for s in stack["slots"]}  # type: ignore[attr-defined, index]


def test_go1_example_across_two_hosts(server: ThreadServer) -> None:
    with server.client() as api:
        stack = _go1(api)
        slots = _by_service(stack)
        assert {s: v["state"] for s, v in slots.items()} == dict.fromkeys(
            EDGE_SERVICES | ROBOT_SERVICES, "running"
        ), slots
        assert {s for s, v in slots.items() if v["host"] == "edge"} == EDGE_SERVICES
        assert {s for s, v in slots.items() if v["host"] == "robot"} == ROBOT_SERVICES
        # The robot got its images without a manual step (built there by corral).
        assert _docker(ROBOT_URL, "image", "inspect", "go1/go1-base:1").returncode == 0
        # Across the overlay, by name, both ways.
        robot_to_edge = _docker(
            ROBOT_URL, "exec", "go1-go1-base-1", "sh", "-c", "nc -w 3 ros-master 11311 </dev/null"
        )
        assert robot_to_edge.returncode == 0, robot_to_edge.stderr
        edge_to_robot = _docker(
            LOCAL_URL, "exec", "go1-ros-master-1", "ping", "-c", "1", "-W", "3", "lidar-drivers"
        )
        assert edge_to_robot.returncode == 0, edge_to_robot.stdout + edge_to_robot.stderr
        network = _docker(LOCAL_URL, "network", "inspect", "go1_digital-twin-service")
        assert json.loads(network.stdout)[0]["Driver"] == "overlay"

        # Re-applying the unchanged file touches nothing.
        before = {s: v["container_id"] for s, v in slots.items()}
        again = _by_service(_go1(api))
        assert {s: v["container_id"] for s, v in again.items()} == before
        logs = api.get("/stacks/go1/services/go1-base/logs", params={"tail": 5})
        assert logs.status_code == 200
        assert b"ros-master reachable" in logs.content
