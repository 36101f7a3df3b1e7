"""The robot fleet service: robots and their credentials, what robots say (hello,
telemetry, checkpoints, acks) over either channel, commands with at-least-once delivery,
broadcasts and the emergency stop, the heartbeat watch, and tasks for robots.

The WebSocket and HTTP routes call it, on every replica: each takes the telemetry of the
robots it holds; on PostgreSQL, a replica that does not lead passes checkpoints and acks to
the leader, which decides and sends commands back to the holder (`peers.Peers`). Core runs
`run_monitor` on the leader and `run_peers` everywhere. Maps, missions and traffic are in
`missions.Dispatcher`.
"""

import asyncio
import contextlib
import itertools
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from corral.config import Settings
from corral.control.access import AccessService, Caller
from corral.control.tasks import Executor, TaskService
from corral.errors import Conflict, CorralError, Invalid, NotFound, Unauthorized
from corral.events import EventBus
from corral.fleet.links import Link, Links, Seal
from corral.fleet.live import follow
from corral.fleet.mapping import MappingSessions
from corral.fleet.meter import FleetMeter
from corral.fleet.missions import Dispatcher, mission_doc
from corral.fleet.peers import MAX_ACKS, Peers
from corral.model.fleet_map import FleetMap, shortest_route
from corral.model.views import TaskView
from corral.robot.signing import verify
from corral.store.fleet import FleetStore
from corral.store.leadership import StaleTerm
from corral.store.tables import CommandRow, MissionRow, RobotRow, utcnow
from corral.waits import pause

log = structlog.get_logger("corral.fleet")
OPERATOR_KINDS = ("stop", "resume", "estop", "custom")
TELEMETRY_FIELDS = frozenset(
    {"type", "marker", "lane", "progress", "distance", "battery", "status", "n", "sig"}
)
TARGET = "fleet"
MAX_COMMAND_ID = 2**53  # command ids are database integers; larger ones name none


def robot_doc(row: RobotRow, link: Link | None, position: str | None) -> dict[str, Any]:
    telemetry = dict(link.telemetry) if link else {}
    return {
        "name": row.name,
        "group": row.group,
        "priority": row.priority,
        "map": row.map,
        "marker": position or row.marker,
        "signed": row.signed,
        "state": "online" if link and link.online else "offline",
        "connected": bool(link and link.connected),
        "last_seen": (
            datetime.fromtimestamp(link.heard_at, UTC).isoformat()
            if link and link.heard_at
            else (row.last_seen.isoformat() if row.last_seen else None)
        ),
        "telemetry": telemetry,
    }


