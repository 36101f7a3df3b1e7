"""`corral down` never reports success for what it did not do: with the robot engine
stopped, the CLI exits non-zero naming the host; the stack's containers there are removed
once the engine answers again (and an event says so), also when its link goes down in the
middle of `down`. The robot engine is left running.
"""

import json
import re
import subprocess
import time
from pathlib import Path

from tests.support.engines import (
    LOCAL_URL,
    VETH_EDGE,
    RobotEngine,
    engine_container_ids,
    running_container_ids,
)
from tests.support.server import (
    ADMIN,
    ServeProcess,
    corral_command,
    json_objects,
    run_cli,
    wait_until,
)

STACK = "downaway"
FILE = """
services:
  here:
    image: local/busybox:1
    command: sleep 600
    stop_grace_period: 1s
  there:
    image: local/busybox:1
    command: sleep 600
    stop_grace_period: 1s
    deploy:
      placement:
        constraints: [node.labels.role == robot]
"""


def test_down_with_a_host_away(robot_engine: RobotEngine, tmp_path: Path) -> None:
    label = f"corral.stack={STACK}"
    hosts = tmp_path / "hosts.yml"
    hosts.write_text(
        f"hosts:\n  local: {LOCAL_URL}\n"
        f"  robot: {{url: '{robot_engine.url}', labels: {{role: robot}}, insecure: true}}\n"
    )
    (tmp_path / "stack.yml").write_text(FILE)
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": LOCAL_URL,
        "CORRAL_HOSTS_FILE": str(hosts),
        "CORRAL_HOST_REFRESH_SECONDS": "0.5",
        "CORRAL_STACK_RESYNC_SECONDS": "1",
    }
    serve = ServeProcess(tmp_path, env).start()
    try:
        up = run_cli(serve, "up", "-f", str(tmp_path / "stack.yml"), "-n", STACK)
        assert up.returncode == 0, up.stdout + up.stderr
        assert len(engine_container_ids(robot_engine.url, label)) == 1

        robot_engine.stop()

        def robot_away() -> bool:
            view = json.loads(run_cli(serve, "--json", "host", "refresh", "robot").stdout)
            return view["reachable"] is False

        wait_until(robot_away, "host robot unreachable", limit=60)
        stop = run_cli(serve, "stop", STACK, "there")
        assert stop.returncode == 1, stop.stdout
        assert stop.stderr.startswith("error: not stopped: there on robot (pending: host robot"), (
            stop.stderr
        )
        down = run_cli(serve, "down", STACK)
        assert down.returncode == 1, down.stdout
        assert "stack downaway removed (1 containers)" in down.stdout
        assert "not removed from hosts that did not answer (robot:" in down.stderr
        assert engine_container_ids(LOCAL_URL, label) == []

        robot_engine.start()
        wait_until(
            lambda: engine_container_ids(robot_engine.url, label) == [],
            "the stack's container on robot removed once it answers",
            limit=120,
        )
        # The event is stored just after the removal it reports.
        wait_until(
            lambda: (
                "stack.leftovers_removed" in run_cli(serve, "--json", "events", "-n", "200").stdout
            ),
            "the leftovers_removed event",
            limit=30,
        )
        events = run_cli(serve, "--json", "events", "-n", "200").stdout
        assert "containers left on robot when it was removed" in events
    finally:
        serve.stop()
        if not robot_engine.is_up():  # leave the robot engine running, as found
            robot_engine.start()
        for url in (LOCAL_URL, robot_engine.url):  # what a failed run may have left
            left = engine_container_ids(url, label)
            if left:
                subprocess.run(["docker", "-H", url, "rm", "-f", *left], capture_output=True)


CUT_STACK = "downcut"
LEAVES = 6
CUT_FILE = f"""
services:
  here:
    image: local/busybox:1
    command: sleep 600
    stop_grace_period: 1s
  base:
    image: local/busybox:1
    command: sleep 600
    stop_grace_period: 1s
    deploy:
      placement:
        constraints: [node.labels.role == robot]
  leaf:
    image: local/busybox:1
    command: sleep 600
    stop_grace_period: 1s
    depends_on: [base]
    deploy:
      replicas: {LEAVES}
      placement:
        constraints: [node.labels.role == robot]
"""


