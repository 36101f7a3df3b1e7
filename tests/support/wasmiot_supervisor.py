"""A strict Wasm-IoT supervisor for tests, written from the protocol facts of
../shared/docs/wasmiot-protocol.md (not from corral's agent; it imports nothing of corral).

Run as a process (`SupervisorPeer`): it serves the supervisor API on 127.0.0.1, runs
modules with wasmtime, and behaves as the public supervisor was seen to:
- the deploy part is checked strictly: unknown keys are refused, `schema.type` is one of
  integer/string/object, `urls.other` is an object, all three mount stage lists present;
- the next step of a chain is called with `getattr(requests, method)`, so a method that
  is not lower case breaks the chain; the next step's result URL is stored as a bare
  string; a failed call is `success: false` with the HTTP client's own error text;
- a POST call is queued and has no history entry until it has run (404 until then);
- `/health` needs `X-Forwarded-For` equal to the host of the registered orchestrator
  (else 403), and says `Custom-Orchestrator-Set: true` only once one is registered;
- logs go to `http://<caller>:<log port>/device/logs` before registration, then to the
  orchestrator's; any answer but 200 `{"message": "Log received and saved"}` is counted;
- deployments, history and the orchestrator live in memory: a restart loses them;
- the mDNS advert shares one host name among peers, carries TXT `address`, and there is
  no goodbye: SIGTERM ends the process at once. The shared host name resolves to another
  device's address (127.0.0.3: loopback, but the peer listens on 127.0.0.1 only), as a
  name shared like `raspberrypi.local` may; its own address is in TXT `address`, so only
  an orchestrator that takes TXT `address` first reaches the peer.
"""

import argparse
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
import wasmtime

PART_KEYS = {"deploymentId", "modules", "endpoints", "instructions", "mounts"}
MODULE_KEYS = {"id", "name", "urls"}
URL_KEYS = {"binary", "description", "other"}
ENDPOINT_KEYS = {"url", "path", "method", "request", "response"}
REQUEST_KEYS = {"parameters", "request_body"}
PARAMETER_KEYS = {"name", "in", "required", "schema", "description"}
RESPONSE_KEYS = {"media_type", "schema"}
SCHEMA_TYPES = {"integer", "string", "object"}
STAGES = {"execution", "deployment", "output"}
LOG_ANSWER = {"message": "Log received and saved"}


