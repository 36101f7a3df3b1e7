"""`corral down` never reports success for what it did not do: with the robot engine
stopped, the CLI exits non-zero naming the host; the stack's containers there are removed
once the engine answers again (and an event says so). The robot engine is left running.
"""

import json
import subprocess
from pathlib import Path

from tests.support.engines import LOCAL_URL, RobotEngine, engine_container_ids
from tests.support.server import ADMIN, ServeProcess, run_cli, wait_until

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
