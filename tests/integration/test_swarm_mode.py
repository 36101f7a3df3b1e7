"""Stacks in swarm mode on two real engines joined in a swarm: services spread over both,
read back as corral's slots; a rolling update to an image whose healthcheck fails rolls
back by itself; down leaves nothing labelled behind.

The edge host (this machine's dockerd) is the manager; the robot host (netns corral-robot)
is a worker. No registry: the images are made locally on both engines.
"""

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from tests.support.engines import LOCAL_URL, ROBOT_URL, TWO_HOSTS, RobotEngine
from tests.support.server import ADMIN, ThreadServer

from corral.config import Settings

SICK = "local/busybox:sick"  # busybox with a HEALTHCHECK that always fails

STACK_FILE = """
x-corral:
  mode: swarm
services:
  web:
    image: {image}
    command: ["sh", "-c", "echo up; exec sleep 100000"]
    stop_grace_period: 1s
    restart: always
    deploy:
      replicas: 4
      placement:
        max_replicas_per_node: 2
      update_config:
        parallelism: 1
        monitor: 5s
        failure_action: rollback
"""


def _docker(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "-H", url, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s")


def _labelled(url: str, kind: str, stack: str) -> list[str]:
    """IDs of services or networks labelled with the stack (ls), or its running containers."""
    args = [kind, "ls"] if kind in ("service", "network") else ["ps"]
    done = _docker(url, *args, "-q", "--filter", f"label=corral.stack={stack}")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def _no_containers(url: str, stack: str) -> Callable[[], bool]:
    return lambda: not _labelled(url, "container", stack)


def _clean(stack: str) -> None:
    """Remove what an earlier, interrupted run left of a stack."""
    for service in _labelled(LOCAL_URL, "service", stack):
        _docker(LOCAL_URL, "service", "rm", service)
    for url in (LOCAL_URL, ROBOT_URL):
        _wait(_no_containers(url, stack), 60, "old tasks gone")
        for net in _labelled(url, "network", stack):
            _docker(url, "network", "rm", net)


def _service(stack: str) -> dict[str, Any]:
    done = _docker(LOCAL_URL, "service", "inspect", f"{stack}_web")
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)[0]
    return found


def _running_images(url: str, stack: str) -> list[str]:
    done = _docker(url, "ps", "--filter", f"label=corral.stack={stack}", "--format", "{{.Image}}")
    return done.stdout.split()


