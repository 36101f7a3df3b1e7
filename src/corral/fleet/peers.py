"""The fleet across replicas: each replica holds the robot sockets and polls it receives and
takes their telemetry itself; what needs one mind crosses to the leader over PostgreSQL
LISTEN/NOTIFY (store/wire.py), and what the leader decides comes back to the holder.

- up (`corral_fleet_up`): a holder's checkpoints and acks, one at a time per robot, each
  asked again until the leader answers (a leader change in between is met by the next);
- down (`corral_fleet_down`): the leader's answers, its stored commands for robots it does
  not hold (the holder sends them), cut sockets, and "send every open command" after a
  leader change or a lost listener;
- positions (`corral_fleet_positions`): every 100 ms each follower's latest telemetry and
  who it heard, so the leader (heartbeats, arrivals, reads) sees every robot; a report the
  same as the last one sent (a robot standing still) goes as its time alone. Every replica
  (the leader too) lists the robots it holds every second. With them go the positions of
  the VDA 5050 vehicles whose visualization messages this follower's share of the MQTT
  shared subscription brought (`vehicle_position`): for people only, nothing decides on them.

FleetService owns one on PostgreSQL (none on SQLite: one process holds everything).
"""

import asyncio
import contextlib
import itertools
import json
import time
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from corral.errors import CorralError, Unreachable
from corral.store.database import Database
from corral.store.wire import MAX_PAYLOAD, Wire

if TYPE_CHECKING:
    from corral.fleet.service import FleetService

log = structlog.get_logger("corral.fleet.peers")
UP, DOWN, POSITIONS = "corral_fleet_up", "corral_fleet_down", "corral_fleet_positions"
BATCH_SECONDS = 0.1  # positions are published this often
HELD_EVERY = 10  # batches: the list of robots held here, and every report in full
ASK_TIMEOUT = 3.0  # seconds an ask waits for the leader before sending it again
ASK_PATIENCE = 30.0  # seconds an ask keeps trying before it fails (no replica leads)
MAX_ACKS = 400  # command ids per ask (a payload stays under PostgreSQL's limit)


