"""The Go1 path of examples/go1/README.md as a user follows it, on the two engines of the
test bed joined in a swarm: the base image (`FROM local/busybox:1`) on the local engine
only, as the README has it; the local engine named again under another host is refused,
the example's hosts file labels `local` and adds `robot`, `up` copies the base image to
the robot and builds there, the stack converges once (its containers are not killed and
made again), then the seed's `/terminate/` on the Go1 port leaves nothing behind, overlay
included.
"""

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from tests.support.engines import (
    LOCAL_URL,
    RobotEngine,
    build_busybox_image,
    engine_container_ids,
)
from tests.support.processes import free_port
from tests.support.server import ADMIN, ServeProcess, json_objects, run_cli, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "go1"
STACK = "go1readme"
BASE = "local/busybox:1"  # what the example's Dockerfiles build on
ROBOT_IMAGES = ("go1/lidar-drivers:1", "go1/go1-base:1")  # the two services placed there


def _docker(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "-H", url, *args], capture_output=True, text=True, timeout=120, check=False
    )


def _has_image(url: str, image: str) -> bool:
    return _docker(url, "image", "inspect", "--format", "{{.Id}}", image).returncode == 0


def _events(serve: ServeProcess, kind: str) -> list[dict[str, Any]]:
    listed = run_cli(serve, "--json", "events", "--kind", kind, "-n", "500")
    assert listed.returncode == 0, listed.stderr
    return json_objects(listed.stdout)


def _swarm_ready() -> bool:
    """Both engines are ready nodes of the swarm (a robot engine restarted by an earlier
    test takes a moment to come back to it)."""
    nodes = subprocess.run(
        ["docker", "-H", LOCAL_URL, "node", "ls", "--format", "{{.Status}} {{.Availability}}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return nodes.stdout.split("\n")[:2] == ["Ready Active"] * 2


def test_go1_from_the_readme(swarm: RobotEngine, tmp_path: Path) -> None:
    wait_until(_swarm_ready, "both engines ready in the swarm", limit=120)
    for url in (LOCAL_URL, swarm.url):  # what an interrupted run may have left
        left = engine_container_ids(url, f"corral.stack={STACK}")
        if left:
            subprocess.run(
                ["docker", "-H", url, "rm", "-f", *left], capture_output=True, timeout=60
            )
    go1_port = free_port()
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": LOCAL_URL,
        "CORRAL_STACK_RESYNC_SECONDS": "1",
        "RVIZ_PORT": str(free_port()),  # the file's ${RVIZ_PORT:-6080}, from the CLI's shell
        # The seed's Flask API, for its users' /terminate/ (run.sh serves it the same way).
        "CORRAL_GO1_FILE": str(EXAMPLE / "compose.yml"),
        "CORRAL_GO1_STACK": STACK,
        "CORRAL_GO1_PORT": str(go1_port),
        "CORRAL_GO1_ANONYMOUS": "true",
    }
    serve = ServeProcess(tmp_path, env).start()
    try:
        # README step 1: the base image on one engine (this one); the robot has neither it
        # nor the example's images (the session's fixture loaded the base there for other
        # tests: it is put back at the end).
        build_busybox_image(LOCAL_URL)
        for image in (*ROBOT_IMAGES, BASE):
            _docker(swarm.url, "rmi", "-f", image)
            assert not _has_image(swarm.url, image), image

        # The old README's hosts file: this engine again as `edge`. Refused, nothing applied.
        twice = tmp_path / "twice.yml"
        twice.write_text(f"hosts:\n  edge: {{url: '{LOCAL_URL}', labels: {{role: edge}}}}\n")
        refused = run_cli(serve, "host", "apply", str(twice))
        assert refused.returncode == 2, refused.stdout
        assert "same Docker engine as host local" in refused.stderr
        assert "corral host label local" in refused.stderr

        # Labels of a registered host change in place (the README's other way).
        labelled = run_cli(serve, "--json", "host", "label", "local", "role=edge", "zone=lab")
        assert labelled.returncode == 0, labelled.stderr
        assert json.loads(labelled.stdout)["labels"] == {"role": "edge", "zone": "lab"}
        dropped = run_cli(serve, "host", "label", "local", "zone-", "--json")  # --json after
        assert json.loads(dropped.stdout)["labels"] == {"role": "edge"}
        bad = run_cli(serve, "host", "label", "local", "role")
        assert bad.returncode == 2
        assert "key=value" in bad.stderr

        applied = run_cli(serve, "host", "apply", str(EXAMPLE / "hosts.yml"))
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.split("\n")[:2] == ["local: unchanged", "robot: created"]
        hosts = json.loads(run_cli(serve, "--json", "host", "ls").stdout)
        assert {h["name"]: h["labels"] for h in hosts} == {
            "local": {"role": "edge"}, "robot": {"role": "robot"},
        }  # fmt: skip

        up = run_cli(serve, "up", "-f", str(EXAMPLE / "compose.yml"), "-n", STACK)
        assert up.returncode == 0, up.stdout + up.stderr

        states: dict[str, str] = {}

        def running() -> bool:
            listed = run_cli(serve, "--json", "ps", STACK)
            assert listed.returncode == 0, listed.stderr
            view = json.loads(listed.stdout)
            states.update({s["service"]: f"{s['state']} {s['reason']}" for s in view["slots"]})
            return [s["state"] for s in view["slots"]] == ["running"] * 7

        wait_until(running, f"the seven Go1 services running (now {states})", limit=120)
        # The base image went to the robot once, copied from the engine that had it.
        copying = [e["message"] for e in _events(serve, "image.copying")]
        assert copying == [f"copying {BASE} from local to robot"], copying
        copied = [e["message"] for e in _events(serve, "image.copied")]
        assert len(copied) == 1, copied
        assert copied[0].startswith(f"copied {BASE} from local to robot in "), copied
        assert all(_has_image(swarm.url, image) for image in (BASE, *ROBOT_IMAGES))
        label = f"corral.stack={STACK}"
        first = (engine_container_ids(LOCAL_URL, label), engine_container_ids(swarm.url, label))
        assert (len(first[0]), len(first[1])) == (5, 2)
        # Several full resync passes (one a second) later the same containers still run:
        # converged once, no endless kill and create.
        time.sleep(6)
        now = (engine_container_ids(LOCAL_URL, label), engine_container_ids(swarm.url, label))
        assert (sorted(now[0]), sorted(now[1])) == (sorted(first[0]), sorted(first[1]))

        # The seed's users end with /terminate/ on the Go1 port (curl, as in its README):
        # every container goes, and the overlay with them, not left lingering.
        terminated = httpx.post(
            f"http://127.0.0.1:{go1_port}/terminate/",
            headers={"Content-Type": "application/json"},
            timeout=180,
        )
        assert terminated.status_code == 200, terminated.text
        assert terminated.json() == {"success": True, "removed": 7}
        assert engine_container_ids(LOCAL_URL, label) == []
        assert engine_container_ids(swarm.url, label) == []
        assert _events(serve, "network.lingering") == []
        overlay = f"{STACK}_digital-twin-service"
        for url in (LOCAL_URL, swarm.url):
            by_label = _docker(url, "network", "ls", "-q", "--filter", f"label={label}")
            assert by_label.returncode == 0, by_label.stderr
            assert by_label.stdout.split() == [], url
            assert _docker(url, "network", "inspect", overlay).returncode != 0, (url, overlay)
    finally:
        run_cli(serve, "down", STACK)
        serve.stop()
        build_busybox_image(swarm.url)  # other tests of the session build on it there