class Refused(Exception):
    """A request the supervisor refuses: status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _only(data: Any, keys: set[str], where: str, required: set[str] | None = None) -> dict:
    if not isinstance(data, dict):
        raise Refused(400, f"{where}: expected an object")
    unknown = set(data) - keys
    if unknown:
        raise Refused(400, f"{where}: unknown key(s) {sorted(unknown)}")
    missing = (keys if required is None else required) - set(data)
    if missing:
        raise Refused(400, f"{where}: missing key(s) {sorted(missing)}")
    return data


def _check_endpoint(endpoint: Any, where: str) -> None:
    _only(endpoint, ENDPOINT_KEYS, where)
    request = _only(endpoint["request"], REQUEST_KEYS, f"{where}.request", {"parameters"})
    for index, parameter in enumerate(request["parameters"]):
        at = f"{where}.request.parameters[{index}]"
        _only(parameter, PARAMETER_KEYS, at, {"name", "schema"})
        if parameter["schema"].get("type") not in SCHEMA_TYPES:
            raise Refused(400, f"{at}.schema.type must be one of {sorted(SCHEMA_TYPES)}")
    response = _only(endpoint["response"], RESPONSE_KEYS, f"{where}.response")
    if response["schema"].get("type") not in SCHEMA_TYPES:
        raise Refused(400, f"{where}.response.schema.type must be one of {sorted(SCHEMA_TYPES)}")


def check_part(part: Any) -> dict:
    """The deploy body, checked as strictly as the public supervisor reads it."""
    _only(part, PART_KEYS, "deploy")
    for index, module in enumerate(part["modules"]):
        _only(module, MODULE_KEYS, f"modules[{index}]")
        urls = _only(module["urls"], URL_KEYS, f"modules[{index}].urls", {"binary"})
        if not isinstance(urls.get("other", {}), dict):
            raise Refused(400, f"modules[{index}].urls.other must be an object")
    for module, functions in part["endpoints"].items():
        for function, endpoint in functions.items():
            _check_endpoint(endpoint, f"endpoints.{module}.{function}")
    instructions = _only(part["instructions"], {"modules"}, "instructions")
    for module, functions in instructions["modules"].items():
        for function, instruction in functions.items():
            where = f"instructions.modules.{module}.{function}"
            _only(instruction, {"from", "to"}, where)
            for key in ("from", "to"):
                if instruction[key] is not None:
                    _check_endpoint(instruction[key], f"{where}.{key}")
    for module, functions in part["mounts"].items():
        for function, stages in functions.items():
            _only(stages, STAGES, f"mounts.{module}.{function}")
    return part


class Supervisor:
    """The device's state; all of it in memory."""

    def __init__(self, name: str, port: int, log_port: int) -> None:
        self.name = name
        self.port = port
        self.log_port = log_port
        self.orchestrator: str | None = None
        self.engine = wasmtime.Engine()
        self.deployments: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []
        self.counters: dict[str, int] = {}
        self.lock = threading.Lock()
        self.work: queue.Queue[Callable[[], None]] = queue.Queue()
        self.logs: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        threading.Thread(target=self._worker, daemon=True).start()
        threading.Thread(target=self._log_sender, daemon=True).start()

    # --- logs ------------------------------------------------------------------------

    def log(self, caller: str, level: str, message: str) -> None:
        """Send a log record: to port `log_port` of the caller before registration."""
        target = self.orchestrator or f"http://{caller}:{self.log_port}"
        record = {"deviceName": self.name, "logLevel": level, "message": message}
        self.logs.put((f"{target}/device/logs", record))

    def _log_sender(self) -> None:
        while True:
            url, record = self.logs.get()
            try:
                answer = requests.post(url, data={"logData": json.dumps(record)}, timeout=5)
                ok = answer.status_code == 200 and answer.json() == LOG_ANSWER
                said = f"{answer.status_code} {answer.text[:200]}"
            except (requests.RequestException, ValueError) as exc:
                ok, said = False, str(exc)
            if not ok:
                print(f"LOG HANDLER REBUILT: {url} answered {said}", flush=True)

    # --- deployments -----------------------------------------------------------------

    def deploy(self, part: dict[str, Any]) -> None:
        check_part(part)
        modules: dict[str, wasmtime.Module] = {}
        failures = []
        for module in part["modules"]:
            fetched = requests.get(module["urls"]["binary"], timeout=5)
            others = [requests.get(u, timeout=5) for u in module["urls"].get("other", {}).values()]
            failures += [r for r in [fetched, *others] if not r.ok]
            if fetched.ok:
                modules[module["name"]] = wasmtime.Module(self.engine, fetched.content)
        if failures:
            raise Refused(500, f"{len(failures)} fetch failures")
        with self.lock:
            self.deployments[part["deploymentId"]] = {"part": part, "modules": modules}

    # --- calls -----------------------------------------------------------------------

    def call(
        self, deployment_id: str, module: str, function: str, method: str, args: dict[str, str]
    ) -> str:
        deployment = self.deployments.get(deployment_id)
        if deployment is None:
            raise Refused(404, "deployment does not exist")
        if module not in deployment["modules"]:
            raise Refused(400, f"module {module} not found for this deployment")
        key = f"{deployment_id}:{module}:{function}"
        with self.lock:
            self.counters[key] = self.counters.get(key, 0) + 1
            entry = {
                "request_id": f"{key}:{self.counters[key]}",
                "deployment_id": deployment_id,
                "module_name": module,
                "function_name": function,
                "method": method,
                "request_args": args,
                "request_files": {},
                "work_queued_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "result": None,
                "success": False,
            }

        def work() -> None:
            try:
                entry["result"] = self._run(deployment, module, function, args)
                entry["success"] = True
            except Exception as exc:  # as the original: any failure is the entry's text
                entry["result"], entry["success"] = str(exc), False
            with self.lock:
                self.history.append(entry)

        if method.lower() == "get":
            work()
        else:
            self.work.put(work)
        return str(entry["request_id"])

    def _run(self, deployment: dict[str, Any], module: str, function: str, args: dict) -> Any:
        part = deployment["part"]
        endpoint = part["endpoints"][module][function]
        values = []
        for parameter in endpoint["request"]["parameters"]:
            raw = args[parameter["name"]]
            values.append(int(raw) if parameter["schema"]["type"] == "integer" else raw)
        store = wasmtime.Store(self.engine)
        instance = wasmtime.Instance(store, deployment["modules"][module], [])
        value = instance.exports(store)[function](store, *values)
        following = part["instructions"]["modules"][module][function]["to"]
        if following is None:
            return [str(value), None]
        url = following["url"].rstrip("/") + following["path"]
        first = following["request"]["parameters"]
        if first:
            url += f"?{first[0]['name']}={value}"
        answer = getattr(requests, following["method"])(url, timeout=10)
        return answer.json()["resultUrl"]  # the next step's result URL, a bare string

    def _worker(self) -> None:
        while True:
            self.work.get()()


