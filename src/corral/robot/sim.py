"""The fleet simulator: N virtual robots that drive a map, each through its own `RobotClient`.

Used by `corral sim robots`, by tests and by benchmarks (`run_fleet`); every robot lives in
one asyncio loop (no thread per robot). Standard library and websockets only (PyYAML only to
read a YAML map file).
"""

import asyncio
import json
import math
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .client import RobotClient
from .errors import RobotHttpError, RobotRefused
from .http_client import request_json

Record = Callable[[str, dict[str, Any]], None]
Log = Callable[[str], None]

REGISTER_AT_ONCE = 16  # registration requests in flight together
DEFAULT_LANE_LENGTH = 1.0  # metres, for a lane between markers the map does not place


@dataclass
class FleetMap:
    """What the simulator needs of a map: marker positions (metres) and lanes."""

    name: str | None
    positions: dict[str, tuple[float, float]]
    lanes: list[tuple[str, str]] = field(default_factory=list)

    def length(self, start: str, end: str) -> float:
        """A lane's length: the straight line between its markers (as corral reckons it)."""
        a, b = self.positions.get(start), self.positions.get(end)
        if a is None or b is None:
            return DEFAULT_LANE_LENGTH
        return math.dist(a, b)


def load_map(path: str | Path) -> dict[str, Any]:
    """Read a map file: JSON, or YAML (needs PyYAML)."""
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        data = json.loads(text)
    else:
        import yaml  # only here: a robot running the client never needs it

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a map is a mapping with name, markers and lanes")
    return data


def parse_map(data: Mapping[str, Any]) -> FleetMap:
    """`{name, markers: [{id, x, y}], lanes: [[A, B] | {from, to, oneway?}]}` -> FleetMap.

    Only what the simulator needs; corral itself checks maps strictly when they are uploaded.
    """
    positions: dict[str, tuple[float, float]] = {}
    markers = data.get("markers") or []
    if isinstance(markers, Mapping):  # also accept {id: {x, y}}
        markers = [{"id": k, **v} for k, v in markers.items()]
    for marker in markers:
        if not isinstance(marker, Mapping) or "id" not in marker:
            raise ValueError(f"a marker needs an id (and x, y): {marker!r}")
        positions[str(marker["id"])] = (float(marker.get("x", 0)), float(marker.get("y", 0)))
    if not positions:
        raise ValueError("the map has no markers")
    fmap = FleetMap(str(data["name"]) if data.get("name") else None, positions)
    for lane in data.get("lanes") or []:
        if isinstance(lane, Mapping):
            start, end = lane.get("from"), lane.get("to")
        elif isinstance(lane, Sequence) and not isinstance(lane, str) and len(lane) == 2:
            start, end = lane
        else:
            raise ValueError(f"a lane is [FROM, TO] or {{from, to, oneway?}}: {lane!r}")
        fmap.lanes.append((str(start), str(end)))
    return fmap