class Remote(CorralError):
    """The leader refused what a holder passed on: its status, code and message."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message", "")), error.get("detail"))
        self.status = int(error.get("status", 500))
        self.code = str(error.get("code", "internal"))


def _chunks(head: dict[str, Any], key: str, items: list[Any]) -> list[str]:
    """`head` with `key` holding `items`, as JSON texts each under MAX_PAYLOAD bytes (each
    item encoded once, by orjson: the positions of 500 robots ten times a second, the texts
    joined from those encodings)."""
    opened = json.dumps(head, separators=(",", ":"))[:-1]
    prefix = f"{opened}{',' if head else ''}{json.dumps(key)}:["
    out: list[str] = []
    part: list[str] = []
    size = len(prefix) + 2
    for item in items:
        raw = orjson.dumps(item)  # compact UTF-8; its length in bytes is what counts
        if part and size + len(raw) + 1 > MAX_PAYLOAD:
            out.append(prefix + ",".join(part) + "]}")
            part, size = [], len(prefix) + 2
        part.append(raw.decode())
        size += len(raw) + 1
    if part:
        out.append(prefix + ",".join(part) + "]}")
    return out


class Peers:
    def __init__(self, fleet: "FleetService", db: Database, replica: str, leading: Any) -> None:
        self.fleet = fleet
        self.replica = replica
        self.leading = leading  # () -> bool: this replica leads now
        self.wire = Wire(db, [UP, DOWN, POSITIONS], self._heard)
        self.numbers = itertools.count(1)
        self.asked: dict[int, asyncio.Future[dict[str, Any] | None]] = {}
        self.reports: dict[str, list[Any]] = {}  # robot -> [telemetry | None, heard_at, busy]
        self.gone: set[str] = set()  # robots whose socket or poll ended here since the last batch
        self.sent: dict[str, dict[str, Any]] = {}  # robot -> the last report published
        self.vehicles: dict[str, Any] = {}  # VDA 5050 vehicle -> its latest position, heard here
        self.decide: asyncio.Queue[tuple[str, dict[str, Any] | None, bool]] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        # how this replica's own messages begin (compact, or json.dumps' default spacing)
        self.own = tuple(
            json.dumps({"f": replica}, separators=sep)[:-1] + sep[0]
            for sep in ((",", ":"), (", ", ": "))
        )

    # ------------------------------------------------------------------ a holder
    def report(self, robot: str, telemetry: dict[str, Any] | None, busy: bool = False) -> None:
        """The robot was heard here (with its telemetry, if that is what it said)."""
        entry = self.reports.get(robot)
        if entry is None:
            self.reports[robot] = [telemetry, time.time(), busy]
            return
        if telemetry is not None:
            entry[0] = telemetry
        entry[1] = time.time()
        entry[2] = busy

    def vehicle_position(self, robot: str, position: Any) -> None:
        """A VDA 5050 vehicle's position from its visualization, taken here (a follower's
        share of them), for the leader's view of the fleet."""
        self.vehicles[robot] = position

    def left(self, robot: str) -> None:
        self.gone.add(robot)

    async def ask(self, robot: str, kind: str, body: dict[str, Any]) -> None:
        """Pass a checkpoint or an ack to the leader; returns once the leader stored it,
        raises its refusal. Asked again (same content: the leader's handling is idempotent)
        until a leader answers."""
        deadline = time.monotonic() + ASK_PATIENCE
        loop = asyncio.get_running_loop()
        number = next(self.numbers)
        message = {"f": self.replica, "n": number, "r": robot, "k": kind, "b": body}
        text = json.dumps(message, separators=(",", ":"))
        try:
            while True:
                future: asyncio.Future[dict[str, Any] | None] = loop.create_future()
                self.asked[number] = future
                self.wire.send(UP, text)
                try:
                    # A slow leader's answer to the first sending still counts: the same
                    # number is sent again, never a new one.
                    answer = await asyncio.wait_for(asyncio.shield(future), ASK_TIMEOUT)
                except TimeoutError:
                    answer = None
                if answer is not None:
                    error = answer.get("e")
                    if error is None:
                        return
                    if error.get("code") != "not_leader":
                        raise Remote(error)
                if time.monotonic() > deadline:
                    raise Unreachable(
                        f"no replica leads to take robot {robot}'s {kind}; it was not stored"
                    )
                if answer is not None:
                    await asyncio.sleep(0.1)
        finally:
            self.asked.pop(number, None)

    # ------------------------------------------------------------------ the leader
    def commands(self, items: list[tuple[str, dict[str, Any] | None]]) -> None:
        """Stored commands for robots this replica does not hold: their holder sends them
        (None: too large to carry; the holder reads it)."""
        carried = [
            [robot, wire if wire is None or len(json.dumps(wire)) < MAX_PAYLOAD // 2 else None]
            for robot, wire in items
        ]
        for text in _chunks({"f": self.replica}, "c", carried):
            self.wire.send(DOWN, text)

    def cut(self, robot: str, code: str, message: str, close: int) -> None:
        payload = {"f": self.replica, "x": [robot, code, message, close]}
        self.wire.send(DOWN, json.dumps(payload))

    def resend_all(self) -> None:
        """A new leader: every holder sends its robots' open commands again (one stored by
        the last leader just before it died may never have been carried)."""
        self.wire.send(DOWN, json.dumps({"f": self.replica, "p": time.time()}))

    # ------------------------------------------------------------------ running
    async def run(self, stopping: asyncio.Event) -> None:
        publisher = asyncio.create_task(self._publish(stopping))
        decider = asyncio.create_task(self._deciding())
        try:
            await self.wire.run(stopping, self._connected)
        finally:
            for task in (publisher, decider, *self.tasks):
                task.cancel()
            await asyncio.gather(publisher, decider, *self.tasks, return_exceptions=True)

    async def _connected(self) -> None:
        """The listener is (back): what it may have missed is sent again."""
        self._spawn(self._send_open(self._held()))

    def _held(self) -> list[str]:
        return [
            name
            for name, link in self.fleet.links.by_robot.items()
            if link.channel is not None or link.polls
        ]

    async def _publish(self, stopping: asyncio.Event) -> None:
        for turn in itertools.count():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), BATCH_SECONDS)
            if stopping.is_set():
                return
            reports, self.reports = self.reports, {}
            gone, self.gone = self.gone, set()
            vehicles, self.vehicles = self.vehicles, {}
            if turn % HELD_EVERY == 0:
                self.sent = {}
            if self.leading():  # the others ask the leader (GET /fleet/robots is its read)
                reports, vehicles = {}, {}
            entries = []
            for name, (telemetry, heard_at, busy) in reports.items():
                if telemetry is not None:
                    same = {k: v for k, v in telemetry.items() if k != "at"}
                    if self.sent.get(name) == same:
                        telemetry = None  # unchanged: its time says it is still so
                    else:
                        self.sent[name] = same
                entries.append([name, telemetry, round(heard_at, 3), busy])
            head: dict[str, Any] = {"f": self.replica}
            texts = _chunks(head, "r", entries)
            if gone:
                texts += _chunks(head, "g", sorted(gone))
            if vehicles:
                texts += _chunks(head, "v", [[name, at] for name, at in vehicles.items()])
            if turn % HELD_EVERY == 0:
                texts += _chunks(head, "h", self._held())
            for text in texts:
                self.wire.send(POSITIONS, text)

    def _heard(self, channel: str, payload: str) -> None:
        if payload.startswith(self.own):
            return  # this replica's own (its batches of positions are ~80 KB a second)
        try:
            message = orjson.loads(payload)  # about a third of json.loads' time
        except ValueError:
            try:  # what orjson refuses and json.dumps may write (NaN from a robot's report)
                message = json.loads(payload)
            except ValueError:
                return
        if not isinstance(message, dict) or message.get("f") == self.replica:
            return
        if channel == POSITIONS:
            self._positions(message)
        elif channel == UP:
            if self.leading():
                self._spawn(self._answer(message))
        elif "t" in message:
            if message["t"] == self.replica:
                future = self.asked.get(message.get("n", 0))
                if future is not None and not future.done():
                    future.set_result(message)
        elif "c" in message:
            self._spawn(self._deliver(message["c"]))
        elif "x" in message:
            robot, code, text, close = message["x"]
            self._spawn(self.fleet.cut_here(robot, code, text, close))
        elif "p" in message:
            self._spawn(self._send_open(self._held()))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _positions(self, message: dict[str, Any]) -> None:
        origin = message["f"]
        links, leading = self.fleet.links, self.leading()
        now, wall = time.monotonic(), time.time()
        for name, telemetry, heard_at, busy in message.get("r", ()):
            link = links.get(name)
            if link.channel is not None:
                continue  # it is connected here now: this replica's view is the fresher
            link.elsewhere, link.elsewhere_at = origin, now
            if telemetry is not None:
                link.telemetry = telemetry
            elif link.telemetry:
                link.telemetry["at"] = heard_at  # the same report, heard again
            link.last_seen = max(link.last_seen, now - max(0.0, wall - heard_at))
            link.heard_at = max(link.heard_at, heard_at)
            if leading and self.fleet.to_decide(name, link, telemetry, busy):
                self.decide.put_nowait((name, telemetry, busy))
        for name, position in message.get("v", ()):
            vehicle = links.get(name)
            vehicle.telemetry = {**vehicle.telemetry, "position": position}
        for name in message.get("h", ()):
            link = links.get(name)
            if link.channel is None:
                link.elsewhere, link.elsewhere_at = origin, now
        for name in message.get("g", ()):
            left = links.by_robot.get(name)
            if left is not None and left.elsewhere == origin:
                left.elsewhere = None

    async def _deciding(self) -> None:
        """On the leader: what other replicas heard turns robots online, places them, and
        takes a robot standing where it was sent as arrived (its checkpoint was lost)."""
        while True:
            name, telemetry, busy = await self.decide.get()
            if not self.leading():
                continue
            try:
                await self.fleet.heard_elsewhere(name, telemetry, busy)
            except CorralError as exc:
                log.info("a report from another replica refused", robot=name, error=exc.message)
            except Exception:
                log.exception("a report from another replica failed", robot=name)

    async def _answer(self, message: dict[str, Any]) -> None:
        """On the leader: handle what a holder passed on, and say how it went."""
        error: dict[str, Any] | None = None
        try:
            await self.fleet.decide_here(str(message["r"]), str(message["k"]), message["b"])
        except CorralError as exc:
            error = {
                "status": exc.status,
                "code": exc.code,
                "message": exc.message,
                "detail": exc.detail,
            }
        except Exception as exc:
            log.exception("a message from another replica failed", message=message)
            error = {"status": 500, "code": "internal", "message": f"corral failed on it: {exc}"}
        answer = {"f": self.replica, "t": message["f"], "n": message["n"], "e": error}
        self.wire.send(DOWN, json.dumps(answer, default=str))

    async def _deliver(self, items: list[list[Any]]) -> None:
        """The leader's commands for robots held here: send them."""
        links = self.fleet.links.by_robot
        read: list[str] = []
        for robot, wire in items:
            held = links.get(robot)
            if held is None or (held.channel is None and not held.polls):
                continue
            if wire is None:
                read.append(robot)
            else:
                await self.fleet.links.push(robot, wire)
        if read:
            await self._send_open(read)

    async def _send_open(self, robots: list[str]) -> None:
        if robots:
            await self.fleet.send_open(robots)
