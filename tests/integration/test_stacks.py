"""Stacks on two real engines joined in a swarm: the Go1 example, restarts, a host that
goes away, images that exist on one host only, and the seed's own curl commands.

The edge host is this machine's dockerd; the robot host is the dockerd in netns corral-robot.
"""

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.engines import LOCAL_URL, ROBOT_URL, TWO_HOSTS, RobotEngine, engine_container_ids
from tests.support.server import ADMIN, ThreadServer, wait_until

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
        assert api.put("/hosts", json=TWO_HOSTS).status_code == 200
        yield running
        for stack in api.get("/stacks").json():
            api.delete(f"/stacks/{stack['name']}", timeout=120)


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


def _slot(api: httpx.Client, stack: str, service: str) -> dict[str, str]:
    return _by_service(api.get(f"/stacks/{stack}").json())[service]


def test_killed_container_restarts_and_stopped_stays_stopped(server: ThreadServer) -> None:
    with server.client() as api:
        _go1(api)
        old = _slot(api, "go1", "digital-replica")["container_id"]
        assert _docker(LOCAL_URL, "kill", "go1-digital-replica-1").returncode == 0

        def running_again() -> bool:
            state = _docker(LOCAL_URL, "inspect", "-f", "{{.State.Running}}", old)
            return state.stdout.strip() == "true"

        wait_until(running_again, "killed container restarted", 60)

        def said() -> bool:  # the engine restarts it; corral's events follow
            events = api.get("/events", params={"resource": "stack/go1/digital-replica"})
            kinds = {e["kind"] for e in events.json()}
            return {"container.died", "container.restarted"} <= kinds

        wait_until(said, "events container.died and container.restarted", 60)
        events = api.get("/events", params={"resource": "stack/go1/digital-replica"}).json()
        restarted = [e for e in events if e["kind"] == "container.restarted"][-1]
        assert "exited with code 137" in restarted["message"]

        stopped = api.post("/stacks/go1/stop", json={"services": ["digital-replica"]})
        assert _by_service(stopped.json())["digital-replica"]["state"] == "stopped"
        time.sleep(server.settings.stack_resync_seconds + 1)  # a full resync passes
        state = _docker(LOCAL_URL, "inspect", "-f", "{{.State.Running}}", old).stdout.strip()
        assert state == "false", "a container stopped through corral stays stopped"
        started = api.post("/stacks/go1/start", json={"services": ["digital-replica"]})
        assert _by_service(started.json())["digital-replica"]["state"] == "running"
        unknown = api.post("/stacks/go1/stop", json={"services": ["nope"]})
        assert unknown.status_code == 404


def test_seed_curl_commands(server: ThreadServer) -> None:
    base = server.url

    def curl(path: str, data: str | None = None) -> tuple[int, dict[str, object]]:
        args = ["curl", "-s", "-w", "\n%{http_code}", "-X", "POST", f"{base}{path}"]
        if data is not None:
            args += ["-d", data]
        args += ["-H", "Content-Type: application/json"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True)
        body, _, code = done.stdout.rpartition("\n")
        return int(code), json.loads(body)

    code, body = curl("/deploy/")
    assert (code, body["success"]) == (200, True), body
    assert len(body["containers"]) == 7  # type: ignore[arg-type]
    code, body = curl("/stop/", '{"containerName": ["rviz-vnc", "go1-base"]}')
    assert code == 200, body
    assert {c["name"] for c in body["containers"]} == {"rviz-vnc", "go1-base"}  # type: ignore[union-attr]
    assert (
        _docker(ROBOT_URL, "inspect", "-f", "{{.State.Running}}", "go1-go1-base-1").stdout.strip()
        == "false"
    )
    code, body = curl("/start/", '{"containerName": ["rviz-vnc", "go1-base"]}')
    assert code == 200, body
    assert (
        _docker(ROBOT_URL, "inspect", "-f", "{{.State.Running}}", "go1-go1-base-1").stdout.strip()
        == "true"
    )
    code, body = curl("/stop/", '{"containerName": ["no-such-thing"]}')
    assert code == 404, body
    foreign = _docker(
        LOCAL_URL, "run", "-d", "--name", "not-corral", "local/busybox:1", "sleep", "300"
    )
    try:
        code, body = curl("/terminate/")
        assert code == 200, body
        assert (body["success"], body["removed"]) == (True, 7), body
        assert engine_container_ids(LOCAL_URL, "corral.stack=go1") == []
        assert engine_container_ids(ROBOT_URL, "corral.stack=go1") == []
        alive = _docker(LOCAL_URL, "inspect", "-f", "{{.State.Running}}", "not-corral")
        assert alive.stdout.strip() == "true", "terminate touches only the stack's containers"
    finally:
        _docker(LOCAL_URL, "rm", "-f", foreign.stdout.strip())


def test_image_only_on_edge_is_copied_to_robot(server: ThreadServer) -> None:
    tag = "local/edge-only:1"
    _docker(ROBOT_URL, "rmi", "-f", tag)
    assert _docker(LOCAL_URL, "tag", "local/busybox:1", tag).returncode == 0
    stack = f"""
services:
  probe:
    image: {tag}
    command: sleep 300
    deploy:
      placement:
        constraints: [node.labels.role == robot]
"""
    with server.client() as api:
        response = api.post("/stacks", json={"name": "copy", "file": stack}, timeout=300)
        assert response.status_code == 201, response.text
        slot = _by_service(response.json())["probe"]
        assert (slot["host"], slot["state"]) == ("robot", "running"), slot
        assert _docker(ROBOT_URL, "image", "inspect", tag).returncode == 0
        kinds = [e["kind"] for e in api.get("/events", params={"resource": "stack/copy/*"}).json()]
        assert "image.copied" in kinds
        assert api.delete("/stacks/copy").json() == {"removed_containers": 1, "pending_hosts": {}}


