"""`corral logs -f` across a restart of the container, against a real corral and the
machine's dockerd: the container is killed while its output is followed; corral starts it
again, and the follower shows what the new run prints, as `docker logs -f` would not."""

import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.engines import LOCAL_URL
from tests.support.server import ADMIN, ThreadServer, corral_command

from corral.config import Settings

STACK = """
services:
  ticker:
    image: local/busybox:1
    command:
      - sh
      - -c
      - echo run-$$RANDOM$$RANDOM; i=0; while true; do echo tick $$i; i=$$((i+1)); sleep 0.2; done
    restart: always
    stop_grace_period: 1s
"""


@pytest.fixture
def server(local_engine: str, tmp_path: Path) -> Iterator[ThreadServer]:
    subprocess.run(["docker", "rm", "-f", "follow-ticker-1"], capture_output=True, check=False)
    settings = Settings(
        home=tmp_path, bootstrap_token=ADMIN, local_docker_url=local_engine, mdns_enabled=False
    )
    with ThreadServer(settings) as running:
        yield running


def _lines(stream: "subprocess.Popen[str]") -> "queue.Queue[str]":
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert stream.stdout is not None
        for line in stream.stdout:
            lines.put(line.strip())
        lines.put("<end>")

    threading.Thread(target=read, daemon=True).start()
    return lines


def _until(lines: "queue.Queue[str]", check: Callable[[str], bool], what: str) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"{what}: not within 60 s; saw {seen[-10:]}"
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            continue
        seen.append(line)
        assert line != "<end>", f"{what}: `corral logs -f` ended; saw {seen[-10:]}"
        if check(line):
            return seen


def test_logs_follow_goes_on_after_the_container_restarts(server: ThreadServer) -> None:
    with server.client() as api:
        made = api.post("/stacks", json={"name": "follow", "file": STACK}, params={"wait": True})
        assert made.status_code in (200, 201), made.text
        env = {"CORRAL_URL": server.url, "CORRAL_TOKEN": ADMIN}
        follower = subprocess.Popen(
            [*corral_command(), "logs", "-f", "follow", "ticker", "--tail", "5"],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            lines = _lines(follower)
            first = _until(lines, lambda line: line.startswith("tick 3"), "the first run's ticks")
            runs = {line for line in first if line.startswith("run-")}
            killed = subprocess.run(
                ["docker", "-H", LOCAL_URL, "kill", "follow-ticker-1"], capture_output=True
            )
            assert killed.returncode == 0, killed.stderr
            later = _until(
                lines,
                lambda line: line.startswith("run-") and line not in runs,
                "the restarted run's first line",
            )
            assert later[-1] not in runs
            _until(lines, lambda line: line.startswith("tick 2"), "the restarted run's ticks")
        finally:
            follower.terminate()
            follower.wait(30)
            if follower.stdout is not None:
                follower.stdout.close()
            api.delete("/stacks/follow")
