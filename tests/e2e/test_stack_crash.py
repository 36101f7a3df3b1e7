"""SIGKILL of `corral serve` in the middle of `corral up`, then a restart.

corral must converge to exactly one container per replica on both engines: none orphaned,
none doubled, nothing it does not own touched.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
from tests.support.engines import LOCAL_URL, ROBOT_URL, RobotEngine, engine_container_ids
from tests.support.server import ADMIN, ServeProcess, corral_command

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "go1"


def _count(label: str) -> int:
    return len(engine_container_ids(LOCAL_URL, label)) + len(engine_container_ids(ROBOT_URL, label))


def _running(label: str) -> int:
    """Containers with `label` running on both engines."""
    found = 0
    for url in (LOCAL_URL, ROBOT_URL):
        ps = subprocess.run(
            ["docker", "-H", url, "ps", "-q", "--filter", f"label={label}",
             "--filter", "status=running"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        found += len(ps.stdout.split())
    return found


def test_sigkill_during_up_then_restart(swarm: RobotEngine, tmp_path: Path) -> None:
    for url in (LOCAL_URL, ROBOT_URL):
        leftovers = engine_container_ids(url, "corral.stack=crash")
        if leftovers:
            subprocess.run(["docker", "-H", url, "rm", "-f", *leftovers], check=True)
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_HOSTS_FILE": str(EXAMPLE / "hosts.yml"),
        "CORRAL_ENGINE_NETWORKS": "127.0.0.0/8,10.231.0.0/24",
        "CORRAL_STACK_RESYNC_SECONDS": "3",
        "RVIZ_PORT": "16081",
    }
    foreign = subprocess.run(
        ["docker", "run", "-d", "--label", "corral.stack=crash", "--name", "crash-impostor",
         "local/busybox:1", "sleep", "600"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    serve = ServeProcess(tmp_path, env).start()
    try:
        up = subprocess.Popen(
            [*corral_command(), "up", "-f", str(EXAMPLE / "compose.yml"), "-n", "crash"],
            env={**serve.env, "CORRAL_URL": serve.url, "CORRAL_TOKEN": ADMIN},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The kill comes as soon as the apply has made its first container.
        deadline = time.monotonic() + 120
        while _count("corral.stack=crash") < 2:  # the impostor + the apply's first
            assert up.poll() is None, f"corral up ended before the kill: {up.communicate()}"
            assert time.monotonic() < deadline, "the apply made no container within 120 s"
            time.sleep(0.02)
        assert serve.proc is not None
        os.kill(serve.proc.pid, signal.SIGKILL)
        serve.stop()
        made = _count("corral.stack=crash") - 1
        running = _running("corral.stack=crash") - 1
        _, said = up.communicate(timeout=60)
        # What the user sees: `corral up` lost its server before the stack was up...
        assert up.returncode != 0, "corral up succeeded: the kill came after the apply"
        assert "cannot reach corral" in said, said
        # ... and on the two engines, the stack was begun and not finished.
        assert made >= 1, "the apply had made a container"
        assert running < 7, f"{running} of the 7 containers were running at the kill"

        serve.start()
        with httpx.Client(base_url=serve.url, headers={"Authorization": f"Bearer {ADMIN}"}) as api:
            deadline = time.monotonic() + 180
            while True:
                slots = api.get("/stacks/crash").json()["slots"]
                if len(slots) == 7 and all(s["state"] == "running" for s in slots):
                    break
                assert time.monotonic() < deadline, f"not converged: {slots}"
                time.sleep(0.5)
        assert len(engine_container_ids(LOCAL_URL, "corral.stack=crash")) == 5 + 1  # + impostor
        assert len(engine_container_ids(ROBOT_URL, "corral.stack=crash")) == 2
        names = subprocess.run(
            ["docker", "ps", "-a", "--filter", "label=corral.stack=crash",
             "--format", "{{.Names}}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert sorted(names) == sorted(
            ["crash-impostor"] + [f"crash-{s}-1" for s in
             ("ros-master", "digital-replica", "gesture-control-app", "go1-navigation", "rviz-vnc")]
        )  # fmt: skip
        impostor = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", foreign],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert impostor.stdout.strip() == "true", "a container corral does not own is untouched"
        down = serve.cli("down", "crash", token=ADMIN)
        assert down.returncode == 0, down.stderr
        assert _count("corral.stack=crash") == 1, "only the impostor is left"
    finally:
        serve.stop()
        subprocess.run(["docker", "rm", "-f", foreign], capture_output=True, check=False)