class FleetService:
    def __init__(
        self,
        store: FleetStore,
        access: AccessService,
        tasks: TaskService,
        bus: EventBus,
        settings: Settings,
    ) -> None:
        self.store = store
        self.access = access
        self.tasks = tasks
        self.bus = bus
        self.settings = settings
        self.links = Links()
        self.mapping = MappingSessions()
        self.meter = FleetMeter()
        self.robots: dict[str, RobotRow] = {}
        self.dispatch = Dispatcher(store, bus, self._deliver, self.meter, self._priority)
        self.dispatch.on_end.append(self._mission_ended)
        self._assign = asyncio.Event()
        self.peers: Peers | None = None  # other replicas, on PostgreSQL
        self._maps_read = 0.0  # when a follower last read the maps again
        tasks.register(
            TARGET,
            Executor(("goto",), self._check_task, self._assign.set, self._task_ended),
        )

    def spread(self, replica: str, leading: Callable[[], bool]) -> None:
        """Several replicas: robots are held wherever they connect, decisions stay with
        the leader (`leading` says whether this replica leads now)."""
        self.peers = Peers(self, self.store.db, replica, leading)

    def leads(self) -> bool:
        return self.peers is None or bool(self.peers.leading())

    def stream(self, every: float, stopping: asyncio.Event) -> AsyncIterator[bytes]:
        """The live stream's frames (fleet/live.py), served by the leader, which hears every
        replica's robots; it ends when this replica stops leading or `stopping`."""
        if not self.leads():
            raise StaleTerm("this replica does not lead now; ask again for the next leader's")

        def doc_of(name: str) -> dict[str, Any] | None:
            return self.doc(name) if name in self.robots else None

        return follow(lambda: sorted(self.robots), doc_of, every, self.leads, stopping)

    async def run_peers(self, stopping: asyncio.Event) -> None:
        if self.peers is not None:
            await self.peers.run(stopping)

    async def known(self, name: str, fresh: bool = False) -> RobotRow:
        """The robot; a replica that does not lead reads it from the store when it does
        not know it (registered through the leader) or, with `fresh`, always (a new key)."""
        if self.leads() or (name in self.robots and not fresh):
            return self.robot(name)
        row = await self.store.robot(name)
        if row is None:
            self.robots.pop(name, None)
            raise NotFound(f"robot {name!r} not found", {"robot": name})
        self.robots[name] = row
        if row.map is not None and row.map not in self.dispatch.maps:
            await self._read_maps()
        return row

    async def _read_maps(self) -> None:
        """A replica that does not lead reads the maps again (at most once a second)."""
        if time.monotonic() - self._maps_read < 1.0:
            return
        self._maps_read = time.monotonic()
        await self.dispatch.read_maps()

    async def load(self) -> None:
        """Read the fleet from the store (at start, and when a replica takes the lead:
        what the last leader left replaces what this process read before)."""
        await self.dispatch.load()
        self.robots = {row.name: row for row in await self.store.robots()}

    # ------------------------------------------------------------------ robots
    async def register(
        self,
        name: str,
        group: str,
        priority: int,
        signed: bool,
        map_name: str | None,
        marker: str | None,
        by: Caller,
    ) -> tuple[RobotRow, str, str | None]:
        if marker is not None and map_name is None:
            raise Invalid("a start marker needs a map", {"field": "marker"})
        if map_name is not None:
            fmap = self.dispatch.map(map_name)
            if marker is not None and marker not in fmap.markers:
                raise NotFound(f"marker {marker!r} is not on map {map_name}", {"field": "marker"})
        key = secrets.token_hex(32) if signed else None
        row = RobotRow(
            name=name,
            group=group,
            priority=priority,
            map=map_name,
            marker=marker,
            signed=signed,
            key=key,
            state="offline",
            created_at=utcnow(),
        )
        await self.store.add_robot(row)
        try:
            if marker is not None and map_name is not None:
                await self.dispatch.place(name, map_name, marker)
        except Exception:
            await self.store.delete_robot(name)
            raise
        view, token = await self.access.issue(name, "robot", by, subject=name)
        await self.store.update_robot(name, token_id=view.id)
        row.token_id = view.id
        self.robots[name] = row
        await self.bus.emit(
            "robot.added",
            f"robot/{name}",
            f"robot {name} registered" + (f" at {marker} on {map_name}" if marker else ""),
            {"group": group, "map": map_name, "signed": signed},
        )
        return row, token, key

    async def regroup(self, name: str, group: str, priority: int) -> None:
        """A robot's new group and priority (a declarative file changed them)."""
        row = self.robot(name)
        await self.store.update_robot(name, group=group, priority=priority)
        row.group, row.priority = group, priority

    def _priority(self, name: str) -> int:
        row = self.robots.get(name)
        return row.priority if row is not None else 0

    def robot(self, name: str) -> RobotRow:
        row = self.robots.get(name)
        if row is None:
            raise NotFound(f"robot {name!r} not found", {"robot": name})
        return row

    def doc(self, name: str) -> dict[str, Any]:
        row = self.robot(name)
        link = self.links.by_robot.get(name)
        return robot_doc(row, link, self.dispatch.position(name, row.map))

    async def rotate(self, name: str, by: Caller) -> tuple[str, str | None]:
        """A new credential in one step: stored with the old token's revocation in one
        transaction, so either it is returned or nothing changed. A robot still connected
        with the old one is told and cut off."""
        row = self.robot(name)
        key = secrets.token_hex(32) if row.signed else None
        view, token, old = await self.store.rotate_credential(name, key)
        row.token_id, row.key = view.id, key
        if old is not None:
            await self.bus.emit(
                "token.revoked", f"token/{old.id}", f"token {old.name!r} revoked by {by.name}"
            )
        await self.bus.emit("token.created", f"token/{view.id}", f"token {name!r} (robot) created")
        await self.bus.emit("robot.rotated", f"robot/{name}", f"robot {name}: new credential")
        await self.links.cut(name, "unauthorized", "the credential was rotated", 4401)
        if self.peers is not None:
            self.peers.cut(name, "unauthorized", "the credential was rotated", 4401)
        return token, key

    async def remove(self, name: str, by: Caller) -> None:
        row = self.robot(name)
        if name in self.dispatch.active:
            raise Conflict(f"robot {name} has an active mission; cancel it first")
        await self.dispatch.clear(name, row.map)
        if row.token_id is not None:
            with contextlib.suppress(NotFound):
                await self.access.revoke(row.token_id, by)
        await self.store.delete_robot(name)
        del self.robots[name]
        await self.links.forget(name)
        if self.peers is not None:
            self.peers.cut(name, "unauthorized", f"robot {name} was removed", 4401)
        await self.bus.emit("robot.removed", f"robot/{name}", f"robot {name} removed")

    async def start_mapping(self, name: str, map_name: str) -> dict[str, Any]:
        self.robot(name)
        if name in self.dispatch.active:
            raise Conflict(f"robot {name} has an active mission; cancel it first")
        session = self.mapping.start(name, map_name)
        await self.bus.emit(
            "map.mapping", f"robot/{name}", f"robot {name} maps {map_name}: drive it around"
        )
        return session.summary()

    async def finish_mapping(
        self, name: str, diameter: float, measured: float | None
    ) -> dict[str, Any]:
        """Build the map from what the robot reported, store it, put the robot on it."""
        fmap, last = self.mapping.finish(name, diameter, measured)
        row = self.robot(name)
        await self.dispatch.clear(name, row.map)
        await self.dispatch.put_map(fmap.as_dict(), f"mapping by {name}")
        row.map, row.marker = fmap.name, last or None
        await self.store.update_robot(name, map=fmap.name, marker=row.marker)
        if last:
            await self.dispatch.place(name, fmap.name, last)
        return fmap.as_dict()

    async def clear(self, name: str) -> list[str]:
        row = self.robot(name)
        released = await self.dispatch.clear(name, row.map)
        await self.bus.emit(
            "robot.cleared",
            f"robot/{name}",
            f"robot {name}: reservations cleared by an operator ({', '.join(released) or 'none'})",
        )
        return released

    # ------------------------------------------------------------------ what robots say
    def check_signature(self, name: str, message: dict[str, Any], seal: Seal | None) -> None:
        """A signed robot's message must be signed under its channel's nonce (`seal`), with
        a counter above the last one taken: a message recorded on another connection, or
        before a restart, or sent twice, is refused (docs/fleet-protocol.md)."""
        row = self.robot(name)
        if not row.signed:
            return
        if seal is None:
            raise Unauthorized(
                "bad_signature: ask for a nonce first (POST /fleet/robots/NAME/nonce)",
                {"code": "bad_signature"},
            )
        if row.key is None or not verify(message, row.key, seal.nonce):
            raise Unauthorized(
                "bad_signature: missing or wrong signature (is it over this channel's nonce?)",
                {"code": "bad_signature"},
            )
        counter = message["n"]
        if counter <= seal.counter:
            raise Unauthorized(
                f"bad_signature: counter {counter} does not grow (last {seal.counter})",
                {"code": "bad_signature"},
            )
        seal.counter = counter

    def http_nonce(self, name: str) -> str:
        """A new nonce for the robot's HTTP channel; messages signed under an older one
        are refused from now on."""
        self.robot(name)
        seal = self.links.get(name).http_seal = Seal()
        return seal.nonce

    async def seen(self, name: str) -> Link:
        link = self.links.get(name)
        link.heard()
        if self.peers is not None:
            self.peers.report(name, None)
        if not link.online and self.leads():
            await self._online(name, link)
        return link

    async def _online(self, name: str, link: Link) -> None:
        """The leader marks a robot online (stored, with its event)."""
        link.online = True
        row = self.robot(name)
        row.state, row.last_seen = "online", utcnow()
        await self.store.update_robot(name, state="online", last_seen=row.last_seen)
        await self.bus.emit("robot.online", f"robot/{name}", f"robot {name} is online")

    async def telemetry(self, name: str, message: dict[str, Any], infer: bool = True) -> None:
        """A robot's report. With `infer`, standing on the marker it was sent to counts as
        its checkpoint (one lost to a restart); the socket turns that off while a checkpoint
        of its own is on the way."""
        row = self.robot(name)
        report = _telemetry(message)
        link = self.links.get(name)  # seen(), with one report to the peers, not two
        link.heard()
        if not link.online and self.leads():
            await self._online(name, link)
        try:
            if row.map is not None:
                try:
                    self._check_spot(row.map, report)
                except CorralError:
                    if self.leads():
                        raise
                    await self._read_maps()  # a follower's maps may be older than the leader's
                    self._check_spot(row.map, report)
                if self.leads():
                    await self._whereabouts(name, row.map, report, infer)
        except BaseException:
            if self.peers is not None:
                self.peers.report(name, None)  # heard, though what it said was refused
            raise
        self._keep(name, link, report, infer)

    def telemetry_now(self, name: str, message: dict[str, Any], infer: bool = True) -> bool:
        """`telemetry` without awaiting, for the socket to handle a report as it is read:
        True once handled; False, with nothing done, when it needs more (a signed or
        unknown robot, a refused report, a follower's maps perhaps older than the
        leader's, or on the leader a robot coming online, placed, or arriving)."""
        row = self.robots.get(name)
        link = self.links.by_robot.get(name)
        if row is None or link is None or row.signed:
            return False
        try:
            report = _telemetry(message)
            if row.map is not None:
                self._check_spot(row.map, report)
        except CorralError:
            return False
        if self.leads() and (not link.online or self._decides(name, row.map, report, infer)):
            return False
        link.heard()
        self._keep(name, link, report, infer)
        return True

    def _decides(
        self, name: str, map_name: str | None, report: dict[str, Any], infer: bool
    ) -> bool:
        """Whether the leader's `_whereabouts` acts on this report (places the robot or takes
        it as a lost checkpoint)."""
        marker = report.get("marker")
        if marker is None or map_name is None:
            return False
        if self.dispatch.position(name, map_name) is None:
            return True
        return infer and self.dispatch.granted(name, map_name) == marker

    def _keep(self, name: str, link: Link, report: dict[str, Any], infer: bool) -> None:
        """A report taken: the robot's latest telemetry, and for the peers."""
        link.telemetry = {**report, "at": time.time()}
        if self.peers is not None:
            self.peers.report(name, link.telemetry, busy=not infer)

    def _check_spot(self, map_name: str, report: dict[str, Any]) -> None:
        marker, lane = report.get("marker"), report.get("lane")
        if marker is not None:
            self.dispatch.check_marker(map_name, marker)
        if lane is not None:
            self.dispatch.lane_of(map_name, lane[0], lane[1])

    async def _whereabouts(
        self, name: str, map_name: str, report: dict[str, Any], infer: bool
    ) -> None:
        """On the leader: a robot's first report places it; with `infer`, standing on the
        marker it was sent to counts as its checkpoint."""
        marker = report.get("marker")
        if marker is None:
            return
        if self.dispatch.position(name, map_name) is None:
            await self.dispatch.place(name, map_name, marker)
        elif infer and self.dispatch.granted(name, map_name) == marker:
            # it stands where it was sent and its checkpoint was lost (a corral restart
            # between reading the checkpoint and saving it): take this as the checkpoint
            await self.dispatch.checkpoint(name, map_name, marker)

    def to_decide(
        self, name: str, link: Link, telemetry: dict[str, Any] | None, busy: bool
    ) -> bool:
        """On the leader, without awaiting: whether what another replica heard of this robot
        changes something (it comes online, is placed, or arrives), so most reports cost
        a few lookups."""
        if not link.online:
            return True
        row = self.robots.get(name)
        marker = telemetry.get("marker") if telemetry else None
        if row is None or row.map is None or marker is None:
            return False
        here = self.dispatch.position(name, row.map)
        return here is None or (
            not busy and here != marker and self.dispatch.granted(name, row.map) == marker
        )

    async def heard_elsewhere(
        self, name: str, telemetry: dict[str, Any] | None, busy: bool
    ) -> None:
        """On the leader: another replica heard this robot (and what it reported)."""
        row = self.robots.get(name)
        if row is None:
            return
        link = self.links.get(name)
        if not link.online:
            await self._online(name, link)
        if telemetry is not None and row.map is not None and row.map in self.dispatch.traffic:
            await self._whereabouts(name, row.map, telemetry, infer=not busy)

    async def decide_here(self, name: str, kind: str, body: Any) -> None:
        """On the leader: a checkpoint or an ack another replica passed on."""
        if not self.leads():
            raise StaleTerm("this replica does not lead")
        if not isinstance(body, dict):
            raise Invalid("a passed-on message is an object")
        if kind == "checkpoint":
            await self._checkpoint_here(name, body)
        elif kind == "ack":
            await self._ack_here(name, body.get("ids"), bool(body.get("known", True)))
        else:
            raise Invalid(f"unknown passed-on message {kind!r}")

    async def checkpoint(self, name: str, message: dict[str, Any]) -> None:
        """Returns once the leader stored it (this replica, or the one it is passed to)."""
        marker = message.get("marker")
        if not isinstance(marker, str) or not marker:
            raise Invalid("checkpoint needs a marker id", {"field": "marker"})
        if self.peers is None:
            await self._checkpoint_here(name, message)
            return
        body: dict[str, Any] = {k: message[k] for k in ("marker", "x", "y") if k in message}
        if self.leads():
            with contextlib.suppress(StaleTerm):  # else the lead ended under it: pass it on
                await self._checkpoint_here(name, body)
                return
        await self.seen(name)
        await self.peers.ask(name, "checkpoint", body)

    async def _checkpoint_here(self, name: str, message: dict[str, Any]) -> None:
        row = self.robot(name)
        marker = message.get("marker")
        if not isinstance(marker, str) or not marker:
            raise Invalid("checkpoint needs a marker id", {"field": "marker"})
        await self.seen(name)
        if name in self.mapping.by_robot:
            self.mapping.observe(name, marker, message)
            return
        if row.map is None:
            raise Conflict(f"robot {name} is on no map; give it one at registration")
        await self.dispatch.checkpoint(name, row.map, marker)  # stores the marker too
        row.marker = marker

    async def ack(self, name: str, ids: Any, known: bool = True) -> None:
        """Returns once the acknowledgement is stored (with other robots' acks, apart from
        the mission batches). The robot's own ids are stored; with `known`, any other id is
        refused (NotFound naming it), without, ignored (a robot's memory may be older)."""
        if not isinstance(ids, list) or not all(
            (
                (isinstance(i, int) and not isinstance(i, bool))
                or (isinstance(i, float) and i.is_integer())
            )
            and 1 <= i <= MAX_COMMAND_ID
            for i in ids
        ):
            raise Invalid("ack ids must be a list of command ids", {"field": "ids"})
        ids = [int(i) for i in ids]  # JSON's 7.0 is the integer 7
        if self.peers is None or not ids:
            await self._ack_here(name, ids, known)
            return
        if self.leads():
            with contextlib.suppress(StaleTerm):  # else the lead ended under it: pass it on
                await self._ack_here(name, ids, known)
                return
        await self.seen(name)
        for at in range(0, len(ids), MAX_ACKS):
            chunk = ids[at : at + MAX_ACKS]
            await self.peers.ask(name, "ack", {"ids": chunk, "known": known})

    async def _ack_here(self, name: str, ids: Any, known: bool) -> None:
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= MAX_COMMAND_ID for i in ids
        ):
            raise Invalid("ack ids must be a list of command ids", {"field": "ids"})
        await self.seen(name)
        if not ids:
            return
        # Stored at once, apart from the mission batches (its own group commit).
        unknown = await self.dispatch.journal.acknowledge(name, ids)
        if known and unknown:
            raise NotFound(
                f"robot {name} has no command {', '.join(map(str, unknown[:20]))}",
                {"code": "unknown_command", "ids": unknown[:20]},
            )

    # ------------------------------------------------------------------ commands
    async def command(self, name: str, kind: str, payload: dict[str, Any]) -> int:
        """An operator's command to one robot (moves come from missions, not from here)."""
        [command_id] = await self.commands([(name, kind, _operator_body(kind, payload))])
        return command_id

    async def commands(self, items: list[tuple[str, str, dict[str, Any]]]) -> list[int]:
        for name, _, _ in items:
            self.robot(name)
        rows = await self.store.add_commands(items)
        await self._deliver(rows)
        return [row.id for row in rows]

    async def _deliver(self, rows: list[CommandRow]) -> None:
        """Send stored commands to their robots' sockets and wake their long polls (not
        once this replica's lead has lapsed: the next leader delivers them)."""
        self.store.db.term.confirm()
        elsewhere: list[tuple[str, dict[str, Any] | None]] = []
        for row in rows:
            wire = _wire(row.id, row.kind, row.body)
            if self.peers is not None and self.links.get(row.robot).channel is None:
                elsewhere.append((row.robot, wire))  # its socket may be on another replica
            await self.links.push(row.robot, wire)
        if self.peers is not None and elsewhere:
            self.peers.commands(elsewhere)

    async def send_open(self, names: list[str]) -> None:
        """Send these robots (held here) every command they have not acknowledged: what
        the leader stored while this replica could not hear it."""
        rows = await self.store.open_commands_of(names)
        for row in sorted(rows, key=lambda c: (c.robot, c.kind != "estop", c.id)):
            await self.links.push(row.robot, _wire(row.id, row.kind, row.body))

    def detach(self, name: str, channel: Any) -> None:
        """A robot's socket here ended (the other replicas hear of it)."""
        if self.links.detach(name, channel) and self.peers is not None:
            self.peers.left(name)

    async def cut_here(self, name: str, code: str, message: str, close: int) -> None:
        """The leader cut a robot off (its credential rotated, or it was removed): close
        its socket here, and read it again (its new key), or forget it."""
        try:
            await self.known(name, fresh=True)
        except NotFound:
            await self.links.forget(name)
            return
        await self.links.cut(name, code, message, close)

    async def broadcast(self, kind: str, payload: dict[str, Any], group: str | None) -> list[str]:
        body = _operator_body(kind, payload)
        names = [n for n, r in sorted(self.robots.items()) if group is None or r.group == group]
        if not names:
            raise NotFound(f"no robot in group {group!r}" if group else "no robots registered")
        await self.commands([(n, kind, body) for n in names])
        await self.bus.emit(
            f"fleet.{kind}",
            "fleet",
            f"{kind} sent to {len(names)} robot(s)" + (f" of group {group}" if group else ""),
            {"robots": names, "group": group},
        )
        return names

    async def command_log(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        """A robot's latest commands, newest first, acknowledged or not."""
        self.robot(name)
        return [
            {
                "id": c.id,
                "kind": c.kind,
                "body": c.body,
                "created_at": c.created_at.isoformat(),
                "acked_at": c.acked_at.isoformat() if c.acked_at else None,
            }
            for c in await self.store.commands(name, limit)
        ]

    async def missions(self, state: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """The newest missions first, as documents."""
        return [mission_doc(m) for m in await self.store.missions(state, limit)]

    async def mission(self, id: int) -> dict[str, Any]:
        return mission_doc(await self.store.mission(id))

    async def pending(self, name: str, after: int = 0) -> list[dict[str, Any]]:
        return [_wire(c.id, c.kind, c.body) for c in await self.store.open_commands(name, after)]

    async def wait_commands(self, name: str, after: int, wait: float) -> list[dict[str, Any]]:
        """HTTP long poll: the open commands past `after`, waiting up to `wait` s for one."""
        link = await self.seen(name)
        deadline = time.monotonic() + wait
        link.polls += 1  # connected while it waits
        try:
            while True:
                link.arrived.clear()
                found = await self.pending(name, after)
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(link.arrived.wait(), timeout=left)
        finally:
            link.polls -= 1

    # ------------------------------------------------------------------ the watch
    async def run_monitor(self, stopping: asyncio.Event) -> None:
        """Heartbeats (offline after silence, wherever the robot is held), traffic retries,
        and task assignment, while this replica leads. Its robots stay connected when it
        stops leading: it holds them as any other replica does. A new leader first has
        every holder send its robots' open commands again."""
        if self.peers is not None:
            self.peers.resend_all()
            await self.send_open(
                [n for n, link in self.links.by_robot.items() if link.channel or link.polls]
            )
        await self._watch(stopping)

    async def went_offline(
        self,
        name: str,
        why: str,
        data: dict[str, Any] | None = None,
        last_seen: datetime | None = None,
    ) -> None:
        """A robot whose link went quiet or broke: offline in memory and the store, with
        its event; it keeps its reservations (an operator or its return frees them)."""
        robot = self.robots.get(name)
        if robot is None:
            return
        robot.state = "offline"
        values: dict[str, Any] = {"state": "offline"}
        if last_seen is not None:
            robot.last_seen = values["last_seen"] = last_seen
        await self.store.update_robot(name, **values)
        await self.bus.emit(
            "robot.offline", f"robot/{name}", f"robot {name} {why}; it keeps what it holds", data
        )

    async def _watch(self, stopping: asyncio.Event) -> None:
        period = min(0.5, self.settings.robot_heartbeat_seconds / 4)
        while not stopping.is_set():
            now = time.monotonic()
            for name, link in list(self.links.by_robot.items()):
                if link.online and now - link.last_seen > self.settings.robot_heartbeat_seconds:
                    link.online = False
                    await self.went_offline(
                        name,
                        f"missed its heartbeat ({self.settings.robot_heartbeat_seconds:g} s)",
                        last_seen=datetime.fromtimestamp(link.heard_at, UTC),
                    )
            await self.dispatch.tick()
            await self._assign_tasks()
            self._assign.clear()
            await pause(period, stopping, self._assign)

    # ------------------------------------------------------------------ tasks
    async def _check_task(self, kind: str, params: dict[str, Any]) -> None:
        unknown = set(params) - {"marker", "objective", "map", "robot"}
        if unknown:
            raise Invalid(f"unknown goto parameter(s): {', '.join(sorted(unknown))}")
        marker, map_name = params.get("marker"), params.get("map")
        if not isinstance(marker, str):
            raise Invalid("goto needs params.marker", {"field": "params.marker"})
        maps = [self.dispatch.map(map_name)] if map_name else list(self.dispatch.maps.values())
        if not any(marker in m.markers for m in maps):
            raise Invalid(f"marker {marker!r} is on no map", {"field": "params.marker"})

    async def _assign_tasks(self) -> None:
        for task in await self.tasks.open_for(TARGET):
            if task.state != "queued":
                continue
            choice = self._best_robot(task.params)
            if choice is None:
                return
            robot, map_name = choice
            moved = await self.tasks.move(task.id, "assigned", f"to robot {robot}")
            if moved is None:
                continue
            try:
                await self.dispatch.start(
                    robot,
                    map_name,
                    task.params["marker"],
                    str(task.params.get("objective", "")),
                    task.id,
                )
            except (Conflict, Invalid) as exc:
                await self.tasks.move(task.id, "failed", exc.message)
                continue
            await self.tasks.move(task.id, "running", f"robot {robot} on its way")

    def _best_robot(self, params: dict[str, Any]) -> tuple[str, str] | None:
        """Idle online robots first (no mission), then the shortest route to the marker."""
        marker = params["marker"]
        best: tuple[float, str, str] | None = None
        for name, row in self.robots.items():
            if row.map is None or name in self.dispatch.active:
                continue
            if params.get("robot") not in (None, name):
                continue
            if params.get("map") not in (None, row.map):
                continue
            link = self.links.by_robot.get(name)
            here = self.dispatch.position(name, row.map)
            fmap = self.dispatch.maps.get(row.map)
            if link is None or not link.online or here is None or fmap is None:
                continue
            if marker not in fmap.markers:
                continue
            distance = _route_length(fmap, here, marker)
            if distance is None:
                continue
            if best is None or (distance, name) < (best[0], best[1]):
                best = (distance, name, row.map)
        return (best[1], best[2]) if best else None

    async def _mission_ended(self, mission: MissionRow) -> None:
        if mission.task_id is None:
            return
        if mission.state == "done":
            reason = f"robot {mission.robot} at {mission.goal}"
            await self.tasks.move(mission.task_id, "done", reason)
        else:
            await self.tasks.move(mission.task_id, "failed", f"mission {mission.state}")

    async def _task_ended(self, task: TaskView) -> None:
        """A task cancelled or failed from outside: end its mission too."""
        for mission in list(self.dispatch.active.values()):
            if mission.task_id == task.id:
                with contextlib.suppress(Conflict):
                    await self.dispatch.cancel(mission.id, f"task {task.id} {task.state}")


def _route_length(fmap: FleetMap, start: str, goal: str) -> float | None:
    route = shortest_route(fmap, start, goal)
    if route is None:
        return None
    return float(sum(fmap.length(a, b) for a, b in itertools.pairwise(route)))


def _wire(command_id: int, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"type": "command", "id": command_id, "kind": kind, **body}


def _telemetry(message: dict[str, Any]) -> dict[str, Any]:
    """Check a telemetry report's fields; the checked report."""
    unknown = message.keys() - TELEMETRY_FIELDS
    if unknown:
        raise Invalid(f"unknown telemetry field(s): {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    marker, lane = message.get("marker"), message.get("lane")
    if marker is not None and (not isinstance(marker, str) or not marker):
        raise Invalid("marker must be a marker id or null", {"field": "marker"})
    if lane is not None and (
        not isinstance(lane, list) or len(lane) != 2 or not all(isinstance(m, str) for m in lane)
    ):
        raise Invalid("lane must be [FROM, TO] or null", {"field": "lane"})
    if marker is not None and lane is not None:
        raise Invalid("a robot is at a marker or on a lane, not both", {"field": "lane"})
    out["marker"], out["lane"] = marker, lane
    for field, low, high in (("progress", 0, 1), ("distance", 0, 1e6), ("battery", 0, 100)):
        value = message.get(field)
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise Invalid(f"{field} must be a number", {"field": field})
        if not low <= value <= high:
            raise Invalid(f"{field} {value} is outside {low}..{high:g}", {"field": field})
        out[field] = value
    status = message.get("status")
    if status is not None:
        if not isinstance(status, str) or len(status) > 200:
            raise Invalid("status must be text of at most 200 characters", {"field": "status"})
        out["status"] = status
    return out


def _operator_body(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The body of a command an operator may send (a custom one carries its payload)."""
    if kind not in OPERATOR_KINDS:
        raise Invalid(f"kind must be one of {', '.join(OPERATOR_KINDS)}", {"field": "kind"})
    return {"payload": payload} if kind == "custom" else {}