@pytest.fixture(scope="module")
def server(swarm: RobotEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    for url in (LOCAL_URL, ROBOT_URL):
        built = _docker(
            url,
            "build",
            "-q",
            "-t",
            SICK,
            "-",
            stdin="FROM local/busybox:1\nHEALTHCHECK --interval=1s --timeout=1s --retries=1 "
            "CMD false\n",
        )
        assert built.returncode == 0, built.stderr
    settings = Settings(
        home=tmp_path_factory.mktemp("swarm-mode"),
        bootstrap_token=ADMIN,
        local_docker_url="",
        engine_networks=["127.0.0.0/8", "10.231.0.0/24"],
        host_refresh_seconds=1.0,
        stack_resync_seconds=5.0,
    )
    with ThreadServer(settings) as running, running.client() as api:
        assert api.put("/hosts", json=TWO_HOSTS).status_code == 200
        _wait(lambda: all(h["facts"] for h in api.get("/hosts").json()), 30, "both hosts probed")
        yield running
        for stack in api.get("/stacks").json():
            api.delete(f"/stacks/{stack['name']}", timeout=120)


def _apply(api: httpx.Client, stack: str, image: str) -> dict[str, Any]:
    body = {"name": stack, "file": STACK_FILE.format(image=image)}
    response = api.post("/stacks", json=body, timeout=120)
    assert response.status_code in (200, 201), response.text
    result: dict[str, Any] = response.json()
    return result


def _all_running(api: httpx.Client, stack: str) -> Callable[[], bool]:
    def check() -> bool:
        slots = api.get(f"/stacks/{stack}").json()["slots"]
        return len(slots) == 4 and all(s["state"] == "running" for s in slots)

    return check


def test_swarm_stack_spreads_over_both_engines_and_goes_away(server: ThreadServer) -> None:
    stack = "swarmspread"
    _clean(stack)
    with server.client() as api:
        applied = _apply(api, stack, "local/busybox:1")
        assert applied["mode"] == "swarm"
        _wait(_all_running(api, stack), 120, "four replicas running")
        view = api.get(f"/stacks/{stack}").json()
        assert view["state"] == "running"
        slots = view["slots"]
        assert sorted(s["replica"] for s in slots) == [1, 2, 3, 4]
        by_host = {
            h: {s["container_id"] for s in slots if s["host"] == h} for h in ("edge", "robot")
        }
        assert {h: len(ids) for h, ids in by_host.items()} == {"edge": 2, "robot": 2}, slots

        # Task events in container mode's words: each replica's task running, and where.
        def started() -> dict[str, str]:
            events = api.get(
                "/events",
                params={"resource": f"stack/{stack}/web", "kind": "container.started"},
            ).json()
            return {e["data"]["container_id"]: e["data"]["host"] for e in events}

        _wait(lambda: len(started()) >= 4, 30, "a task event for each replica")
        placed = {cid: host for host, ids in by_host.items() for cid in ids}
        assert placed.items() <= started().items()

        # Real containers, two on each engine, the ones the slots name.
        for url, host in ((LOCAL_URL, "edge"), (ROBOT_URL, "robot")):
            running = _docker(
                url, "ps", "-q", "--no-trunc", "--filter", f"label=corral.stack={stack}"
            ).stdout.split()
            assert set(running) == by_host[host], (host, running)

        service = _service(stack)
        labels = service["Spec"]["Labels"]
        assert labels["corral.stack"] == stack
        assert labels["corral.service"] == "web"
        assert labels["corral.owned"] == "true"
        assert service["Spec"]["Mode"]["Replicated"]["Replicas"] == 4
        assert service["Spec"]["TaskTemplate"]["Placement"]["MaxReplicas"] == 2
        network = _docker(LOCAL_URL, "network", "inspect", f"{stack}_default")
        details = json.loads(network.stdout)[0]
        assert details["Driver"] == "overlay"
        assert details["Labels"]["corral.owned"] == "true"

        # Re-applying the unchanged file leaves the service alone.
        version = service["Version"]["Index"]
        _apply(api, stack, "local/busybox:1")
        assert _service(stack)["Version"]["Index"] == version
        assert {s["container_id"] for s in api.get(f"/stacks/{stack}").json()["slots"]} == (
            by_host["edge"] | by_host["robot"]
        )

        # Scaled by hand (`docker service scale`): corral sets the count back from the file.
        scaled = _docker(LOCAL_URL, "service", "scale", "--detach", f"{stack}_web=1")
        assert scaled.returncode == 0, scaled.stderr
        _wait(
            lambda: _service(stack)["Spec"]["Mode"]["Replicated"]["Replicas"] == 4,
            60,
            "the hand-made scale undone",
        )
        rescaled = api.get(
            "/events", params={"resource": f"stack/{stack}/web", "kind": "stack.service.rescaled"}
        ).json()
        assert len(rescaled) == 1, rescaled
        assert "scaled to 1 outside corral" in rescaled[0]["message"]
        _wait(_all_running(api, stack), 120, "four replicas running again")

        # Stop scales the service to nothing, start brings the four back.
        stopped = api.post(f"/stacks/{stack}/stop", json={"services": []}, timeout=120).json()
        assert {s["state"] for s in stopped["slots"]} == {"stopped"}
        for url in (LOCAL_URL, ROBOT_URL):
            _wait(_no_containers(url, stack), 60, "stopped tasks gone")
        started = api.post(f"/stacks/{stack}/start", json={"services": []}, timeout=120)
        assert started.status_code == 200, started.text
        _wait(_all_running(api, stack), 120, "four replicas running after start")

        logs = api.get(f"/stacks/{stack}/services/web/logs", params={"tail": 5})
        assert logs.status_code == 200
        assert b"up" in logs.content

        kinds = [
            e["kind"] for e in api.get("/events", params={"resource": f"stack/{stack}*"}).json()
        ]
        assert "stack.service.created" in kinds

        removed = api.delete(f"/stacks/{stack}", timeout=120)
        assert removed.status_code == 200, removed.text
        assert removed.json() == {"removed_containers": 4, "pending_hosts": {}}
        assert _labelled(LOCAL_URL, "service", stack) == []
        for url in (LOCAL_URL, ROBOT_URL):
            assert _labelled(url, "network", stack) == []
            assert _labelled(url, "container", stack) == []
        assert api.get(f"/stacks/{stack}").status_code == 404


def test_failing_healthcheck_update_rolls_back_by_itself(server: ThreadServer) -> None:
    stack = "swarmroll"
    _clean(stack)
    with server.client() as api:
        _apply(api, stack, "local/busybox:1")
        _wait(_all_running(api, stack), 120, "four replicas running")
        before = _service(stack)["Spec"]

        changed = _apply(api, stack, SICK)
        assert changed["mode"] == "swarm"

        def rolled_back() -> bool:
            events = api.get("/events", params={"resource": f"stack/{stack}/web"}).json()
            return any(e["kind"] == "stack.service.rolled_back" for e in events)

        _wait(rolled_back, 240, "the rolled_back event")
        service = _service(stack)
        assert service["UpdateStatus"]["State"] == "rollback_completed"
        image = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        assert image == before["TaskTemplate"]["ContainerSpec"]["Image"] == "local/busybox:1"
        assert service["Spec"]["Labels"] == before["Labels"]

        _wait(_all_running(api, stack), 120, "four replicas running again")
        slots = api.get(f"/stacks/{stack}").json()["slots"]
        assert {s["host"] for s in slots} == {"edge", "robot"}
        assert all("rolled back" in s["reason"] for s in slots), slots
        for url in (LOCAL_URL, ROBOT_URL):
            assert _running_images(url, stack) == ["local/busybox:1"] * 2

        events = api.get("/events", params={"resource": f"stack/{stack}/web"}).json()
        kinds = [e["kind"] for e in events]
        assert "stack.service.changed" in kinds
        rolled = next(e for e in events if e["kind"] == "stack.service.rolled_back")
        changed_event = next(e for e in events if e["kind"] == "stack.service.changed")
        assert rolled["data"]["rolled_back_from"] == changed_event["data"]["spec_hash"]

        # corral does not send the rolled-back spec again: after full resyncs the service
        # is as the rollback left it.
        version = service["Version"]["Index"]
        time.sleep(server.settings.stack_resync_seconds * 2 + 1)
        assert _service(stack)["Version"]["Index"] == version
        assert kinds.count("stack.service.changed") == 1

        assert api.delete(f"/stacks/{stack}", timeout=120).status_code == 200
        assert _labelled(LOCAL_URL, "service", stack) == []
        for url in (LOCAL_URL, ROBOT_URL):
            assert _labelled(url, "network", stack) == []


def test_swarm_mode_refusals_name_the_problem(server: ThreadServer) -> None:
    text = (
        "x-corral: {mode: swarm}\n"
        "services:\n"
        "  a:\n"
        "    image: local/busybox:1\n"
        "    privileged: true\n"
    )
    with server.client() as api:
        response = api.post("/stacks", json={"name": "swarmbad", "file": text})
        assert response.status_code == 422, response.text
        problems = response.json()["error"]["detail"]["problems"]
        assert any("line 5" in p and "privileged" in p and "swarm" in p for p in problems)
        constrained = (
            "x-corral: {mode: swarm}\n"
            "services:\n"
            "  a:\n"
            "    image: local/busybox:1\n"
            "    deploy: {placement: {constraints: [node.labels.role == moon]}}\n"
        )
        response = api.post("/stacks", json={"name": "swarmbad", "file": constrained})
        assert response.status_code == 409, response.text  # the swarm as it is: a conflict
        assert "no swarm node meets node.labels.role == moon" in response.json()["error"]["message"]
        assert api.get("/stacks/swarmbad").status_code == 404


def test_swarm_mode_needs_a_manager(
    swarm: RobotEngine, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With only the worker registered, a swarm-mode stack is refused before anything is made."""
    settings = Settings(
        home=tmp_path_factory.mktemp("swarm-worker-only"),
        bootstrap_token=ADMIN,
        local_docker_url="",
        engine_networks=["10.231.0.0/24"],
        host_refresh_seconds=1.0,
    )
    with ThreadServer(settings) as running, running.client() as api:
        hosts = {"hosts": [{"name": "robot", "url": ROBOT_URL, "insecure": True}]}
        assert api.put("/hosts", json=hosts).status_code == 200
        _wait(lambda: bool(api.get("/hosts").json()[0]["facts"]), 30, "robot probed")
        body = {"name": "lonely", "file": STACK_FILE.format(image="local/busybox:1")}
        response = api.post("/stacks", json=body)
        assert response.status_code == 409, response.text  # the hosts as they are now
        message = response.json()["error"]["message"]
        assert "needs a reachable swarm manager" in message
        assert "robot (worker)" in message
        assert _labelled(LOCAL_URL, "service", "lonely") == []


GLOBAL_FILE = """\
x-corral: {mode: swarm}
services:
  agent:
    image: local/busybox:1
    command: ["sh", "-c", "echo up; sleep 100000"]
    stop_grace_period: 1s
    deploy:
      mode: global
"""


def test_a_global_service_runs_once_on_each_engine(server: ThreadServer) -> None:
    stack = "swarmglobal"
    _clean(stack)
    with server.client() as api:

        def on_both() -> bool:
            slots = api.get(f"/stacks/{stack}").json()["slots"]
            placed = sorted((s["replica"], s["host"], s["state"]) for s in slots)
            return placed == [(1, "edge", "running"), (2, "robot", "running")]

        made = api.post("/stacks", json={"name": stack, "file": GLOBAL_FILE}, timeout=120)
        assert made.status_code == 201, made.text
        _wait(on_both, 120, "the global service's task on each engine")
        slots = api.get(f"/stacks/{stack}").json()["slots"]
        for url, host in ((LOCAL_URL, "edge"), (ROBOT_URL, "robot")):
            running = _docker(
                url, "ps", "-q", "--no-trunc", "--filter", f"label=corral.stack={stack}"
            ).stdout.split()
            assert running == [s["container_id"] for s in slots if s["host"] == host]
        mode = json.loads(_docker(LOCAL_URL, "service", "inspect", f"{stack}_agent").stdout)
        assert mode[0]["Spec"]["Mode"] == {"Global": {}}

        # A global service has no count to scale to 0: stop removes it, start makes it again.
        stopped = api.post(f"/stacks/{stack}/stop", json={"services": []}, timeout=120)
        assert [s["state"] for s in stopped.json()["slots"]] == ["stopped", "stopped"]
        assert _labelled(LOCAL_URL, "service", stack) == []
        for url in (LOCAL_URL, ROBOT_URL):
            _wait(_no_containers(url, stack), 60, "the stopped tasks gone")
        started = api.post(f"/stacks/{stack}/start", json={"services": []}, timeout=120)
        assert started.status_code == 200, started.text
        _wait(on_both, 120, "the task on each engine again after start")

        assert api.delete(f"/stacks/{stack}", timeout=120).status_code == 200
        for url in (LOCAL_URL, ROBOT_URL):
            assert _labelled(url, "container", stack) == []
        assert _labelled(LOCAL_URL, "service", stack) == []


def test_changing_mode_removes_what_the_old_mode_made(server: ThreadServer) -> None:
    stack = "swarmswitch"
    _clean(stack)
    plain = "services:\n  a:\n    image: local/busybox:1\n    command: sleep 100000\n"
    plain += "    stop_grace_period: 1s\n"
    with server.client() as api:
        first = api.post("/stacks", json={"name": stack, "file": plain}, timeout=120)
        assert first.status_code == 201, first.text
        assert first.json()["mode"] == "containers"
        assert len(_labelled(LOCAL_URL, "container", stack)) == 1

        # The same file, with swarm mode asked for by the API's flag (`corral up --mode`).
        wrong = api.post("/stacks", json={"name": stack, "file": plain, "mode": "global"})
        assert wrong.status_code == 422, wrong.text
        assert "mode" in wrong.text
        flagged = {"name": stack, "file": plain, "mode": "swarm"}
        second = api.post("/stacks", json=flagged, timeout=120)
        assert second.status_code == 200, second.text
        assert second.json()["mode"] == "swarm"
        _wait(
            lambda: (
                [s["state"] for s in api.get(f"/stacks/{stack}").json()["slots"]] == ["running"]
            ),
            120,
            "the swarm task running",
        )
        owned = _docker(
            LOCAL_URL, "ps", "-q", "--filter", f"label=corral.stack={stack}",
            "--filter", "label=corral.owned=true",
        )  # fmt: skip
        assert owned.stdout.split() == [], "container mode's container is gone"
        assert len(_labelled(LOCAL_URL, "service", stack)) == 1
        assert api.get(f"/stacks/{stack}").json()["mode"] == "swarm", "the flag is kept"

        third = api.post("/stacks", json={"name": stack, "file": plain}, timeout=120)
        assert third.status_code == 200, third.text
        assert [s["state"] for s in third.json()["slots"]] == ["running"]
        assert _labelled(LOCAL_URL, "service", stack) == []
        assert api.delete(f"/stacks/{stack}", timeout=120).status_code == 200