def pick_starts(fmap: FleetMap, n: int, given: Sequence[str] | None = None) -> list[str]:
    """n distinct start markers: the given ones, else spread evenly over the map's."""
    if given:
        chosen = [str(m) for m in given][:n]
        unknown = [m for m in chosen if m not in fmap.positions]
        if unknown:
            raise ValueError(f"start markers not on the map: {', '.join(unknown)}")
        if len(chosen) < n or len(set(chosen)) < n:
            raise ValueError(f"{n} robots need {n} distinct start markers")
        return chosen
    markers = list(fmap.positions)
    if n > len(markers):
        raise ValueError(f"{n} robots but only {len(markers)} markers to start on")
    return [markers[i * len(markers) // n] for i in range(n)]


@dataclass
class RobotStats:
    """One virtual robot's story so far."""

    name: str
    start: str
    marker: str | None = None  # where it stands (None while on a lane)
    lane: tuple[str, str] | None = None
    state: str = "idle"  # idle, moving, stopped, estop, refused
    reached: list[str] = field(default_factory=list)  # markers reached, in order
    commands: int = 0
    telemetry: int = 0
    reconnects: int = 0
    drops: int = 0  # connections it cut on purpose (--disconnect-every)
    error: str | None = None


class SimRobot:
    """A virtual robot: obeys move/stop/estop/resume, drives lanes in real time, reports."""

    def __init__(
        self,
        client: RobotClient,
        start: str,
        fmap: FleetMap,
        *,
        speed: float = 1.0,
        rate: float = 10.0,
        jitter: float = 0.1,
        disconnect_every: float | None = None,
        record: Record | None = None,
        log: Log | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.name = client.name
        self.fmap = fmap
        self.speed, self.rate, self.jitter = speed, rate, jitter
        self.disconnect_every = disconnect_every
        self.stats = RobotStats(client.name, start, marker=start)
        self._record = record
        self._log = log
        self._rng = rng or random.Random()
        self._moves: deque[tuple[Any, Any]] = deque()
        self._wake = asyncio.Event()
        self._go = asyncio.Event()  # cleared while stopped
        self._go.set()
        self._tasks: list[asyncio.Task[None]] = []
        client.on_command(self._on_command)
        client.on_connect(self._on_connect)

    def start(self) -> None:
        """Start its connection and its motion (in the running loop)."""
        self._tasks = [
            asyncio.create_task(self._connection()),
            asyncio.create_task(self._drive()),
        ]
        if self.disconnect_every:
            self._tasks.append(asyncio.create_task(self._disconnector(self.disconnect_every)))

    async def stop(self) -> None:
        """Close its connection and stop it."""
        await self.client.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _say(self, text: str) -> None:
        if self._log is not None:
            self._log(f"{self.name} {text}")

    def _on_connect(self, welcome: dict[str, Any]) -> None:
        self.stats.reconnects = self.client.reconnects
        self._say("reconnected" if self.client.reconnects else "connected")

    async def _connection(self) -> None:
        try:
            await self.client.run()
        except RobotRefused as exc:
            self.stats.state, self.stats.error = "refused", str(exc)
            self._say(f"refused: {exc}")
            for task in self._tasks[1:]:
                task.cancel()

    async def _disconnector(self, every: float) -> None:
        while True:
            await asyncio.sleep(every * self._rng.uniform(0.5, 1.5))
            if self.client.drop_connection():
                self.stats.drops += 1

    async def _on_command(self, command: dict[str, Any]) -> None:
        self.stats.commands += 1
        kind = command.get("kind")
        if kind == "move":
            lane = command.get("lane")
            if isinstance(lane, list | tuple) and len(lane) == 2:
                self._moves.append((lane[0], lane[1]))
            elif command.get("marker") is not None:
                here = self._moves[-1][1] if self._moves else self.stats.marker
                self._moves.append((here, command["marker"]))
            self._wake.set()
        elif kind in ("stop", "estop"):
            self._go.clear()
            self.stats.state = "stopped" if kind == "stop" else "estop"
            self._say(kind)
        elif kind == "resume":
            self._go.set()
            self.stats.state = "moving" if self.stats.lane else "idle"
            self._say("resume")
        elif kind == "custom":
            self._say(f"custom {json.dumps(command.get('payload'), sort_keys=True)}")
        elif kind == "mission":
            self._say(f"mission {command.get('mission')} to {command.get('goal')}")
        else:
            self._say(f"unknown command {kind!r}")

    async def _report(self, **fields: Any) -> None:
        telemetry = {"marker": None, "lane": None, **fields}
        self.stats.telemetry += 1
        if self._record is not None:
            self._record(self.name, telemetry)
        await self.client.telemetry(**fields)

    async def _drive(self) -> None:
        await self._report(marker=self.stats.start)
        while True:
            while not self._moves:
                self._wake.clear()
                await self._wake.wait()
            await self._go.wait()
            start, end = self._moves.popleft()
            await self._travel(start, end)

    async def _travel(self, start: Any, end: Any) -> None:
        if self.stats.marker is not None and str(start) != self.stats.marker:
            self._say(f"told to leave {start} but stands on {self.stats.marker}")
        loop = asyncio.get_running_loop()
        length = self.fmap.length(str(start), str(end))
        speed = self.speed * (1 + self._rng.uniform(-self.jitter, self.jitter))
        period = 1.0 / self.rate
        lane = [start, end]
        self.stats.marker, self.stats.lane, self.stats.state = (
            None,
            (str(start), str(end)),
            "moving",
        )
        await self._report(lane=lane, progress=0.0, distance=round(length, 3))
        done, last = 0.0, loop.time()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            if not self._go.is_set():
                await self._go.wait()
                last = loop.time()
                continue
            done += speed * (now - last)  # by the clock: a busy loop slows reports, not robots
            last = now
            if done >= length:
                break
            await self._report(
                lane=lane, progress=round(done / length, 4), distance=round(length - done, 3)
            )
        self.stats.marker, self.stats.lane = str(end), None
        self.stats.reached.append(str(end))
        if self.stats.state == "moving":
            self.stats.state = "idle"
        await self.client.checkpoint(end)
        await self._report(marker=end)
        self._say(f"reached {end}")


class FleetSim:
    """The running virtual robots (`robots` by name); `await stop()` ends them."""

    def __init__(self, robots: Sequence[SimRobot]) -> None:
        self.robots: dict[str, SimRobot] = {robot.name: robot for robot in robots}

    @property
    def stats(self) -> dict[str, RobotStats]:
        """Per robot: markers reached, reconnects, state…"""
        for robot in self.robots.values():
            robot.stats.reconnects = robot.client.reconnects
        return {name: robot.stats for name, robot in self.robots.items()}

    def connected(self) -> int:
        """How many robots are connected now."""
        return sum(robot.client.connected.is_set() for robot in self.robots.values())

    async def wait_connected(self, seconds: float) -> bool:
        """Wait until every robot is connected (or refused); False after `seconds`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            if all(
                robot.client.connected.is_set() or robot.stats.state == "refused"
                for robot in self.robots.values()
            ):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Close every robot's connection and stop the simulation."""
        await asyncio.gather(*(robot.stop() for robot in self.robots.values()))


async def register(
    url: str,
    admin_token: str | None,
    name: str,
    map_name: str | None,
    marker: str,
    priority: int,
    signed: bool = False,
) -> tuple[str, str | None]:
    """Register robot `name` (or, if it exists, rotate its token): (token, key or None)."""
    base = url.rstrip("/")
    body: dict[str, Any] = {"name": name, "marker": marker, "priority": priority}
    if map_name is not None:
        body["map"] = map_name
    if signed:
        body["signed"] = True
    try:
        answer = await asyncio.to_thread(
            request_json, "POST", f"{base}/fleet/robots", admin_token, body
        )
    except RobotHttpError as exc:
        if exc.status != 409:
            raise
        rotate = f"{base}/fleet/robots/{quote(name, safe='')}/rotate"
        answer = await asyncio.to_thread(request_json, "POST", rotate, admin_token, None)
    if not isinstance(answer, dict) or not isinstance(answer.get("token"), str):
        raise RobotHttpError(200, f"no token in the answer for {name}: {str(answer)[:200]}")
    key = answer.get("key")
    return answer["token"], key if isinstance(key, str) else None


async def run_fleet(
    url: str,
    admin_token: str | None,
    fmap_dict: Mapping[str, Any],
    n: int,
    *,
    prefix: str = "sim",
    speed: float = 1.0,
    rate: float = 10.0,
    jitter: float = 0.1,
    disconnect_every: float | None = None,
    start_markers: Sequence[str] | None = None,
    record: Record | None = None,
    log: Log | None = None,
    signed: bool = False,
    heartbeat: float | None = None,
    connect_timeout: float = 30.0,
    seed: int | None = None,
    spread: Sequence[str] = (),
) -> FleetSim:
    """Register robots `{prefix}-1` … `{prefix}-{n}` on distinct start markers, start them,
    and return once all are connected (or after `connect_timeout` seconds).

    `record(robot, telemetry)` sees every telemetry a robot reports (`marker`, `lane`,
    `progress`, `distance`); `log(line)` gets the lines worth showing a person. With
    `spread` (more corral URLs), robot i connects to `(url, *spread)[i % k]`.
    """
    if n < 1:
        raise ValueError("n must be 1 or more")
    if speed <= 0 or rate <= 0 or not 0 <= jitter < 1:
        raise ValueError("speed and rate must be positive, jitter in [0, 1)")
    fmap = parse_map(fmap_dict)
    starts = pick_starts(fmap, n, start_markers)
    rng = random.Random(seed)
    gate = asyncio.Semaphore(REGISTER_AT_ONCE)
    homes = [url, *spread]

    async def one(i: int) -> SimRobot:
        name = f"{prefix}-{i}"
        async with gate:
            token, key = await register(url, admin_token, name, fmap.name, starts[i - 1], i, signed)
        robot = SimRobot(
            RobotClient(homes[i % len(homes)], name, token, key, heartbeat),
            starts[i - 1],
            fmap,
            speed=speed,
            rate=rate,
            jitter=jitter,
            disconnect_every=disconnect_every,
            record=record,
            log=log,
            rng=rng,
        )
        robot.start()
        return robot

    results = await asyncio.gather(*(one(i) for i in range(1, n + 1)), return_exceptions=True)
    robots = [r for r in results if isinstance(r, SimRobot)]
    sim = FleetSim(robots)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        await sim.stop()
        raise failed[0]
    await sim.wait_connected(connect_timeout)
    return sim
