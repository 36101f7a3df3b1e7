"""Re-applying a stack on the local engine: only what changed is touched.

A changed service is replaced, an unchanged one keeps its container, a removed one goes,
more replicas are added and fewer are removed.
"""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.engines import LOCAL_URL, engine_container_ids
from tests.support.server import ADMIN, ThreadServer

from corral.config import Settings

V1 = """
services:
  keep:
    image: local/busybox:1
    command: sleep 600
    stop_grace_period: 1s
  change:
    image: local/busybox:1
    command: sleep 600
    environment: {MODE: one}
    stop_grace_period: 1s
  drop:
    image: local/busybox:1
    command: sleep 600
    stop_grace_period: 1s
"""
V2 = """
services:
  keep:
    image: local/busybox:1
    command: sleep 600
    stop_grace_period: 1s
  change:
    image: local/busybox:1
    command: sleep 600
    environment: {MODE: two}
    stop_grace_period: 1s
    deploy: {replicas: 3}
"""


@pytest.fixture
def server(local_engine: str, tmp_path: Path) -> Iterator[ThreadServer]:
    leftovers = engine_container_ids(LOCAL_URL, "corral.stack=upd")
    if leftovers:
        subprocess.run(["docker", "rm", "-f", *leftovers], check=True, capture_output=True)
    settings = Settings(home=tmp_path, bootstrap_token=ADMIN, local_docker_url=local_engine)
    with ThreadServer(settings) as running:
        yield running


def _ids(stack: dict[str, list[dict[str, str]]]) -> dict[tuple[str, int], str]:
    return {(s["service"], int(s["replica"])): s["container_id"] for s in stack["slots"]}


def test_only_what_changed_is_touched(server: ThreadServer) -> None:
    with server.client() as api:
        first = _ids(api.post("/stacks", json={"name": "upd", "file": V1}).json())
        assert set(first) == {("keep", 1), ("change", 1), ("drop", 1)}
        second = _ids(api.post("/stacks", json={"name": "upd", "file": V2}).json())
        assert set(second) == {("keep", 1), ("change", 1), ("change", 2), ("change", 3)}
        assert second[("keep", 1)] == first[("keep", 1)], "unchanged service left alone"
        assert second[("change", 1)] != first[("change", 1)], "changed service replaced"
        env = subprocess.run(
            ["docker", "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}",
             "upd-change-1"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "MODE=two" in env
        names = sorted(
            subprocess.run(
                ["docker", "ps", "-a", "--filter", "label=corral.stack=upd",
                 "--format", "{{.Names}}"],
                capture_output=True, text=True, check=True,
            ).stdout.split()
        )  # fmt: skip
        assert names == ["upd-change-1", "upd-change-2", "upd-change-3", "upd-keep-1"]
        kinds = [e["kind"] for e in api.get("/events", params={"resource": "stack/upd*"}).json()]
        assert kinds.count("container.replaced") == 1
        assert kinds.count("container.removed") == 1

        third = _ids(api.post("/stacks", json={"name": "upd", "file": V1}).json())
        assert set(third) == {("keep", 1), ("change", 1), ("drop", 1)}
        assert len(engine_container_ids(LOCAL_URL, "corral.stack=upd")) == 3
        assert api.delete("/stacks/upd").json() == {"removed_containers": 3, "pending_hosts": {}}