def make_handler(supervisor: Supervisor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                return json.loads(raw) if raw else None
            except ValueError:
                raise Refused(400, "Non-existent or malformed deployment data") from None

        def _handle(self, method: str) -> None:
            split = urlsplit(self.path)
            parts = [p for p in split.path.split("/") if p]
            caller = self.client_address[0]
            try:
                self._route(method, parts, split.query, caller)
            except Refused as exc:
                supervisor.log(caller, "ERROR", str(exc))
                self._send(exc.status, {"status": "error", "message": str(exc)})

        def _route(self, method: str, parts: list[str], query: str, caller: str) -> None:
            if method == "GET" and parts == [".well-known", "wasmiot-device-description"]:
                supervisor.log(caller, "INFO", "Device description request served")
                self._send(
                    200,
                    {
                        "platform": {
                            "cpu": {"humanReadableName": "peer", "coreCount": 1},
                            "memory": {"bytes": 1 << 30},
                        },
                        "supervisorInterfaces": [],
                    },
                )
            elif method == "GET" and parts == ["health"]:
                self._health()
            elif method == "POST" and parts == ["register"]:
                body = _only(self._body(), {"url"}, "register")
                supervisor.orchestrator = str(body["url"]).rstrip("/")
                supervisor.log(caller, "INFO", f"orchestrator {supervisor.orchestrator}")
                self._send(200, {"status": "success"})
            elif method == "POST" and parts == ["deploy"]:
                supervisor.deploy(self._body())
                supervisor.log(caller, "INFO", "Deployment created")
                self._send(200, {"status": "success"})
            elif method == "DELETE" and len(parts) == 2 and parts[0] == "deploy":
                if supervisor.deployments.pop(parts[1], None) is None:
                    raise Refused(404, "deployment does not exist")
                self._send(200, {"status": "success"})
            elif len(parts) == 4 and parts[1] == "modules" and method in ("GET", "POST"):
                args = {k: v[-1] for k, v in parse_qs(query).items()}
                request_id = supervisor.call(parts[0], parts[2], parts[3], method, args)
                host = self.headers.get("Host", f"127.0.0.1:{supervisor.port}")
                self._send(200, {"resultUrl": f"http://{host}/request-history/{request_id}"})
            elif method == "GET" and parts == ["request-history"]:
                self._send(200, supervisor.history)
            elif method == "GET" and len(parts) == 2 and parts[0] == "request-history":
                found = [e for e in supervisor.history if e["request_id"] == parts[1]]
                if not found:
                    raise Refused(404, "no matching entry in history")
                self._send(200 if found[0]["success"] else 500, found[0])
            else:
                raise Refused(404, f"no route {method} {self.path}")

        def _health(self) -> None:
            registered = supervisor.orchestrator
            if registered is not None:
                expected = urlsplit(registered).hostname
                told = self.headers.get("X-Forwarded-For")
                if told != expected:
                    raise Refused(403, f"X-Forwarded-For {told!r} is not {expected!r}")
            header = "true" if registered else "false"
            self._send(
                200, {"cpuUsage": 0.1, "memoryUsage": 0.2}, {"Custom-Orchestrator-Set": header}
            )

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line, not a traceback: a caller that hung up (corral stopping) is normal."""
        print(f"request from {client_address[0]} ended: {sys.exc_info()[1]!r}", flush=True)


# Another device's address on the shared host name: loopback, but the peer listens on
# 127.0.0.1 only, so a call there is refused. It is the host name's only address record:
# with the peer's own beside it, zeroconf lists the one heard last first, and a test of
# which one an orchestrator takes would depend on that order.
OTHER_DEVICE_ADDRESS = "127.0.0.3"


def advertise(name: str, port: int, host_name: str) -> Any:
    """The mDNS advert; kept for the life of the process (no goodbye). The host name's
    address record is another device's; TXT `address` is the peer's own."""
    from zeroconf import IPVersion, ServiceInfo, Zeroconf

    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    zc.register_service(
        ServiceInfo(
            "_webthing._tcp.local.",
            f"{name}._webthing._tcp.local.",
            addresses=[socket.inet_aton(OTHER_DEVICE_ADDRESS)],
            port=port,
            properties={"path": "/", "tls": "0", "address": "127.0.0.1"},
            server=f"{host_name}.local.",
        )
    )
    return zc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-port", type=int, default=3000)
    parser.add_argument("--mdns-host", default="", help="advertise over mDNS on this host name")
    options = parser.parse_args()
    supervisor = Supervisor(options.name, options.port, options.log_port)
    server = Server(("127.0.0.1", options.port), make_handler(supervisor))
    # Stopped, it leaves at once: no mDNS goodbye, as the original.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    advert = advertise(options.name, options.port, options.mdns_host) if options.mdns_host else None
    print(f"supervisor {options.name} on 127.0.0.1:{options.port}", flush=True)
    server.serve_forever()
    del advert


class SupervisorPeer:
    """The peer as a child process on a loopback port (kept across restarts)."""

    def __init__(self, log_dir: Path, name: str, port: int, log_port: int, mdns_host: str) -> None:
        self.name, self.port, self.log_port, self.mdns_host = name, port, log_port, mdns_host
        self.url = f"http://127.0.0.1:{port}"
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> "SupervisorPeer":
        command = [sys.executable, __file__, "--name", self.name, "--port", str(self.port)]
        command += ["--log-port", str(self.log_port)]
        if self.mdns_host:
            command += ["--mdns-host", self.mdns_host]
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"peer {self.name} exited:\n{self.output()}")
            try:
                requests.get(f"{self.url}/health", timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError(f"peer {self.name} did not answer within {timeout} s")

    def stop(self) -> None:
        """SIGTERM to its PID: it exits without a goodbye."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
            self.proc = None

    def restart(self) -> "SupervisorPeer":
        self.stop()
        return self.start()

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


if __name__ == "__main__":
    main()
