"""Two `corral serve` replicas on one PostgreSQL database and the local engine: one leads,
the other forwards changes to it and streams the leader's events; SIGKILL of the leader in
the middle of an apply, and the follower takes over and converges without doubling a
container or a task.
"""

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tests.support.engines import LOCAL_URL, engine_container_ids, running_container_ids
from tests.support.server import ADMIN, ServeProcess, wait_until

# `gate` turns healthy only after 4 s and the six workers wait for it: an apply killed
# as soon as the gate exists is surely half done (workers created at most, none running).
STACK = """\
services:
  gate:
    image: local/busybox:1
    command: ["sh", "-c", "sleep 4; touch /tmp/ready; sleep 600"]
    healthcheck:
      test: ["CMD", "test", "-f", "/tmp/ready"]
      interval: 1s
      retries: 60
    stop_grace_period: 1s
  worker:
    image: local/busybox:1
    command: ["sleep", "600"]
    depends_on:
      gate: {condition: service_healthy}
    stop_grace_period: 1s
    deploy:
      replicas: 6
"""


def _replica_env(local_engine: str, pg_url: str) -> dict[str, str]:
    return {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_DATABASE_URL": pg_url,
        "CORRAL_LOCAL_DOCKER_URL": local_engine,
        "CORRAL_MDNS_ENABLED": "false",
        # A 2 s lease: these tests count terms, and at 0.5 s (a 1 s lease) a replica
        # stalled for a second by the loaded CI machine stepped down and led again.
        "CORRAL_REPLICA_POLL_SECONDS": "1.0",
        "CORRAL_STACK_RESYNC_SECONDS": "2",
    }


def _leader(api: httpx.Client) -> dict[str, Any] | None:
    leaders = [r for r in api.get("/replicas").json() if r["leader"]]
    return leaders[0] if leaders else None


@contextlib.contextmanager
def _next_event(api: httpx.Client, kind: str) -> Iterator[list[str]]:
    """The message of the next event of this kind on this replica's stream, read while
    the body of the `with` runs (the stream is open before it starts)."""
    seen: list[str] = []
    ready = threading.Event()

    def follow() -> None:
        with api.stream("GET", "/events/stream", params={"kind": kind}) as stream:
            for line in stream.iter_lines():
                if line == ": connected":
                    ready.set()
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:])["message"])
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert ready.wait(30), "the event stream opened"
    yield seen
    reader.join(30)


def test_two_replicas_share_events_and_fail_over_mid_apply(
    local_engine: str, tmp_path: Path, pg_url: str
) -> None:
    stack = f"rep{os.getpid()}"
    label = f"corral.stack={stack}"
    env = _replica_env(local_engine, pg_url)
    first = ServeProcess(tmp_path / "a", env).start()
    headers = {"Authorization": f"Bearer {ADMIN}"}
    a = httpx.Client(base_url=first.url, headers=headers, timeout=60)
    wait_until(lambda: _leader(a) is not None, "the first replica leads", 30)
    second = ServeProcess(tmp_path / "b", env).start()
    b = httpx.Client(base_url=second.url, headers=headers, timeout=60)
    try:
        leader = _leader(b)
        assert leader is not None
        assert leader["url"] == first.url
        assert len(b.get("/replicas").json()) == 2

        # An event raised on one replica reaches a stream opened on the other.
        with _next_event(b, "token.*") as seen:
            made = a.post("/tokens", json={"name": "from-a", "role": "viewer"})
            assert made.status_code == 201
        assert seen
        assert "from-a" in seen[0]

        # A token revoked on one replica is refused by the other at once, although the
        # other had just let it in (and keeps known tokens for a few seconds).
        viewer = {"Authorization": f"Bearer {made.json()['token']}"}
        assert b.get("/hosts", headers=viewer).status_code == 200
        with _next_event(b, "token.revoked") as seen:
            assert a.delete(f"/tokens/{made.json()['info']['id']}").status_code == 200
        assert seen
        assert b.get("/hosts", headers=viewer).status_code == 401

        # With no stream open on it, the other replica still reads the events its caches
        # watch: a second token revoked on one is refused by the other well before the
        # 10 s it would otherwise keep it (it reads no other event of the leader's then).
        other = a.post("/tokens", json={"name": "from-a-2", "role": "viewer"})
        assert other.status_code == 201
        second_viewer = {"Authorization": f"Bearer {other.json()['token']}"}
        assert b.get("/hosts", headers=second_viewer).status_code == 200
        assert a.delete(f"/tokens/{other.json()['info']['id']}").status_code == 200
        wait_until(
            lambda: b.get("/hosts", headers=second_viewer).status_code == 401,
            "the revoked token refused by the other replica",
            8,
        )

        # Changes sent to the follower are done by the leader.
        grid = {
            "name": "yard",
            "markers": [{"id": "a", "x": 0, "y": 0}, {"id": "b", "x": 1, "y": 0}],
            "lanes": [["a", "b"]],
        }
        assert b.post("/fleet/maps", json=grid).status_code == 201
        task = b.post("/tasks", json={"kind": "goto", "target": "fleet", "params": {"marker": "b"}})
        assert task.status_code == 201, task.text
        applied = b.post("/stacks", params={"wait": "false"}, json={"name": stack, "file": STACK})
        assert applied.status_code == 201, applied.text
        wait_until(lambda: len(engine_container_ids(LOCAL_URL, label)) >= 1, "the apply began")
        running = set(running_container_ids(LOCAL_URL, label))
        workers = set(engine_container_ids(LOCAL_URL, "corral.service=worker"))
        assert not running & workers, "the apply is half done: no worker runs yet"

        # SIGKILL the leader in the middle of the apply.
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)
        first.stop()
        killed = time.monotonic()
        wait_until(
            lambda: (_leader(b) or {}).get("url") == second.url, "the follower takes the lead", 60
        )
        print(f"takeover after {time.monotonic() - killed:.1f} s")
        wait_until(
            lambda: len(running_container_ids(LOCAL_URL, label)) == 7,
            "the gate and six workers running",
            120,
        )
        time.sleep(5)  # two more passes of the new leader: nothing may be added
        assert len(engine_container_ids(LOCAL_URL, label)) == 7
        assert len(running_container_ids(LOCAL_URL, label)) == 7
        view = b.get(f"/stacks/{stack}").json()
        assert view["state"] == "running"
        assert len({s["container_id"] for s in view["slots"]}) == 7
        kinds = [e["kind"] for e in b.get("/events", params={"kind": "replica.*"}).json()]
        assert kinds.count("replica.leading") == 2
        tasks = b.get("/tasks").json()
        assert [t["id"] for t in tasks] == [task.json()["id"]], "the task exists once"
        assert tasks[0]["state"] == "queued", "no robot: it waits, on the new leader too"
    finally:
        with contextlib.suppress(httpx.HTTPError):
            b.delete(f"/stacks/{stack}")
        a.close()
        b.close()
        second.stop()
        first.stop()
        leftovers = engine_container_ids(LOCAL_URL, label)
        if leftovers:
            subprocess.run(["docker", "-H", LOCAL_URL, "rm", "-f", *leftovers], check=False)