def test_a_build_gets_its_base_image_from_another_host(
    server: ThreadServer, tmp_path: Path
) -> None:
    base, built = "local/edge-only-base:1", "local/built-on-robot:1"
    for url in (LOCAL_URL, ROBOT_URL):
        _docker(url, "rmi", "-f", built)
    _docker(ROBOT_URL, "rmi", "-f", base)
    assert _docker(LOCAL_URL, "tag", "local/busybox:1", base).returncode == 0
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "Dockerfile").write_text(
        f'ARG BASE={base}\nFROM $BASE\nCMD ["sleep", "300"]\n'
    )
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "Dockerfile").write_text("FROM local/nowhere-at-all:1\n")
    stack = f"""
services:
  probe:
    image: {built}
    build: ./img
    deploy:
      placement:
        constraints: [node.labels.role == robot]
"""
    with server.client() as api:
        body = {"name": "bases", "file": stack, "base_dir": str(tmp_path)}
        response = api.post("/stacks", json=body, timeout=300)
        assert response.status_code == 201, response.text
        slot = _by_service(response.json())["probe"]
        assert (slot["host"], slot["state"]) == ("robot", "running"), slot
        assert _docker(ROBOT_URL, "image", "inspect", base).returncode == 0
        events = api.get("/events", params={"resource": "stack/bases/*"}).json()
        messages = [e["message"] for e in events]
        assert f"copying {base} from edge to robot" in messages
        assert f"building {built} on robot" in messages
        assert api.delete("/stacks/bases").json() == {"removed_containers": 1, "pending_hosts": {}}

        missing = stack.replace(built, "local/never-built-base:1").replace("./img", "./gone")
        body = {"name": "nobase", "file": missing, "base_dir": str(tmp_path)}
        refused = api.post("/stacks", json=body, timeout=300)
        assert refused.status_code == 409, refused.text  # the hosts as they are: a conflict
        message = refused.json()["error"]["message"]
        assert "base image local/nowhere-at-all:1 (FROM on line 1 of" in message
        assert "is on no reachable host" in message
    for url in (LOCAL_URL, ROBOT_URL):
        _docker(url, "rmi", "-f", built, base)


BAD_FILES = [
    ("services:\n  a:\n    image: local/busybox:1\n    colour: red\n", "line 4", "colour"),
    (
        "services:\n  a:\n    image: local/busybox:1\n    deploy:\n      placement:\n"
        "        constraints: [node.labels.role ~ robot]\n",
        "line 6",
        "constraint",
    ),
    (
        "services:\n  a:\n    image: local/busybox:1\n    depends_on: [b]\n"
        "  b:\n    image: local/busybox:1\n    depends_on: [a]\n",
        "line ",
        "cycle",
    ),
    (
        "services:\n  a:\n    image: local/busybox:1\n    deploy:\n      placement:\n"
        "        constraints: [node.labels.role == moon]\n",
        "line 2",
        "no host meets",
    ),
    ("services:\n  a:\n    image: local/never-built:1\n", "line 2", "no build"),
]
# What the file cannot be anywhere is 422; what no host can take as the hosts are now
# (a constraint none meets, an image none has) is a conflict with that state: 409.
ABOUT_THE_HOSTS = ("no host meets", "no build")


@pytest.mark.parametrize(("text", "line", "says"), BAD_FILES)
def test_bad_stack_files_are_refused_with_key_and_line(
    server: ThreadServer, text: str, line: str, says: str
) -> None:
    with server.client() as api:
        response = api.post("/stacks", json={"name": "bad", "file": text})
        expected = 409 if says in ABOUT_THE_HOSTS else 422
        assert response.status_code == expected, response.text
        problems = response.json()["error"]["detail"]["problems"]
        assert any(line in p and says in p for p in problems), problems
        checked = api.post("/stacks/validate", json={"name": "bad", "file": text})
        if checked.status_code == 200:
            assert not checked.json()["valid"]
        assert api.get("/stacks/bad").status_code == 404


def test_robot_engine_stops_mid_apply(server: ThreadServer, swarm: RobotEngine) -> None:
    with server.client() as api:
        api.delete("/stacks/go1")
        result: dict[str, object] = {}

        def apply() -> None:
            result["stack"] = _go1(api)

        applying = threading.Thread(target=apply)
        applying.start()
        wait_until(
            lambda: engine_container_ids(LOCAL_URL, "corral.service=ros-master"),
            "ros-master created",
            60,
        )
        swarm.stop()
        try:
            applying.join(timeout=300)
            slots = _by_service(result["stack"])  # type: ignore[arg-type]
            for service in EDGE_SERVICES:
                assert slots[service]["state"] == "running", slots[service]

            def robot_pending() -> bool:
                slots = _by_service(api.get("/stacks/go1").json())
                return all(
                    slots[s]["state"] == "pending" and "robot is unreachable" in slots[s]["reason"]
                    for s in ROBOT_SERVICES
                )

            wait_until(robot_pending, "robot services pending with the reason", 60)
            slots = _by_service(api.get("/stacks/go1").json())
            assert all(slots[s]["state"] == "running" for s in EDGE_SERVICES)
        finally:
            swarm.start()

        def converged() -> bool:
            slots = _by_service(api.get("/stacks/go1").json())
            return all(s["state"] == "running" for s in slots.values())

        wait_until(converged, "stack converged after the robot engine returned", 120)
        assert len(engine_container_ids(ROBOT_URL, "corral.stack=go1")) == 2
        assert len(engine_container_ids(LOCAL_URL, "corral.stack=go1")) == 5
