"""Real corral servers for tests: in a thread of the test process, or as `corral serve`.

Both listen on a free loopback port and are stopped by the test that started them.
"""

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from tests.support.processes import ChildProcess, free_port, wait_answering

from corral.api import create_app
from corral.api.robot_ws import robot_websockets
from corral.config import Settings

ADMIN = "crl_test_admin_token_0123456789"


def wait_healthy(url: str, timeout: float = 30.0) -> None:
    wait_answering(f"{url}/healthz", timeout)


class ThreadServer:
    """corral's app under uvicorn in a background thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=1,
            ws=robot_websockets(app.state.core),  # as `corral serve`: /fleet/ws served lean
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        wait_healthy(self.url)
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        if self.thread.is_alive():  # it would go on reconciling behind the next test's back
            raise RuntimeError(f"corral at {self.url} did not stop within 60 s")

    def client(self, token: str | None = ADMIN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def corral_command() -> list[str]:
    return [sys.executable, "-m", "corral"]


class ServeProcess(ChildProcess):
    """`corral serve` as a real process; stopped by SIGTERM to its own PID."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None, port: int = 0) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.log = workdir / f"serve-{self.port}.log"

    def start(self) -> "ServeProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [*corral_command(), "serve", "--port", str(self.port)],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        try:
            wait_healthy(self.url)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"corral serve failed:\n{self.log.read_text()}") from None
        return self

    def first_admin_token(self) -> str | None:
        found = re.findall(r"CORRAL_TOKEN=(crl_\S+)", self.output())
        return found[-1] if found else None

    def cli(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "CORRAL_URL": self.url}
        if token is not None:
            env["CORRAL_TOKEN"] = token
        return subprocess.run(
            [*corral_command(), *args],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def run_cli(
    serve: ServeProcess, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`corral ARGS` against a running `corral serve`, as the admin."""
    return subprocess.run(
        [*corral_command(), *args],
        env={**serve.env, "CORRAL_URL": serve.url, "CORRAL_TOKEN": ADMIN},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_until(check: Callable[[], object], what: str, limit: float = 60.0) -> None:
    """Poll `check` every 0.1 s until it is true; AssertionError naming `what` after `limit`."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects `corral --json events` prints one after another."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        item, at = decoder.raw_decode(text, at)
        found.append(item)
    return found
