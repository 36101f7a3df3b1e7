"""Real `corral agent` processes and a tiny bearer-checking file server, for tests.

Agents listen on free loopback ports and are stopped by PID; `wat_bytes` compiles the
example modules in examples/wasm/modules.
"""

import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import wasmtime
from tests.support.processes import ChildProcess, free_port, wait_answering

REPO_ROOT = Path(__file__).resolve().parents[2]
WASM_MODULES = REPO_ROOT / "examples" / "wasm" / "modules"


def wat_bytes(name: str) -> bytes:
    """The binary of examples/wasm/modules/<name>.wat."""
    return wasmtime.wat2wasm((WASM_MODULES / f"{name}.wat").read_text(encoding="utf-8"))


def unique_name(prefix: str = "agent") -> str:
    """A device name no other test (or test run) uses, so mDNS names never collide."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class AgentProcess(ChildProcess):
    """`python -m corral.agent` (the same as `corral agent`) on 127.0.0.1:<port>.

    `start()` waits until it answers; `stop()` sends SIGTERM to its PID and waits, and
    returns the exit status. Usable as a context manager. Its output is in `log`.
    """

    def __init__(
        self,
        home: Path,
        name: str | None = None,
        *,
        port: int = 0,
        token: str | None = None,
        orchestrator: str | None = None,
        mdns: bool = False,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name or unique_name()
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.orchestrator = orchestrator
        self.mdns = mdns
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.log = home.parent / f"{home.name}-{self.port}.log"
        self.proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the agent is not running")
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "corral.agent", "--name", self.name, "--port", str(self.port)]
        cmd += ["--bind", "127.0.0.1", "--home", str(self.home)]
        if self.token is not None:
            cmd += ["--token", self.token]
        if self.orchestrator is not None:
            cmd += ["--orchestrator", self.orchestrator]
        if not self.mdns:
            cmd.append("--no-mdns")
        return [*cmd, *self.args]

    def start(self, timeout: float = 30.0) -> "AgentProcess":
        self.home.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        try:
            wait_answering(f"{self.url}/health", timeout, self.proc)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}; its output:\n{self.output()}") from None
        return self

    def restart(self) -> "AgentProcess":
        self.stop()
        return self.start()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def __enter__(self) -> "AgentProcess":
        return self.start() if self.proc is None else self

    def __exit__(self, *_: Any) -> None:
        self.stop()


def result_of(url: str, timeout: float = 60.0) -> httpx.Response:
    """GET a resultUrl until the call has ended (not 202); the last response."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(url, timeout=30)
        if response.status_code != 202 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


class FileServer:
    """Serves bytes on 127.0.0.1 from a thread; with a token, only to `Bearer <token>`.

    `add(name, data)` returns the file's URL; `requests` records each GET's (path,
    Authorization) and `posts` each POST's (path, Authorization, body), answered 204, so
    it can also stand in for the orchestrator's `/device/logs`.
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.posts: list[tuple[str, str | None, bytes]] = []
        files, requests, posts, expected = self.files, self.requests, self.posts, token

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                requests.append((self.path, auth))
                if expected is not None and auth != f"Bearer {expected}":
                    self._answer(401, b"missing or wrong bearer token")
                elif self.path not in files:
                    self._answer(404, b"no such file")
                else:
                    self._answer(200, files[self.path], "application/wasm")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                posts.append(
                    (self.path, self.headers.get("Authorization"), self.rfile.read(length))
                )
                self._answer(204, b"")

            def _answer(self, code: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, name: str, data: bytes) -> str:
        self.files[f"/{name}"] = data
        return f"{self.url}/{name}"

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def endpoint(
    agent_url: str,
    deployment: str,
    module: str,
    function: str,
    params: tuple[str, ...] = ("x",),
    method: str = "GET",
    kind: str = "integer",
) -> dict[str, Any]:
    """An endpoint object of the supervisor protocol for `function` on the agent."""
    return {
        "url": f"{agent_url}/",
        "path": f"/{deployment}/modules/{module}/{function}",
        "method": method,
        "request": {
            "parameters": [
                {"name": p, "in": "query", "required": True, "schema": {"type": kind}}
                for p in params
            ]
        },
        "response": {"media_type": "application/json", "schema": {"type": "integer"}},
    }


def deploy_part(
    deployment: str,
    agent_url: str,
    module: str,
    binary_url: str,
    functions: dict[str, tuple[str, ...]],
    to: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A one-module deploy part: `functions` maps each exported function to its parameter
    names; `to` (an endpoint) chains every function's result to the next step."""
    return {
        "deploymentId": deployment,
        "modules": [
            {
                "id": f"id-{module}",
                "name": module,
                "urls": {"binary": binary_url, "description": f"{binary_url}.json", "other": {}},
            }
        ],
        "endpoints": {
            module: {f: endpoint(agent_url, deployment, module, f, p) for f, p in functions.items()}
        },
        "instructions": {"modules": {module: {f: {"from": None, "to": to} for f in functions}}},
        "mounts": {
            module: {f: {"execution": [], "deployment": [], "output": []} for f in functions}
        },
    }
