"""Robot fleet: command round trips over WebSocket and HTTP, and 1,000 robots at 10 Hz.

corral runs as `corral serve` (a process of its own, SQLite in a temp dir, log level
warning), so the load generator never shares its GIL. In one run:

1. **Command round trip, unloaded.** Three robots, each acknowledging every command at
   once: one over the WebSocket (`RobotClient`), one over HTTP with long polls
   (`HttpRobot.poll_forever`, wait 25 s), one over HTTP polling every 100 ms (a GET
   every 100 ms, then an ack per command). The operator sends
   `POST /fleet/robots/{name}/commands {kind: custom, payload: {seq}}`, one command at a
   time, the three robots in turn; the next one goes 20-40 ms (at random, so the polling
   robot sees commands at a random phase) after the previous one was delivered. Beside
   them, interleaved, a row without corral: the seed's own HTTP design, where the
   orchestrator POSTs each command to a small HTTP server on the robot (`PushRobot`: the
   standard library's server in a thread, a new TCP connection per command, the robot's
   token in a header) and the robot acknowledges it in its answer; nothing is stored, so
   it is a floor for that design, not a like-for-like service.
   - **delivery**: from just before the POST is sent to the robot's handler being called
     (both in this process, one clock);
   - **round trip**: from just before the POST to corral storing the ack: the command's
     `acked_at` (corral's clock, the same machine's wall clock as this process's
     `time.time()`), read afterwards, 50 commands at a time, from
     `GET /fleet/robots/{name}/commands/log`; for the push row, to the answer with the
     ack read.
2. **N robots at 10 Hz** (N = 250, 500, 1000 by default; a fresh corral for each N). A
   second process (the load generator, also on this machine's 2 cores, bench/loadgen.py:
   one uvloop event loop, a bare WebSocket per robot, frames built by hand, no task per
   robot) runs N robots, each on its own WebSocket, on an 80x50 grid (4,000 markers, 1 m
   apart; the 40x25 grid cannot take 1,000 robots that move: one per marker). Odd robots
   park in the top 20 rows; even robots live in the bottom 25 rows and get missions one
   after the other (a random goal at most 6 lanes away, in their band, a new one on
   arrival), at 0.5 m/s, so moves, checkpoints, reservations and mission events flow.
   Every robot reports at 10 Hz, at a phase of its own: its lane and progress while it
   drives, a checkpoint at a lane's end, its marker while it stands; it acks each command
   as it reads it. After a warm-up, for `--seconds`:
   - corral's CPU (utime+stime from /proc/PID/stat, % of one core) and RSS (VmRSS, peak
     VmHWM); the load generator's, this process's and the rest of the machine's CPU
     (/proc/stat), since they all share the 2 cores;
   - telemetry sent per second (target N x 10) and handled by corral: each message carries
     its robot's running number in `status`, so the numbers `GET /fleet/robots` shows at
     the start and the end of the window say how many corral handled; and the age of each
     robot's latest telemetry there (`at`, stamped when corral handled it), every 5 s;
   - moves and checkpoints per second, missions done, robots waiting for a reservation;
   - the command round trip of a WebSocket probe robot (in this process, not the load
     generator), as in 1, against the unloaded figure; `GET /healthz` every 0.25 s (how
     long corral's event loop takes to answer a request that does nothing); and the load
     generator's event-loop lag (how late a 50 ms sleep wakes up): did it keep up.

3. **Replicas** (`--replicas 1,2`): each size again with one and then two `corral serve`
   on a private PostgreSQL (a fresh cluster per run, fsync off), the robots spread over
   the replicas in turn (robot i on replica i mod k), the probe robot on the last replica
   (one that does not lead), the operator's commands and the reads sent to the first (the
   leader). corral's CPU is the sum over the replicas (each one's share printed too), RSS
   the sum; PostgreSQL's CPU is in "others". `--replicas 0` (the default) is one corral on
   SQLite, as before.

4. **The live stream** (`--stream`): during the window the bench also follows
   `GET /fleet/stream?every=0.5` on the last replica (a follower passes the leader's on)
   and reports its frames, robot updates per second, and how old each robot's telemetry
   was when its frame arrived (against the `at` the holding replica stamped).

Run (about 5-6 minutes with the defaults, 2 of them registering the 1,750 robots):
    .venv/bin/python bench/fleet.py
    .venv/bin/python bench/fleet.py --robots 250,500,1000 --seconds 30 --commands 200
    .venv/bin/python bench/fleet.py --no-missions       # telemetry only
    .venv/bin/python bench/fleet.py --robots 1000 --columns 320  # as dense as 250 on 80
    .venv/bin/python bench/fleet.py --robots 1000 --replicas 1,2 --no-unloaded
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import http.client
import http.server
import json
import multiprocessing as mp
import os
import platform
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import Generator, Poster, drive  # noqa: E402
from tests.support.postgres import PrivatePostgres  # noqa: E402
from tests.support.server import ADMIN, ServeProcess, wait_until  # noqa: E402

from corral import __version__  # noqa: E402
from corral.model.fleet_map import grid_map  # noqa: E402
from corral.robot import HttpRobot, RobotClient, RobotHttpError  # noqa: E402

HEADERS = {"Authorization": f"Bearer {ADMIN}"}
MAP = "bench"
COLUMNS, ROWS = 80, 50
PARK_ROWS = range(0, 20)  # odd robots stand here
MOVE_ROWS = range(25, 50)  # even robots drive here (rows 20-24 stay empty)
HOP = 6  # a mission's goal is at most this many lanes away
TICK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- measuring


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(pid: int | str) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found["VmRSS"], found["VmHWM"]


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which is counted in user already
    return total - idle, total


class Handled:
    """When each command (by its payload's `seq`) reached a robot's handler."""

    def __init__(self) -> None:
        self._times: dict[int, float] = {}
        self._cond = threading.Condition()

    def mark(self, command: dict[str, Any]) -> None:
        now = time.perf_counter()
        payload = command.get("payload")
        seq = payload.get("seq") if isinstance(payload, dict) else None
        if isinstance(seq, int):
            with self._cond:
                self._times.setdefault(seq, now)
                self._cond.notify_all()

    def wait(self, seq: int, limit: float = 60.0) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: seq in self._times, limit):
                raise RuntimeError(f"command seq={seq} never reached the robot")
            return self._times.pop(seq)


class WsRobot:
    """A `RobotClient` in a thread of its own with its own event loop."""

    def __init__(self, url: str, name: str, token: str) -> None:
        self.url, self.name, self.token = url, name, token
        self.handled = Handled()
        self.loop = asyncio.new_event_loop()
        self.client: RobotClient | None = None
        self._up = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self.client = RobotClient(self.url, self.name, self.token)

        async def handler(command: dict[str, Any]) -> None:
            self.handled.mark(command)

        self.client.on_command(handler)
        self.client.on_connect(lambda _: self._up.set())
        await self.client.run()

    def start(self) -> WsRobot:
        self.thread.start()
        if not self._up.wait(30):
            raise RuntimeError(f"robot {self.name} did not connect")
        return self

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.client.close(), self.loop).result(10)
        self.thread.join(10)


class HttpLongRobot:
    """`HttpRobot.poll_forever` (long polls of up to 25 s) in a thread."""

    def __init__(self, url: str, name: str, token: str) -> None:
        self.name = name
        self.handled = Handled()
        self.robot = HttpRobot(url, name, token)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(Exception):  # the server going away at the end
            self.robot.poll_forever(self.handled.mark, wait=25.0, stop=self.stopping)

    def start(self) -> HttpLongRobot:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # the thread ends after its current poll; it is a daemon


class HttpPollRobot:
    """Polling: `GET commands` every `interval` seconds, then ack each one."""

    def __init__(self, url: str, name: str, token: str, interval: float = 0.1) -> None:
        self.name = name
        self.interval = interval
        self.handled = Handled()
        self.robot = HttpRobot(url, name, token)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        after = 0
        tick = time.monotonic()
        while not self.stopping.is_set():
            try:
                for command in self.robot.commands(after, 0):
                    after = max(after, command["id"])
                    self.handled.mark(command)
                    self.robot.ack([command["id"]])
            except (OSError, RobotHttpError):
                pass
            tick = max(tick + self.interval, time.monotonic())
            self.stopping.wait(tick - time.monotonic())

    def start(self) -> HttpPollRobot:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)


class PushRobot:
    """The seed's own HTTP design, not corral: a small HTTP server on the robot (the seed's
    Flask on each Raspberry Pi; here the standard library's, in a thread) takes each
    command the orchestrator POSTs to it, on a new TCP connection per request as the seed
    says, with the robot's token in a header, and acknowledges it in its answer."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.token = f"push-{name}"
        self.handled = Handled()
        handled, token = self.handled, self.token

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                command = json.loads(body)
                handled.mark(command)
                answer = json.dumps({"ack": command["id"]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> PushRobot:
        self.thread.start()
        return self

    def push(self, command_id: int, seq: int) -> tuple[float, float]:
        """POST one command to the robot: (delivery ms, round trip ms to its ack read)."""
        body = json.dumps({"id": command_id, "kind": "custom", "payload": {"seq": seq}})
        sent = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(
                "POST",
                "/command",
                body,
                {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
            )
            answer = connection.getresponse()
            ack = json.loads(answer.read())
        finally:
            connection.close()
        acked = time.perf_counter()
        if answer.status != 200 or ack.get("ack") != command_id:
            raise RuntimeError(f"robot {self.name} did not acknowledge command {command_id}")
        return (self.handled.wait(seq) - sent) * 1000, (acked - sent) * 1000

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Pinger(threading.Thread):
    """`GET /healthz` (no token, no store) every 0.25 s: how long corral's event loop takes
    to answer a trivial request."""

    def __init__(self, url: str, out: list[float]) -> None:
        super().__init__(daemon=True)
        self.api = httpx.Client(base_url=url, timeout=120)
        self.out = out
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.25):
            asked = time.perf_counter()
            self.api.get("/healthz").raise_for_status()
            self.out.append((time.perf_counter() - asked) * 1000)

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.api.close()


class Watcher(threading.Thread):
    """`GET /fleet/stream?every=0.5` (the live stream) on a replica: each frame's data kept
    raw with the wall clock it arrived at, parsed after the window (see Sampler)."""

    def __init__(self, url: str, out: Loaded) -> None:
        super().__init__(daemon=True)
        self.api = httpx.Client(base_url=url, headers=HEADERS, timeout=120)
        self.out = out
        self.frames: list[tuple[float, bytes]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with self.api.stream("GET", "/fleet/stream", params={"every": 0.5}) as live:
            live.raise_for_status()
            for line in live.iter_lines():
                if line.startswith("data: ["):
                    self.frames.append((time.time(), line[6:].encode()))
                if self.stopping.is_set():
                    return

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
        self.api.close()
        for arrived, data in self.frames[1:]:  # the first frame is everyone, not news
            for doc in json.loads(data):
                at = doc.get("telemetry", {}).get("at") if isinstance(doc, dict) else None
                if isinstance(at, int | float):
                    self.out.stream_ages.append((arrived - at) * 1000)
        self.out.stream_frames = len(self.frames)


Robot = WsRobot | HttpLongRobot | HttpPollRobot


def send(api: httpx.Client, robot: Robot, seq: int) -> tuple[int, float, float]:
    """One custom command: (its id, wall clock just before the POST, delivery ms)."""
    sent_wall, sent = time.time(), time.perf_counter()
    deadline = sent + 30
    while True:  # 503: no replica leads for a moment (a leader stalled past its lease)
        answer = api.post(
            f"/fleet/robots/{robot.name}/commands",
            json={"kind": "custom", "payload": {"seq": seq}},
        )
        if answer.status_code != 503 or time.perf_counter() > deadline:
            break
        time.sleep(0.05)
    answer.raise_for_status()
    delivered = robot.handled.wait(seq)
    return answer.json()["id"], sent_wall, (delivered - sent) * 1000


def trips(
    api: httpx.Client, robot: str, sent: dict[int, float], limit: float = 60.0
) -> list[tuple[float, float]]:
    """(round trip, to stored) in ms of commands {id: wall clock sent}: until corral stored
    each ack (`acked_at`), and until corral took the command in (`created_at`), from the
    robot's command log, which holds its latest 100."""
    deadline = time.monotonic() + limit
    while True:
        log = api.get(f"/fleet/robots/{robot}/commands/log").json()
        acked = {e["id"]: e for e in log if e["id"] in sent and e["acked_at"]}
        if len(acked) == len(sent):
            at = dt.datetime.fromisoformat
            return [
                (
                    (at(acked[i]["acked_at"]).timestamp() - sent[i]) * 1000,
                    (at(acked[i]["created_at"]).timestamp() - sent[i]) * 1000,
                )
                for i in sent
            ]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(sent) - len(acked)} commands of {robot} never acknowledged")
        time.sleep(0.05)


@dataclass
class Samples:
    """Delivery and round-trip times (ms) of one robot's commands."""

    delivery: list[float] = field(default_factory=list)
    trip: list[float] = field(default_factory=list)
    # each round trip in three: (to taken in, then to the robot, then to its ack stored)
    legs: list[tuple[float, float, float]] = field(default_factory=list)
    sent: dict[int, tuple[float, float]] = field(default_factory=dict)  # acks not read yet

    def measure(self, api: httpx.Client, robot: Robot, seq: int, keep: bool = True) -> None:
        command_id, sent_wall, delivery = send(api, robot, seq)
        if keep:
            self.delivery.append(delivery)
            self.sent[command_id] = (sent_wall, delivery)
        if len(self.sent) >= 50:
            self.flush(api, robot)

    def flush(self, api: httpx.Client, robot: Robot) -> None:
        if self.sent:
            walls = {i: wall for i, (wall, _) in self.sent.items()}
            for (trip, taken), (_, delivery) in zip(
                trips(api, robot.name, walls), self.sent.values(), strict=True
            ):
                self.trip.append(trip)
                self.legs.append((taken, delivery - taken, trip - delivery))
            self.sent = {}

    def slowest(self, n: int = 5) -> str:
        """The n slowest round trips, each as total (taken in + to the robot + to its ack)."""
        worst = sorted(self.legs, key=sum, reverse=True)[:n]
        return ", ".join(f"{sum(w):.0f} ({w[0]:.0f}+{w[1]:.0f}+{w[2]:.0f})" for w in worst)


def start_corral(
    home: Path, database: str | None = None, extra: dict[str, str] | None = None
) -> ServeProcess:
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_MDNS_ENABLED": "false",
        "CORRAL_LOG_LEVEL": "warning",
        "CORRAL_MAX_BODY_BYTES": str(4 << 20),  # a 320-column grid is 1.4 MB of JSON
    }
    if database is not None:
        # P = 2 s: a replica of a loaded 2-core machine must not step down (docs/replicas.md)
        env |= {"CORRAL_DATABASE_URL": database, "CORRAL_REPLICA_POLL_SECONDS": "2.0"}
    return ServeProcess(home, env | (extra or {})).start()


def start_replicas(
    home: Path, count: int, database: str, extra: dict[str, str] | None = None
) -> list[ServeProcess]:
    """`count` corral replicas on one PostgreSQL; the first leads (it started alone)."""
    first = start_corral(home / "r0", database, extra)
    servers = [first]
    with httpx.Client(base_url=first.url, headers=HEADERS, timeout=30) as api:

        def leads() -> bool:
            return any(r["leader"] for r in api.get("/replicas").json())

        wait_until(leads, "the first replica leads", 60)
        for i in range(1, count):
            servers.append(start_corral(home / f"r{i}", database, extra))
        wait_until(lambda: len(api.get("/replicas").json()) == count, "all replicas up", 60)
    return servers


def register(api: httpx.Client, name: str, **extra: Any) -> str:
    answer = api.post("/fleet/robots", json={"name": name, **extra})
    answer.raise_for_status()
    token: str = answer.json()["token"]
    return token


def wait_online(api: httpx.Client, name: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while api.get(f"/fleet/robots/{name}").json()["state"] != "online":
        if time.monotonic() > deadline:
            raise RuntimeError(f"robot {name} never came online")
        time.sleep(0.05)


# ----------------------------------------------------------------------------- 1. unloaded


TRANSPORTS = {
    "ws": "WebSocket (RobotClient)",
    "long": "HTTP long poll (HttpRobot, wait 25 s)",
    "poll": "HTTP polling every 100 ms (HttpRobot)",
    "push": "HTTP push to the robot (seed's, no corral)",
}


def unloaded(commands: int) -> tuple[dict[str, Samples], float, list[float]]:
    """Part 1: the three transports and the seed's push, one command at a time, interleaved;
    and, over 5 s with
    no robot, corral's CPU and its answer time to `GET /healthz`."""
    results = {key: Samples() for key in TRANSPORTS}
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as home:
        serve = start_corral(Path(home))
        assert serve.proc is not None
        time.sleep(1)
        before, wall = cpu_seconds(serve.proc.pid), time.monotonic()
        healthz: list[float] = []
        pinger = Pinger(serve.url, healthz)
        pinger.start()
        time.sleep(5)
        pinger.stop()
        idle = (cpu_seconds(serve.proc.pid) - before) / (time.monotonic() - wall) * 100
        robots: dict[str, Robot] = {}
        pusher: PushRobot | None = None
        try:
            with httpx.Client(base_url=serve.url, headers=HEADERS, timeout=60) as api:
                makers: dict[str, Callable[[str, str, str], Robot]] = {
                    "ws": WsRobot,
                    "long": HttpLongRobot,
                    "poll": HttpPollRobot,
                }
                for key, make in makers.items():
                    name = f"probe-{key}"
                    robots[key] = make(serve.url, name, register(api, name)).start()
                    wait_online(api, name)
                pusher = PushRobot("probe-push").start()
                seq = 0
                for i in range(commands + 10):  # the first 10 rounds warm up, untimed
                    for key, robot in robots.items():
                        seq += 1
                        results[key].measure(api, robot, seq, keep=i >= 10)
                        # the ack is stored long before the next command goes
                        time.sleep(rng.uniform(0.02, 0.04))
                    seq += 1
                    delivery, trip = pusher.push(seq, seq)
                    if i >= 10:
                        results["push"].delivery.append(delivery)
                        results["push"].trip.append(trip)
                    time.sleep(rng.uniform(0.02, 0.04))
                for key, robot in robots.items():
                    results[key].flush(api, robot)
        finally:
            for robot in robots.values():
                robot.stop()
            if pusher is not None:
                pusher.stop()
            serve.stop()
    return results, idle, healthz


# ----------------------------------------------------------------------------- 2. the load


def layout(n: int, seed: int, columns: int = COLUMNS) -> list[str]:
    """Start markers for robots 1..n: odd ones spread over the parking rows, even ones over
    the driving rows, both in a shuffled order so any prefix is spread too."""
    rng = random.Random(seed)

    def spread(rows: range, count: int) -> list[str]:
        cells = [f"r{r}c{c}" for r in rows for c in range(columns)]
        picked = [cells[i * len(cells) // count] for i in range(count)]
        rng.shuffle(picked)
        return picked

    parked = spread(PARK_ROWS, (n + 1) // 2)
    movers = spread(MOVE_ROWS, n // 2)
    return [parked[(i - 1) // 2] if i % 2 else movers[i // 2 - 1] for i in range(1, n + 1)]


def load_worker(url: str, n: int, options: dict[str, Any], conn: Connection) -> None:
    """The load generator's process: N simulated robots (bench/loadgen.py) until told to
    stop, on uvloop."""
    import uvloop

    try:
        uvloop.run(_load(url, n, options, conn))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


async def _load(url: str, n: int, options: dict[str, Any], conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(options["seed"])
    gen = Generator([url, *options["spread"]], options["rate"], options["speed"], options["seed"])
    api = httpx.AsyncClient(
        base_url=url, headers=HEADERS, timeout=120, limits=httpx.Limits(max_connections=32)
    )
    started = time.perf_counter()
    tasks = [asyncio.create_task(gen.ticker())]
    columns = options["columns"]
    await gen.start(api, n, layout(n, options["seed"], columns), MAP, 240)
    connect = time.perf_counter() - started

    def near(here: str) -> str:
        row, col = (int(x) for x in here[1:].split("c"))
        while True:
            r, c = row + rng.randint(-HOP, HOP), col + rng.randint(-HOP, HOP)
            if r in MOVE_ROWS and 0 <= c < columns and 0 < abs(r - row) + abs(c - col) <= HOP:
                return f"r{r}c{c}"

    if options["missions"]:
        movers = [b for b in gen.bots if int(b.name.rsplit("-", 1)[1]) % 2 == 0]
        poster = Poster(url, HEADERS)
        tasks += [asyncio.create_task(drive(gen, b, poster, near, rng)) for b in movers]
    # The robots' objects out of the collector's view: a full pass over them held this
    # loop 166-242 ms just as the window opened, and every robot fell silent, then burst.
    gc.collect()
    gc.freeze()
    conn.send(("ready", {"connected": gen.connected(), "seconds": connect, "pid": os.getpid()}))
    counts = gen.counts
    while True:
        message = await loop.run_in_executor(None, conn.recv)
        if message != "snapshot":
            break
        conn.send(
            (
                "counts",
                {
                    "telemetry": counts.telemetry,
                    "commands": counts.commands,
                    "checkpoints": counts.checkpoints,
                    "missions": counts.missions,
                    "arrived": counts.arrived,
                    "refused": counts.refused,
                    "errors": counts.errors,
                    "reconnects": counts.disconnects,
                    "connected": gen.connected(),
                    "lags": counts.lags,
                },
            )
        )
        counts.lags = []
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await api.aclose()
    await gen.stop()
    conn.send(("stopped", {}))


def receive(conn: Connection, kind: str, limit: float) -> dict[str, Any]:
    if not conn.poll(limit):
        raise RuntimeError(f"the load generator sent no {kind!r} in {limit:g} s")
    got, body = conn.recv()
    if got != kind:
        raise RuntimeError(f"the load generator: {got}: {body}")
    result: dict[str, Any] = body
    return result


@dataclass
class Loaded:
    """What one fleet size measured (rates per second over the window)."""

    n: int
    replicas: int = 0  # 0: one corral on SQLite; k: k replicas on PostgreSQL
    per_replica: list[float] = field(default_factory=list)  # CPU % of each
    load: float = 0.0  # the machine's load average when the window opened
    connect: float = 0.0
    connected: int = 0
    seconds: float = 0.0
    corral_cpu: float = 0.0
    load_cpu: float = 0.0
    bench_cpu: float = 0.0
    machine: float = 0.0  # all CPUs, in % of one core
    rss: float = 0.0
    hwm: float = 0.0
    sent: float = 0.0
    handled: float = 0.0
    commands: float = 0.0
    checkpoints: float = 0.0
    missions: int = 0
    arrived: int = 0
    refused: int = 0
    errors: int = 0
    reconnects: int = 0
    waits: int = 0
    stepdowns: int = 0  # leaders that stepped down during the run (replicas only)
    ages: list[float] = field(default_factory=list)
    list_ms: list[float] = field(default_factory=list)
    healthz: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    stream_ages: list[float] = field(default_factory=list)  # --stream: age at arrival, ms
    stream_frames: int = 0
    probe: Samples = field(default_factory=Samples)


def numbers(robots: list[dict[str, Any]]) -> dict[str, int]:
    """The number of each simulated robot's latest telemetry corral has handled."""
    found = {}
    for robot in robots:
        status = robot["telemetry"].get("status")
        if robot["name"].startswith("sim-") and isinstance(status, str) and status.isdigit():
            found[robot["name"]] = int(status)
    return found


class Sampler(threading.Thread):
    """Every 5 s: the age of each simulated robot's latest telemetry as corral shows it;
    and, first and last, how many telemetry messages corral has handled. The lists are
    parsed once the window is over: parsing 1,000 robots' JSON here held this process's
    GIL for milliseconds, which the probe robot's thread, in the same process, waited out
    and the round trip counted."""

    def __init__(self, url: str, out: Loaded) -> None:
        super().__init__(daemon=True)
        self.api = httpx.Client(base_url=url, headers=HEADERS, timeout=120)
        self.out = out
        self.stopping = threading.Event()
        self.reads: list[tuple[float, float, bytes]] = []  # (monotonic, wall clock, body)
        self.read()

    def read(self) -> None:
        asked = time.perf_counter()
        answer = self.api.get("/fleet/robots")
        body = answer.content if answer.status_code == 200 else b"[]"  # 503: between leaders
        self.reads.append((time.monotonic(), time.time(), body))
        self.out.list_ms.append((time.perf_counter() - asked) * 1000)

    def run(self) -> None:
        while not self.stopping.wait(5.0):
            self.read()

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.read()
        self.api.close()
        counts = []
        for at, now, body in self.reads:
            robots = json.loads(body)
            for robot in robots:
                seen = robot["telemetry"].get("at")
                if robot["name"].startswith("sim-") and seen is not None:
                    self.out.ages.append((now - seen) * 1000)
            counts.append((at, numbers(robots)))
        (t0, first), (t1, last) = counts[0], counts[-1]
        self.out.handled = sum(last[r] - first[r] for r in first if r in last) / (t1 - t0)


def total_cpu(pids: list[int]) -> list[float]:
    return [cpu_seconds(pid) for pid in pids]


def loaded(n: int, args: argparse.Namespace, replicas: int = 0) -> Loaded:
    """Part 2 for one N: a fresh corral (or `replicas` of them on a fresh PostgreSQL, the
    robots spread over them in turn), N simulated robots in a second process, a probe (on
    the last replica: one that does not lead)."""
    out = Loaded(n, replicas)
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as home, contextlib.ExitStack() as stack:
        if replicas:
            pg = PrivatePostgres().start()
            stack.callback(pg.stop)
            servers = start_replicas(Path(home), replicas, pg.url)
        else:
            servers = [start_corral(Path(home))]
        for server in servers:
            stack.callback(server.stop)
        serve = servers[0]
        pids = [s.proc.pid for s in servers if s.proc is not None]
        probe: WsRobot | None = None
        worker = None
        parent, child = ctx.Pipe()
        try:
            with httpx.Client(base_url=serve.url, headers=HEADERS, timeout=120) as api:
                fmap = grid_map(MAP, args.columns, ROWS).as_dict()
                api.post("/fleet/maps", json=fmap).raise_for_status()
                probe = WsRobot(servers[-1].url, "probe", register(api, "probe")).start()
                options = {
                    "speed": args.speed,
                    "rate": args.rate,
                    "seed": args.seed,
                    "missions": not args.no_missions,
                    "columns": args.columns,
                    "spread": [s.url for s in servers[1:]],
                }
                worker = ctx.Process(target=load_worker, args=(serve.url, n, options, child))
                worker.start()
                ready = receive(parent, "ready", 900)
                load_pid = ready["pid"]
                out.connect, out.connected = ready["seconds"], ready["connected"]
                time.sleep(args.warmup)
                gc.collect()  # the probe's process: no full pass of its own in the window
                gc.freeze()
                out.load = os.getloadavg()[0]
                parent.send("snapshot")
                first = receive(parent, "counts", 60)
                sampler = Sampler(serve.url, out)
                pinger = Pinger(serve.url, out.healthz)
                wall, cpus, load_cpu = time.monotonic(), total_cpu(pids), cpu_seconds(load_pid)
                bench_cpu, busy = cpu_seconds("self"), machine_jiffies()
                sampler.start()
                pinger.start()
                watcher = Watcher(servers[-1].url, out) if args.stream else None
                if watcher is not None:
                    watcher.start()
                end = wall + args.seconds
                gap = args.seconds / args.commands
                seq = 0
                while seq < args.commands and time.monotonic() < end:
                    seq += 1
                    out.probe.measure(api, probe, seq)
                    pause = wall + seq * gap - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                time.sleep(max(0.0, end - time.monotonic()))
                parent.send("snapshot")
                last = receive(parent, "counts", 60)
                out.seconds = time.monotonic() - wall
                out.per_replica = [
                    (after - before) / out.seconds * 100
                    for before, after in zip(cpus, total_cpu(pids), strict=True)
                ]
                out.corral_cpu = sum(out.per_replica)
                out.load_cpu = (cpu_seconds(load_pid) - load_cpu) / out.seconds * 100
                out.bench_cpu = (cpu_seconds("self") - bench_cpu) / out.seconds * 100
                now = machine_jiffies()
                share = (now[0] - busy[0]) / max(1, now[1] - busy[1])
                out.machine = share * (os.cpu_count() or 1) * 100
                memory = [memory_mb(p) for p in pids]
                out.rss, out.hwm = sum(m[0] for m in memory), sum(m[1] for m in memory)
                sampler.stop()
                pinger.stop()
                if watcher is not None:
                    watcher.stop()
                out.probe.flush(api, probe)
                out.sent = (last["telemetry"] - first["telemetry"]) / out.seconds
                out.commands = (last["commands"] - first["commands"]) / out.seconds
                out.checkpoints = (last["checkpoints"] - first["checkpoints"]) / out.seconds
                out.missions = last["missions"] - first["missions"]
                out.arrived = last["arrived"] - first["arrived"]
                out.refused = last["refused"] - first["refused"]
                out.errors = last["errors"] - first["errors"]
                out.reconnects = last["reconnects"]
                out.lags = last["lags"]
                out.waits = len(api.get(f"/fleet/maps/{MAP}/traffic").json()["waits"])
                if replicas:
                    downs = api.get("/events", params={"kind": "replica.stepped_down"})
                    out.stepdowns = len(downs.json())
        except Exception:
            for server in servers:
                print(f"--- {server.url}:\n{server.output()[-3000:]}", file=sys.stderr)
            raise
        finally:
            if worker is not None:
                with contextlib.suppress(Exception):
                    parent.send("stop")
                    receive(parent, "stopped", 60)
                worker.join(30)
                if worker.is_alive():
                    worker.kill()
            if probe is not None:
                probe.stop()
    return out


# ----------------------------------------------------------------------------- printing


def versions() -> str:
    names = ("uvicorn", "websockets", "fastapi", "httpx", "sqlalchemy", "aiosqlite")
    found = ", ".join(f"{name} {metadata.version(name)}" for name in names)
    return f"corral {__version__}, {found}, SQLite {sqlite3.sqlite_version}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def triple(values: list[float]) -> list[float]:
    return [pct(values, q) for q in (0.5, 0.95, 0.99)]


def print_unloaded(results: dict[str, Samples]) -> None:
    head = f"{'transport':44} {'delivery p50':>12} {'p95':>6} {'p99':>6}  {'trip p50':>8}"
    print(f"{head} {'p95':>6} {'p99':>6} {'n':>4}")
    for key, label in TRANSPORTS.items():
        s = results[key]
        d, t = triple(s.delivery), triple(s.trip)
        print(
            f"{label:44} {d[0]:12.1f} {d[1]:6.1f} {d[2]:6.1f}  {t[0]:8.1f} {t[1]:6.1f} "
            f"{t[2]:6.1f} {len(s.trip):4}"
        )
    for key, over, label in (
        ("long", "ws", "ratio HTTP long poll / WebSocket"),
        ("poll", "ws", "ratio HTTP 100 ms polling / WebSocket"),
        ("push", "ws", "ratio HTTP push (no corral) / WebSocket"),
        ("ws", "push", "ratio WebSocket / HTTP push (no corral)"),
    ):
        d, t = triple(results[key].delivery), triple(results[key].trip)
        base_d, base_t = triple(results[over].delivery), triple(results[over].trip)
        cells = [ratio(a, b) for a, b in zip(d + t, base_d + base_t, strict=True)]
        print(
            f"{label:44} {cells[0]:>12} {cells[1]:>6} {cells[2]:>6}  {cells[3]:>8} "
            f"{cells[4]:>6} {cells[5]:>6}"
        )


def tag(r: Loaded) -> str:
    """A row's label: robots, and replicas on PostgreSQL (none: one corral on SQLite)."""
    return f"{r.n}/{r.replicas}r" if r.replicas else str(r.n)


def print_loaded(rows: list[Loaded], base: Samples, idle: float, idle_healthz: list[float]) -> None:
    print(f"2a. CPU (% of one core) and memory; corral idle (no robot): {idle:.1f}% CPU")
    print(
        f"{'robots':>8} {'connect s':>9} {'corral CPU':>10} {'RSS MB':>6} {'peak':>5} "
        f"{'loadgen CPU':>11} {'bench CPU':>9} {'others':>6} {'machine':>7} {'load avg':>8}"
    )
    for r in rows:
        others = r.machine - r.corral_cpu - r.load_cpu - r.bench_cpu
        print(
            f"{tag(r):>8} {r.connect:9.1f} {r.corral_cpu:10.0f} {r.rss:6.0f} {r.hwm:5.0f} "
            f"{r.load_cpu:11.0f} {r.bench_cpu:9.0f} {others:6.0f} {r.machine:7.0f} {r.load:8.2f}"
        )
    print()
    print("2b. telemetry (per second) and its age in corral's view (ms); missions")
    print(
        f"{'robots':>8} {'target':>6} {'sent':>6} {'handled':>7} {'handled/sent':>12} "
        f"{'age p50':>7} {'p99':>6} {'>1 s':>5} {'moves':>6} {'chkpts':>6} {'done':>5} "
        f"{'waiting':>7} {'loadgen lag p99':>15}"
    )
    for r in rows:
        target = r.n * 10
        stale = sum(a > 1000 for a in r.ages) / max(1, len(r.ages)) * 100
        kept = r.handled / max(1.0, r.sent)
        print(
            f"{tag(r):>8} {target:6} {r.sent:6.0f} {r.handled:7.0f} {kept:12.2f} "
            f"{pct(r.ages, 0.5):7.0f} {pct(r.ages, 0.99):6.0f} {stale:4.0f}% {r.commands:6.1f} "
            f"{r.checkpoints:6.1f} {r.arrived:5} {r.waits:7} {pct(r.lags, 0.99):15.0f}"
        )
    print()
    print("2c. command round trip of a WebSocket probe robot during the load (ms), and")
    print("    GET /healthz every 0.25 s (corral's event loop: a request that does nothing)")
    print(
        f"{'robots':>8} {'delivery p50':>12} {'p95':>6} {'p99':>6}  {'trip p50':>8} {'p95':>6} "
        f"{'p99':>6} {'n':>4}  {'p99 / unloaded: delivery':>24} {'trip':>6}  "
        f"{'healthz p50':>11} {'p99':>6}"
    )
    rows_with_base = [("none", base, idle_healthz), *((tag(r), r.probe, r.healthz) for r in rows)]
    for label, s, healthz in rows_with_base:
        d, t = triple(s.delivery), triple(s.trip)
        print(
            f"{label:>8} {d[0]:12.1f} {d[1]:6.1f} {d[2]:6.1f}  {t[0]:8.1f} {t[1]:6.1f} "
            f"{t[2]:6.1f} {len(s.trip):4}  {ratio(d[2], pct(base.delivery, 0.99)):>24} "
            f"{ratio(t[2], pct(base.trip, 0.99)):>6}  {pct(healthz, 0.5):11.1f} "
            f"{pct(healthz, 0.99):6.1f}"
        )
    for r in rows:
        legs = "taken in + to the robot + to its ack stored"
        print(f"{tag(r):>8} slowest trips, ms ({legs}): {r.probe.slowest()}")
    for r in rows:
        if r.stream_frames:
            print(
                f"{tag(r):>8} GET /fleet/stream on the last replica: {r.stream_frames} frames, "
                f"{len(r.stream_ages) / r.seconds:.0f} robot updates/s, age on arrival p50 "
                f"{pct(r.stream_ages, 0.5):.0f} ms, p99 {pct(r.stream_ages, 0.99):.0f} ms, "
                f"max {max(r.stream_ages, default=float('nan')):.0f} ms"
            )
    print()
    for r in rows:
        print(
            f"{tag(r)} robots: {r.connected}/{r.n} connected after {r.connect:.1f} s (registration "
            f"included); {r.reconnects} reconnects; {r.missions} missions started and "
            f"{r.arrived} done in the window, {r.refused} refused (409) and retried, "
            f"{r.errors} errors; {r.stepdowns} leader step-downs; GET /fleet/robots took "
            f"{pct(r.list_ms, 0.5):.0f} ms (median)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--robots", default="250,500,1000", help="fleet sizes, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window per size")
    parser.add_argument("--commands", type=int, default=200, help="timed commands per robot")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window")
    parser.add_argument("--speed", type=float, default=0.5, help="m/s (lanes are 1 m)")
    parser.add_argument("--rate", type=float, default=10.0, help="telemetry per second")
    parser.add_argument("--no-missions", action="store_true", help="telemetry only")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--columns",
        type=int,
        default=COLUMNS,
        help="grid width (markers); 320 holds 1,000 robots as densely as 80 holds 250",
    )
    parser.add_argument(
        "--replicas",
        default="0",
        help="corral processes per size, comma-separated: 0 is one on SQLite, k is k replicas "
        "on a private PostgreSQL (robots spread over them in turn), e.g. 1,2",
    )
    parser.add_argument("--no-unloaded", action="store_true", help="skip part 1")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="follow GET /fleet/stream (every 0.5 s) on the last replica during the window "
        "and report how old the positions in its frames were on arrival",
    )
    args = parser.parse_args()
    sizes = [int(x) for x in args.robots.split(",") if x.strip()]
    started = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    print(f"robot fleet: command round trips and fleets at 10 Hz, {now:%Y-%m-%d %H:%M} UTC")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start"
    )
    print(versions())
    print()
    print(f"1. command round trip, unloaded corral, {args.commands} commands per robot (ms)")
    if args.no_unloaded:
        base, idle, idle_healthz = {k: Samples() for k in TRANSPORTS}, float("nan"), []
    else:
        base, idle, idle_healthz = unloaded(args.commands)
        print_unloaded(base)
    print(flush=True)
    rows = []
    for n in sizes:
        for replicas in [int(x) for x in args.replicas.split(",") if x.strip()]:
            rows.append(loaded(n, args, replicas))
            r = rows[-1]
            print(
                f"  [{tag(r)} robots done: corral {r.corral_cpu:.0f}% CPU "
                f"({' + '.join(f'{c:.0f}' for c in r.per_replica)}), load generator "
                f"{r.load_cpu:.0f}%, {r.handled:.0f} telemetry/s handled, probe trip p99 "
                f"{pct(r.probe.trip, 0.99):.1f} ms, age p99 {pct(r.ages, 0.99):.0f} ms, load "
                f"average {r.load:.2f}]",
                flush=True,
            )
    print()
    missions = "no missions" if args.no_missions else f"half on missions at {args.speed:g} m/s"
    print(
        f"2. N robots at {args.rate:g} Hz on a {args.columns}x{ROWS} grid, {missions}; "
        f"{args.seconds:g} s measured after {args.warmup:g} s of warm-up"
    )
    print_loaded(rows, base["ws"], idle, idle_healthz)
    print(f"\nwhole run: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