def _link(state: str) -> None:
    subprocess.run(["ip", "link", "set", VETH_EDGE, state], check=True, timeout=30)


def _link_up() -> bool:
    shown = subprocess.run(["ip", "link", "show", VETH_EDGE], capture_output=True, text=True)
    return ",UP" in shown.stdout or "<UP" in shown.stdout


def test_down_with_a_host_cut_off_midway(robot_engine: RobotEngine, tmp_path: Path) -> None:
    """The robot engine's link goes down while `down` is removing the stack's containers
    there (some are gone, some are not): the CLI exits 1 naming robot, `ps` shows the stack
    as removing, and once the link is back corral removes what was left, by itself."""
    label = f"corral.stack={CUT_STACK}"
    hosts = tmp_path / "hosts.yml"
    hosts.write_text(
        f"hosts:\n  local: {LOCAL_URL}\n"
        f"  robot: {{url: '{robot_engine.url}', labels: {{role: robot}}, insecure: true}}\n"
    )
    (tmp_path / "stack.yml").write_text(CUT_FILE)
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": LOCAL_URL,
        "CORRAL_HOSTS_FILE": str(hosts),
        "CORRAL_HOST_REFRESH_SECONDS": "0.5",
        "CORRAL_STACK_RESYNC_SECONDS": "1",
    }
    # Seen from inside the robot's namespace: its unix socket answers with the link down.
    inside = robot_engine.socket_url
    serve = ServeProcess(tmp_path, env).start()
    try:
        up = run_cli(serve, "up", "-f", str(tmp_path / "stack.yml"), "-n", CUT_STACK)
        assert up.returncode == 0, up.stdout + up.stderr
        names = {cid: _name(inside, cid) for cid in engine_container_ids(robot_engine.url, label)}
        assert len(names) == LEAVES + 1, names
        base = next(cid for cid, name in names.items() if name.endswith("-base-1"))
        folder = robot_engine.data_root / "containers"

        down = subprocess.Popen(
            [*corral_command(), "down", CUT_STACK],
            env={**serve.env, "CORRAL_URL": serve.url, "CORRAL_TOKEN": ADMIN},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Cut the link as soon as the first of the stack's containers on robot is gone.
        deadline = time.monotonic() + 120
        while True:
            present = {cid for cid in names if (folder / cid).exists()}
            if len(present) < len(names) or down.poll() is not None:
                break
            assert time.monotonic() < deadline, "down removed nothing on robot in 120 s"
            time.sleep(0.005)
        _link("down")
        assert down.poll() is None, "the cut came after down had answered"
        leaves_left = [cid for cid in present if cid != base]
        assert 0 < len(present) < len(names), (present, names)
        assert leaves_left, "the cut came after the leaves (removed first) were all gone"

        stdout, stderr = down.communicate(timeout=120)
        assert down.returncode == 1, stdout + stderr
        assert "not removed from hosts that did not answer (robot:" in stderr, stderr
        assert engine_container_ids(LOCAL_URL, label) == [], "the reachable host is done"
        # base waits for the leaves (dependents go first): never asked for, it is still there.
        left = engine_container_ids(inside, label)
        assert base in left, left

        shown = run_cli(serve, "ps", CUT_STACK)
        assert shown.returncode == 0, shown.stderr
        assert f"stack {CUT_STACK}: removing" in shown.stdout, shown.stdout
        assert "left on robot, removed when it answers:" in shown.stdout, shown.stdout
        listed = json.loads(run_cli(serve, "--json", "stack", "ls").stdout)
        assert [(s["name"], s["state"], sorted(s["pending_removal"])) for s in listed] == [
            (CUT_STACK, "removing", ["robot"])
        ]

        _link("up")
        wait_until(
            lambda: engine_container_ids(inside, label) == [],
            "what was left on robot removed once it answers",
            limit=120,
        )
        wait_until(
            lambda: (
                "stack.leftovers_removed" in run_cli(serve, "--json", "events", "-n", "200").stdout
            ),
            "the leftovers_removed event",
            limit=30,
        )
        events = json_objects(run_cli(serve, "--json", "events", "-n", "200").stdout)
        done = [e for e in events if e["kind"] == "stack.leftovers_removed"]
        assert done[0]["data"]["host"] == "robot"
        assert done[0]["data"]["removed"] >= 1, done  # corral removed them, not the engine
        gone = run_cli(serve, "ps", CUT_STACK)
        assert gone.returncode != 0, gone.stdout
        assert "not found" in gone.stderr, gone.stderr
    finally:
        serve.stop()
        if not _link_up():
            _link("up")
        for url in (LOCAL_URL, inside):  # what a failed run may have left
            left = engine_container_ids(url, label)
            if left:
                subprocess.run(["docker", "-H", url, "rm", "-f", *left], capture_output=True)


STOP_FILE = """
services:
  slow:
    image: local/busybox:1
    command: sleep 600
    stop_grace_period: 30s
    deploy:
      placement:
        constraints: [node.labels.role == robot]
"""


def test_stop_with_a_host_cut_off_midway(robot_engine: RobotEngine, tmp_path: Path) -> None:
    """The robot engine's link goes down while `corral stop` waits for a container there to
    stop (its PID 1 ignores SIGTERM: a 30 s grace period): corral answers at once, exit 1
    naming robot, and the service ends stopped once the link is back."""
    label = "corral.stack=stopcut"
    hosts = tmp_path / "hosts.yml"
    hosts.write_text(
        f"hosts:\n  robot: {{url: '{robot_engine.url}', labels: {{role: robot}}, insecure: true}}\n"
    )
    (tmp_path / "stack.yml").write_text(STOP_FILE)
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_HOSTS_FILE": str(hosts),
        "CORRAL_HOST_REFRESH_SECONDS": "0.5",
        "CORRAL_STACK_RESYNC_SECONDS": "1",
    }
    inside = robot_engine.socket_url
    serve = ServeProcess(tmp_path, env).start()
    events: subprocess.Popen[str] | None = None
    try:
        up = run_cli(serve, "up", "-f", str(tmp_path / "stack.yml"), "-n", "stopcut")
        assert up.returncode == 0, up.stdout + up.stderr
        [cid] = engine_container_ids(inside, label)
        events = subprocess.Popen(
            ["docker", "-H", inside, "events", "--filter", f"container={cid}",
             "--format", "{{.Action}} {{.Actor.Attributes.signal}}"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert events.stdout is not None
        stop = subprocess.Popen(
            [*corral_command(), "stop", "stopcut", "slow"],
            env={**serve.env, "CORRAL_URL": serve.url, "CORRAL_TOKEN": ADMIN},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The engine sent SIGTERM: the stop is under way, waiting out the grace period.
        assert events.stdout.readline().strip() == "kill 15"
        _link("down")
        _, stderr = stop.communicate(timeout=120)
        assert stop.returncode == 1, stderr
        # The stop in flight may belong to the request's own pass ("stopped answering") or to
        # a resync pass that ran first, the request's pass then finding robot already lost.
        assert re.match(
            r"error: not stopped: slow on robot \(pending: host robot "
            r"(stopped answering|is unreachable)",
            stderr,
        ), stderr
        state = subprocess.run(
            ["docker", "-H", inside, "inspect", "--format", "{{.State.Status}}", cid],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip
        assert state == "running", "corral answered while the engine was still stopping it"

        _link("up")

        def stopped() -> bool:
            shown = json.loads(run_cli(serve, "--json", "ps", "stopcut").stdout)
            return [s["state"] for s in shown["slots"]] == ["stopped"]

        wait_until(stopped, "slow stopped once robot answers", limit=120)
        assert running_container_ids(inside, label) == []
        assert engine_container_ids(inside, label) == [cid], "the same container, not another"
    finally:
        if events is not None:
            events.kill()
            events.communicate()
        serve.stop()
        if not _link_up():
            _link("up")
        left = engine_container_ids(inside, label)
        if left:
            subprocess.run(["docker", "-H", inside, "rm", "-f", *left], capture_output=True)


def _name(url: str, cid: str) -> str:
    done = subprocess.run(
        ["docker", "-H", url, "inspect", "--format", "{{.Name}}", cid],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip().lstrip("/")
