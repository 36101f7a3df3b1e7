"""A container that keeps crashing is started again after a back-off that grows: 0.1 s,
doubling to 10 s. What an operator sees: each `container.died` event says when the next
start comes, and the delays double. Against a real corral and the machine's dockerd."""

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.server import ADMIN, ThreadServer

from corral.config import Settings

STACK = """
services:
  crash:
    image: local/busybox:1
    command: ["sh", "-c", "echo up; exit 3"]
    restart: always
"""


@pytest.fixture
def server(local_engine: str, tmp_path: Path) -> Iterator[ThreadServer]:
    subprocess.run(["docker", "rm", "-f", "loop-crash-1"], capture_output=True, check=False)
    settings = Settings(
        home=tmp_path, bootstrap_token=ADMIN, local_docker_url=local_engine, mdns_enabled=False
    )
    with ThreadServer(settings) as running:
        yield running


def _died(api: httpx.Client) -> list[dict[str, Any]]:
    events = api.get("/events", params={"resource": "stack/loop/crash", "kind": "container.died"})
    return sorted(events.json(), key=lambda e: e["id"])


def test_a_crash_loop_backs_off_doubling(server: ThreadServer) -> None:
    with server.client() as api:
        made = api.post("/stacks", json={"name": "loop", "file": STACK})
        assert made.status_code in (200, 201, 202), made.text
        try:
            deadline = time.monotonic() + 120  # bounds a hang: 6 deaths need about 7 s
            while len(_died(api)) < 6:
                assert time.monotonic() < deadline, _died(api)
                time.sleep(0.5)
            died = _died(api)[:6]
            assert [e["data"]["exit_code"] for e in died] == ["3"] * 6
            assert [e["data"]["restart_in"] for e in died] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
            assert died[2]["message"].endswith("exited with code 3; next start in 0.4 s")
        finally:
            api.delete("/stacks/loop")
