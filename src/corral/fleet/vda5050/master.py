"""VDA 5050 master control: corral's fleet drives vehicles over MQTT. Each registered
vehicle is a robot whose channel turns corral's commands into VDA 5050 messages (a `move`
into an order update whose base is exactly what the traffic granted, stop/resume/e-stop
into instant actions) and whose `state` feeds corral's checkpoints, position and health.

Every message in and out is checked against the standard's schemas; a bad or unknown one
is an event and a counter, never a crash.
"""

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Counter

from corral.brokers.mqtt import MqttLink
from corral.control.access import Caller
from corral.errors import Conflict, CorralError, Invalid, NotFound, Unreachable
from corral.events import EventBus
from corral.fleet.service import FleetService
from corral.fleet.vda5050.broker_log import BrokerLog
from corral.fleet.vda5050.messages import INBOUND, TOPICS, Headers, Topics, decode, problems
from corral.metrics import Metrics
from corral.model.names import NAME_PATTERN
from corral.model.vda_orders import OrderPlan
from corral.model.vehiclesfile import VehicleSpec
from corral.store.tables import MissionRow, RobotRow, VdaVehicleRow, utcnow
from corral.store.vda5050 import VdaStore

log = structlog.get_logger("corral.vda5050")
# startPause activates the pause mode, stopPause deactivates it (VDA 5050 2.1, 6.8.1)
PAUSE = {"stop": "startPause", "estop": "startPause", "resume": "stopPause"}
ADMISSION = Caller(token_id=0, name="vda5050 admission", role="admin", subject="")
BEAT = 0.02  # seconds: the vehicles' latest visualizations are read at most this often
ROUTES_KEPT = 100_000  # topics whose split is kept
ADMISSION_BACKLOG = 100  # messages kept of a vehicle while it is being admitted
LEARN_S = 5.0  # seconds: a follower looks up an unknown vehicle at most this often


class _Counted(dict[tuple[str, str], Counter]):
    """The inbound message counters by (topic, outcome), each label set looked up once."""

    def __init__(self, counter: Counter, replica: str) -> None:
        super().__init__()
        self.counter = counter
        self.replica = replica

    def __missing__(self, key: tuple[str, str]) -> Counter:
        child = self[key] = self.counter.labels("in", key[0], key[1], self.replica)
        return child


@dataclass(frozen=True)
class Inbound:
    """One message of a vehicle's, decoded, with its problems (none: valid)."""

    topic: str
    message: dict[str, Any] | None
    problems: list[str]
    retained: bool


@dataclass
class Vehicle:
    """One vehicle as master control knows it (in memory)."""

    robot: str
    manufacturer: str
    serial: str
    headers: Headers
    master: "MasterControl"
    plan: OrderPlan | None = None
    connection: str = "unknown"  # ONLINE, OFFLINE, CONNECTIONBROKEN as it last said
    last_node: str | None = None
    state: dict[str, Any] = field(default_factory=dict)  # what the API shows of its state
    factsheet: dict[str, Any] | None = None
    watched: dict[str, str] = field(default_factory=dict)  # actionId -> what, until it ends
    handled: set[int] = field(default_factory=set)  # command ids sent
    resent_at: float = 0.0  # when a lost order was last sent again (monotonic)
    resends: int = 0
    last_order: dict[str, Any] | None = None  # the body of the last order (update) sent
    kind = "vda5050"  # the fleet's Channel protocol: its name in metrics
    # what it said that is still to be handled, in order, by its own worker task
    inbox: "asyncio.Queue[Inbound]" = field(default_factory=asyncio.Queue)
    worker: "asyncio.Task[None] | None" = None

    # the fleet's Channel protocol: commands for this robot arrive here
    async def send(self, message: dict[str, Any]) -> None:
        await self.master.command(self, message)

    async def close(self, code: str, message: str, close: int) -> None:
        """An MQTT vehicle has no socket of corral's to close: the broker's ACLs cut it."""

    def doc(self) -> dict[str, Any]:
        return {
            "robot": self.robot,
            "manufacturer": self.manufacturer,
            "serial_number": self.serial,
            "connection": self.connection,
            "order_id": self.plan.order_id if self.plan else None,
            "order_update_id": self.plan.update_id if self.plan else None,
            "operating_mode": self.state.get("operating_mode"),
            "errors": self.state.get("errors", []),
            "state": self.state,
            "factsheet": self.factsheet,
        }


class MasterControl:
    def __init__(
        self,
        fleet: FleetService,
        store: VdaStore,
        mqtt: MqttLink,
        topics: Topics,
        bus: EventBus,
        metrics: Metrics,
        replica: str,
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.mqtt = mqtt
        self.topics = topics
        self.bus = bus
        self.by_identity: dict[tuple[str, str], Vehicle] = {}
        self.by_robot: dict[str, Vehicle] = {}
        self._unknown_said: set[tuple[str, str]] = set()
        self.admit_map: str | None = None  # admit unknown vehicles onto this map
        self.counts = fleet.meter.vda5050  # the fleet's figures for this channel
        self.messages = Counter(
            "corral_vda5050_messages",
            "VDA 5050 messages by direction, topic and outcome (ok, invalid, unknown, denied), "
            "as this replica took or sent them.",
            ["direction", "topic", "outcome", "replica"],
            registry=metrics.registry,
        )
        self.replica = replica
        self._counted = _Counted(
            self.messages, self.replica
        )  # inbound counters by (topic, outcome)
        # topic -> (manufacturer, serial), topic name: each topic split once
        self._routes: dict[str, tuple[tuple[str, str], str]] = {}
        # each vehicle's latest visualization not read yet, read on the next beat
        self._latest: dict[tuple[str, str], bytes] = {}
        self._superseded = 0
        self._beat: asyncio.TimerHandle | None = None
        # vehicles being admitted -> what they sent meanwhile
        self._admitting: dict[tuple[str, str], list[tuple[str, bytes, bool]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._looked_up: dict[tuple[str, str], float] = {}  # a follower's store reads (`_learn`)

    def wire(self, visualization: bool = True) -> None:
        """Subscribe to the vehicles' topics (without `visualization`, positions come from
        their states, at their rate)."""
        self.mqtt.feed(
            [
                (self.topics.inbound(topic), 1)
                for topic in INBOUND
                if topic != "visualization" or visualization
            ],
            self.on_message,
        )
        self.fleet.dispatch.on_end.append(self._mission_ended)

    def share(self, feed: MqttLink, group: str) -> None:
        """With replicas: `feed`, a connection of this replica's own (run whether it leads
        or not), takes its share of every vehicle's visualization through the shared
        subscription `$share/GROUP/...`; the leader's link (`wire(visualization=False)`)
        no longer takes them all. A follower passes the positions to the leader."""
        topic = f"$share/{group}/{self.topics.inbound('visualization')}"
        feed.feed([(topic, 1)], self.on_message)

    async def follow_broker_log(self, path: Path, stop: asyncio.Event) -> None:
        """While leading: the broker's ACL refusals, from its log, as events."""
        await BrokerLog(path, self.topics, self.bus, self.messages, self.replica).run(stop)

    async def load(self) -> None:
        """Read the vehicles (at start, and when this replica takes the lead, after the
        fleet): what an earlier term knew of their orders is dropped; their next states say."""
        for vehicle in self.by_robot.values():
            if vehicle.worker is not None:
                vehicle.worker.cancel()
        self.by_identity, self.by_robot = {}, {}
        for row in await self.store.all():
            if row.robot in self.fleet.robots:
                self._add(row)

    def _add(self, row: VdaVehicleRow) -> Vehicle:
        vehicle = Vehicle(
            row.robot, row.manufacturer, row.serial, Headers(row.manufacturer, row.serial), self
        )
        self.by_identity[(row.manufacturer, row.serial)] = vehicle
        self.by_robot[row.robot] = vehicle
        return vehicle

    # ------------------------------------------------------------------ registration
    async def register(
        self,
        name: str,
        manufacturer: str,
        serial: str,
        group: str,
        priority: int,
        map_name: str | None,
        marker: str | None,
        by: Caller,
    ) -> RobotRow:
        if (manufacturer, serial) in self.by_identity:
            taken = self.by_identity[(manufacturer, serial)].robot
            raise Conflict(f"vehicle {manufacturer}/{serial} is robot {taken} already")
        row, _, _ = await self.fleet.register(name, group, priority, False, map_name, marker, by)
        vda = VdaVehicleRow(robot=name, manufacturer=manufacturer, serial=serial)
        vda.created_at = utcnow()
        try:
            await self.store.add(vda)
        except Exception:
            await self.fleet.remove(name, by)
            raise
        self._add(vda)
        await self.bus.emit(
            "vda5050.added",
            f"robot/{name}",
            f"robot {name} is VDA 5050 vehicle {manufacturer}/{serial}",
            {"manufacturer": manufacturer, "serial_number": serial},
        )
        return row

    async def apply(self, specs: list[VehicleSpec], prune: bool, by: Caller) -> dict[str, str]:
        """Make the registered vehicles match `specs` (a vehicles file): a new one is
        registered (`created`), a known one (same name and identity) keeps its place and
        gets the file's group and priority (`updated`, or `unchanged`); with `prune`, a
        vehicle the file lacks is removed (`removed`). Everything is checked first: a
        conflict (a name or identity taken otherwise, a pruned vehicle on a mission) changes
        nothing."""
        names = {spec.name for spec in specs}
        for spec in specs:
            identity = (spec.manufacturer, spec.serial_number)
            vehicle = self.by_robot.get(spec.name)
            if vehicle is not None and (vehicle.manufacturer, vehicle.serial) != identity:
                raise Conflict(
                    f"robot {spec.name} is vehicle {vehicle.manufacturer}/{vehicle.serial}, "
                    f"not {identity[0]}/{identity[1]}: remove it first",
                    {"robot": spec.name},
                )
            if vehicle is None and spec.name in self.fleet.robots:
                raise Conflict(
                    f"robot {spec.name} exists and is not a VDA 5050 vehicle", {"robot": spec.name}
                )
            owner = self.by_identity.get(identity)
            if owner is not None and owner.robot != spec.name:
                raise Conflict(
                    f"vehicle {identity[0]}/{identity[1]} is robot {owner.robot} already",
                    {"robot": owner.robot},
                )
        pruned = sorted(set(self.by_robot) - names) if prune else []
        busy = [name for name in pruned if name in self.fleet.dispatch.active]
        if busy:
            raise Conflict(
                f"robot {busy[0]} is not in the file but has an active mission; cancel it first",
                {"robot": busy[0]},
            )
        outcomes: dict[str, str] = {}
        for spec in specs:
            if spec.name not in self.by_robot:
                await self.register(
                    spec.name,
                    spec.manufacturer,
                    spec.serial_number,
                    spec.group,
                    spec.priority,
                    spec.map,
                    spec.marker,
                    by,
                )
                outcomes[spec.name] = "created"
                continue
            row = self.fleet.robot(spec.name)
            if (row.group, row.priority) == (spec.group, spec.priority):
                outcomes[spec.name] = "unchanged"
            else:
                await self.fleet.regroup(spec.name, spec.group, spec.priority)
                outcomes[spec.name] = "updated"
        for name in pruned:
            await self.remove(name, by)
            outcomes[name] = "removed"
        return outcomes

    async def remove(self, name: str, by: Caller) -> None:
        vehicle = self.vehicle(name)
        await self.fleet.remove(name, by)
        await self.store.remove(name)
        if vehicle.worker is not None:
            vehicle.worker.cancel()
        self.by_robot.pop(name, None)
        self.by_identity.pop((vehicle.manufacturer, vehicle.serial), None)

    def vehicle(self, name: str) -> Vehicle:
        vehicle = self.by_robot.get(name)
        if vehicle is None:
            raise NotFound(f"robot {name!r} is not a VDA 5050 vehicle", {"robot": name})
        return vehicle

    # ------------------------------------------------------------------ corral -> vehicle
    async def command(self, vehicle: Vehicle, message: dict[str, Any]) -> None:
        """One stored command of the fleet, sent as VDA 5050 and then acknowledged (the
        broker took it). Not sent (the broker is down): it stays open and goes again when
        the vehicle is heard next."""
        kind, command_id = message["kind"], message["id"]
        if command_id in vehicle.handled:
            return  # sent already (or being sent); its acknowledgement is on its way
        vehicle.handled.add(command_id)  # before the first await: a second push skips it
        try:
            await self._send(vehicle, kind, command_id, message)
        except BaseException:
            vehicle.handled.discard(command_id)  # not sent: it goes again
            raise
        # The acknowledgement is stored with the fleet's next batch (this runs while the
        # journal delivers one).
        del_below = sorted(vehicle.handled)[:-1000]
        vehicle.handled.difference_update(del_below)
        self.fleet.dispatch.journal.ack(vehicle.robot, [command_id])

    async def _send(
        self, vehicle: Vehicle, kind: str, command_id: int, message: dict[str, Any]
    ) -> None:
        if kind == "move":
            await self._order(vehicle, message)
        elif kind in PAUSE:
            await self._instant(vehicle, PAUSE[kind], f"{kind}-{command_id}", kind == "estop")
        elif kind == "custom":
            actions = message.get("payload", {}).get("actions")
            if not isinstance(actions, list):
                await self.bus.emit(
                    "vda5050.unsupported",
                    f"robot/{vehicle.robot}",
                    f"command {command_id}: a custom command to a VDA 5050 vehicle needs "
                    "payload.actions (a list of VDA 5050 actions)",
                )
            else:
                await self._publish(vehicle, "instantActions", {"actions": actions})
        # `mission` is informational: the order of its first move carries it.

    async def _order(self, vehicle: Vehicle, move: dict[str, Any]) -> None:
        robot, (here, granted) = vehicle.robot, move["lane"]
        row = self.fleet.robot(robot)
        if row.map is None:
            return
        fmap = self.fleet.dispatch.map(row.map)
        mission = self.fleet.dispatch.active.get(robot)
        route = [here, granted]
        if mission is not None and mission.id == move.get("mission"):
            rest = mission.route[mission.progress :]
            if rest[:2] == [here, granted]:
                route = rest
        order_id = f"corral-mission-{move.get('mission', 'none')}"
        plan = vehicle.plan
        if (
            plan is None
            or not (plan.order_id == order_id or plan.order_id.startswith(f"{order_id}-"))
            or (plan.update_id >= 0 and plan.base_end != here)
        ):
            plan = OrderPlan(order_id)
            reported = vehicle.state
            if reported.get("order_id") == order_id:
                # corral restarted mid-order: go on from what the vehicle says it has
                if granted in reported["released"]:
                    return  # a move sent before the restart, its ack not stored
                if reported["base_end"][0] == here:
                    plan.update_id = reported["order_update_id"]
                    plan.base_end, plan.base_end_seq = reported["base_end"]
        sent = OrderPlan(plan.order_id, plan.update_id, plan.base_end, plan.base_end_seq)
        actions = {}
        if mission is not None and mission.actions and route[-1] == mission.goal:
            actions[mission.goal] = [_vda_action(a) for a in mission.actions]
        body = sent.update(fmap, route, granted, actions)
        await self._publish(vehicle, "order", body)
        vehicle.plan, vehicle.last_order = sent, body
        vehicle.resent_at = time.monotonic()  # give its state 2 s to show it

    async def _instant(self, vehicle: Vehicle, action: str, action_id: str, hard: bool) -> None:
        vehicle.watched[action_id] = action
        await self._publish(
            vehicle,
            "instantActions",
            {
                "actions": [
                    {
                        "actionType": action,
                        "actionId": action_id,
                        "blockingType": "HARD" if hard or action != "stopPause" else "NONE",
                        "actionParameters": [],
                    }
                ]
            },
        )

    async def request(self, name: str, what: str) -> None:
        """`stateRequest` or `factsheetRequest` now."""
        vehicle = self.vehicle(name)
        if what not in ("stateRequest", "factsheetRequest"):
            raise Invalid("request is stateRequest or factsheetRequest", {"field": "action"})
        await self._instant(vehicle, what, f"{what}-{time.time_ns()}", False)

    async def _publish(self, vehicle: Vehicle, topic: str, body: dict[str, Any]) -> None:
        message = {**vehicle.headers.header(topic), **body}
        found = problems(topic, message)
        if found:
            self.messages.labels("out", topic, "invalid", self.replica).inc()
            await self.bus.emit(
                "vda5050.invalid",
                f"robot/{vehicle.robot}",
                f"corral did not send a {topic} to {vehicle.robot}: {'; '.join(found)}",
                {"topic": topic, "problems": found, "direction": "out"},
            )
            raise Invalid(f"{topic} message against the VDA 5050 schema: {found[0]}")
        qos, retain = TOPICS[topic]
        await self.mqtt.publish(
            self.topics.of(vehicle.manufacturer, vehicle.serial, topic),
            json.dumps(message).encode(),
            retain=retain,
            qos=qos,
        )
        self.messages.labels("out", topic, "ok", self.replica).inc()
        self.counts.sent += 1

    async def _mission_ended(self, mission: MissionRow) -> None:
        vehicle = self.by_robot.get(mission.robot)
        if vehicle is None or mission.state == "done":
            return
        vehicle.plan = None
        with contextlib.suppress(Unreachable, Invalid):
            await self._instant(vehicle, "cancelOrder", f"cancel-{mission.id}", True)

    # ------------------------------------------------------------------ vehicle -> corral
    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """One message off the broker (mqtt_feed calls this as it reads it, on the loop).
        A visualization is kept as the vehicle's latest (one superseded before it was read
        is counted, `outcome="superseded"`) and read on the next beat; anything else is
        decoded and checked here, then handled in order by the vehicle's own task."""
        route = self._routes.get(topic)
        if route is None:
            parsed = self.topics.parse(topic)
            if parsed is None:
                return
            if len(self._routes) >= ROUTES_KEPT:  # many unknown senders: start afresh
                self._routes.clear()
            route = self._routes[topic] = ((parsed[0], parsed[1]), parsed[2])
        identity, name = route
        vehicle = self.by_identity.get(identity)
        if vehicle is None:
            if not self.fleet.leads():  # a follower's share: perhaps registered since it read
                self._learn(identity)
                return
            self._unknown(identity, name, payload, retained)
            return
        if name == "visualization":
            latest = self._latest
            if identity in latest:
                self._superseded += 1
            latest[identity] = payload
            if self._beat is None:
                self._beat = asyncio.get_running_loop().call_later(BEAT, self._read_latest)
            return
        message, found = decode(name, payload)
        if message is not None and not found and _sender(message) != identity:
            found = ["manufacturer/serialNumber differ from the topic's"]
        if message is None or found:
            self._counted[name, "invalid"].inc()
        else:
            self._counted[name, "ok"].inc()
            self.counts.received += 1
            if name == "state":  # heard now, even while its earlier messages are handled
                self.counts.telemetry += 1
                self.fleet.links.get(vehicle.robot).heard()
        # The rest may wait on the store: each vehicle's own task handles its messages in
        # order, so one vehicle's slow step holds up no other (nor the broker's feed).
        self._queue(vehicle, Inbound(name, message, found, retained))

    def _queue(self, vehicle: Vehicle, item: Inbound) -> None:
        vehicle.inbox.put_nowait(item)
        if vehicle.worker is None or vehicle.worker.done():
            vehicle.worker = asyncio.create_task(self._work(vehicle))

    def _read_latest(self) -> None:
        """The beat: each vehicle's latest visualization, decoded, checked and shown."""
        self._beat = None
        latest, self._latest = self._latest, {}
        ok = 0
        by_identity = self.by_identity
        peers = None if self.fleet.leads() else self.fleet.peers  # a follower tells the leader
        for identity, payload in latest.items():
            vehicle = by_identity.get(identity)
            if vehicle is None:
                continue  # removed meanwhile
            message, found = decode("visualization", payload)
            if message is not None and not found and _sender(message) != identity:
                found = ["manufacturer/serialNumber differ from the topic's"]
            if message is None or found:
                self._counted["visualization", "invalid"].inc()
                self._queue(vehicle, Inbound("visualization", message, found, False))
                continue
            ok += 1
            position = message.get("agvPosition")
            if position is not None:  # a position for people: nothing waits on it
                link = self.fleet.links.get(vehicle.robot)
                link.telemetry = {**link.telemetry, "position": position}
                if peers is not None:
                    peers.vehicle_position(vehicle.robot, position)
        if ok:
            self._counted["visualization", "ok"].inc(ok)
            self.counts.received += ok
            self.counts.telemetry += ok
        if self._superseded:
            self._counted["visualization", "superseded"].inc(self._superseded)
            self._superseded = 0

    def _learn(self, identity: tuple[str, str]) -> None:
        """On a follower: a vehicle its share brought that it does not know is looked up in
        the store (registered through the leader since this replica read them), at most
        once every LEARN_S per vehicle; never admitted here (that is the leader's)."""
        now = time.monotonic()
        if now - self._looked_up.get(identity, -LEARN_S) < LEARN_S:
            return
        if len(self._looked_up) >= ROUTES_KEPT:
            self._looked_up.clear()
        self._looked_up[identity] = now
        self._spawn(self._read_vehicle(identity))

    async def _read_vehicle(self, identity: tuple[str, str]) -> None:
        row = await self.store.find(*identity)
        if row is None or identity in self.by_identity:
            return
        with contextlib.suppress(CorralError):
            await self.fleet.known(row.robot)  # its robot, read if this replica lacks it
            self._add(row)

    def _unknown(
        self, identity: tuple[str, str], name: str, payload: bytes, retained: bool
    ) -> None:
        """A message of a vehicle that is not registered: admitted (a valid ONLINE, with
        an admission map), else counted, and said once as an event."""
        manufacturer, serial = identity
        waiting = self._admitting.get(identity)
        if waiting is not None:  # its admission is under way: its messages wait for it
            if len(waiting) < ADMISSION_BACKLOG:
                waiting.append((name, payload, retained))
            return
        if name == "connection" and self.admit_map is not None:
            message, found = decode("connection", payload)
            if message is not None and not found and message["connectionState"] == "ONLINE":
                self._admitting[identity] = [(name, payload, retained)]
                self._spawn(self._admit(manufacturer, serial))
                return
        self._counted[name, "unknown"].inc()
        if identity not in self._unknown_said:
            self._unknown_said.add(identity)
            self._spawn(
                self.bus.emit(
                    "vda5050.unknown",
                    f"vda5050/{manufacturer}/{serial}",
                    f"VDA 5050 vehicle {manufacturer}/{serial} is not registered: its messages "
                    "are ignored (register it as a robot)",
                    {"manufacturer": manufacturer, "serial_number": serial, "topic": name},
                )
            )

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _work(self, vehicle: Vehicle) -> None:
        while True:
            item = await vehicle.inbox.get()
            try:
                await self._handle(vehicle, item)
            except CorralError as exc:
                await self.bus.emit(
                    "vda5050.refused",
                    f"robot/{vehicle.robot}",
                    f"{item.topic} of {vehicle.robot}: {exc.message}",
                    {"topic": item.topic},
                )
            except Exception as exc:  # a store or broker fault: logged, the next goes on
                log.error("vda5050 message failed", robot=vehicle.robot, error=repr(exc))

    async def _handle(self, vehicle: Vehicle, item: Inbound) -> None:
        name, message = item.topic, item.message
        if message is None or item.problems:
            await self.bus.emit(
                "vda5050.invalid",
                f"robot/{vehicle.robot}",
                f"refused a {name} message from {vehicle.robot}: {'; '.join(item.problems)}",
                {"topic": name, "problems": item.problems, "direction": "in"},
            )
        elif name == "state":
            await self._state(vehicle, message)
        elif name == "connection":
            await self._connection(vehicle, message, item.retained)
        elif name == "factsheet":
            vehicle.factsheet = message

    async def _admit(self, manufacturer: str, serial: str) -> None:
        """The admission policy: an unknown vehicle saying ONLINE (in a valid message)
        becomes robot MANUFACTURER-SERIAL on `admit_map`; its first state places it. What
        it sent meanwhile is handled once it is registered (or refused with it)."""
        identity = (manufacturer, serial)
        name = re.sub(r"[^a-z0-9_.-]+", "-", f"{manufacturer}-{serial}".lower())[:63].strip("-._")
        try:
            if re.fullmatch(NAME_PATTERN, name) and name not in self.fleet.robots:
                await self.register(
                    name, manufacturer, serial, "", 0, self.admit_map, None, ADMISSION
                )
        except CorralError as exc:
            await self.bus.emit(
                "vda5050.unknown",
                f"vda5050/{manufacturer}/{serial}",
                f"VDA 5050 vehicle {manufacturer}/{serial} not admitted: {exc.message}",
                {"manufacturer": manufacturer, "serial_number": serial},
            )
        except Exception as exc:  # a store fault: its next ONLINE tries again
            log.error(
                "vda5050 admission failed", vehicle=f"{manufacturer}/{serial}", error=repr(exc)
            )
        finally:
            waiting = self._admitting.pop(identity, [])
        if identity not in self.by_identity:  # not admitted: what it sent is unknown
            for topic, _, _ in waiting:
                self._counted[topic, "unknown"].inc()
            if identity not in self._unknown_said:
                self._unknown_said.add(identity)
                await self.bus.emit(
                    "vda5050.unknown",
                    f"vda5050/{manufacturer}/{serial}",
                    f"VDA 5050 vehicle {manufacturer}/{serial} is not registered: its messages "
                    "are ignored (register it as a robot)",
                    {"manufacturer": manufacturer, "serial_number": serial, "topic": "connection"},
                )
            return
        topics = self.topics
        for topic, payload, retained in waiting:
            self.on_message(topics.of(manufacturer, serial, topic), payload, retained)

    async def _attach(self, vehicle: Vehicle) -> None:
        """Make the vehicle the robot's channel (again) and send what is still open."""
        link = self.fleet.links.get(vehicle.robot)
        if link.channel is vehicle:
            return
        self.fleet.links.attach(vehicle.robot, vehicle)
        for command in await self.fleet.pending(vehicle.robot):
            await self.fleet.links.push(vehicle.robot, command)

    async def _connection(self, vehicle: Vehicle, message: dict[str, Any], retained: bool) -> None:
        state = message["connectionState"]
        vehicle.connection = state
        if state == "ONLINE":
            await self.fleet.seen(vehicle.robot)
            if vehicle.state:  # else its first state attaches it, knowing its order
                await self._attach(vehicle)
            return
        self.fleet.links.detach(vehicle.robot, vehicle)
        link = self.fleet.links.get(vehicle.robot)
        if link.online and not retained:
            link.online = False
            await self.fleet.went_offline(
                vehicle.robot, f"is {state} (VDA 5050 connection)", {"connection": state}
            )

    async def _state(self, vehicle: Vehicle, state: dict[str, Any]) -> None:
        robot = vehicle.robot
        row = self.fleet.robot(robot)
        link = await self.fleet.seen(robot)
        vehicle.state = {
            "order_id": state["orderId"],
            "order_update_id": state["orderUpdateId"],
            "last_node": state["lastNodeId"],
            "last_node_seq": state["lastNodeSequenceId"],
            "driving": state["driving"],
            "paused": state.get("paused", False),
            "operating_mode": state["operatingMode"],
            "errors": state["errors"],
            "nodes_left": [n["nodeId"] for n in state["nodeStates"]],
            "released": [state["lastNodeId"]]
            + [n["nodeId"] for n in state["nodeStates"] if n["released"]],
            "base_end": _base_end(state),
            "e_stop": state["safetyState"]["eStop"],
        }
        battery = state["batteryState"]["batteryCharge"]
        position = state.get("agvPosition", link.telemetry.get("position"))
        link.telemetry = {
            **({"position": position} if position is not None else {}),
            "marker": state["lastNodeId"] or None,
            "battery": max(0.0, min(100.0, float(battery))),
            "status": f"vda5050 {state['operatingMode']}"
            + (" driving" if state["driving"] else "")
            + (" paused" if state.get("paused") else ""),
            "vda5050": vehicle.state,
            "at": time.time(),
        }
        if vehicle.connection != "CONNECTIONBROKEN":
            # open commands go now that its order is known (after a corral restart, the
            # next update follows the orderUpdateId it reports)
            await self._attach(vehicle)
        await self._actions(vehicle, state["actionStates"])
        last = state["lastNodeId"]
        if last and last != vehicle.last_node and row.map is not None:
            vehicle.last_node = last
            position = self.fleet.dispatch.position(robot, row.map)
            if position is None:
                await self.fleet.dispatch.place(robot, row.map, last)
            elif position != last:
                # reaching (or passing) a node frees what is behind it
                await self.fleet.checkpoint(robot, {"marker": last})
        if row.map is not None and _idle(state):
            await self._lost_order(vehicle, row.map, state)

    async def _lost_order(self, vehicle: Vehicle, map_name: str, state: dict[str, Any]) -> None:
        """A vehicle that stands idle on its position with another order than the one
        corral gave it (it restarted and lost it) gets its granted stretch again, as a new
        order; one with an older update of it (the last update was lost) gets that update
        again. At most once every 2 s, while its state catches up."""
        robot = vehicle.robot
        mission = self.fleet.dispatch.active.get(robot)
        granted = self.fleet.dispatch.granted(robot, map_name)
        position = self.fleet.dispatch.position(robot, map_name)
        plan = vehicle.plan
        if mission is None or granted is None or plan is None or position is None:
            return
        if state["lastNodeId"] != position or time.monotonic() - vehicle.resent_at < 2.0:
            return
        if state["orderId"] == plan.order_id:
            if state["orderUpdateId"] < plan.update_id and vehicle.last_order is not None:
                # the update went out at QoS 0 and was lost (a broker restart): again
                vehicle.resent_at = time.monotonic()
                await self._publish(vehicle, "order", vehicle.last_order)
                await self.bus.emit(
                    "vda5050.order_resent",
                    f"robot/{robot}",
                    f"{robot} reports update {state['orderUpdateId']} of {plan.order_id}, not "
                    f"{plan.update_id}: the update sent again",
                    {"order_id": plan.order_id, "order_update_id": plan.update_id},
                )
            return
        vehicle.resent_at = time.monotonic()
        vehicle.resends += 1
        vehicle.plan = OrderPlan(f"corral-mission-{mission.id}-{vehicle.resends}")
        await self._order(vehicle, {"lane": [position, granted], "mission": mission.id})
        await self.bus.emit(
            "vda5050.order_resent",
            f"robot/{robot}",
            f"{robot} reports order {state['orderId'] or 'none'}, not {plan.order_id}: its "
            f"granted stretch {position} > {granted} sent again as a new order",
            {"order_id": vehicle.plan.order_id},
        )

    async def _actions(self, vehicle: Vehicle, states: list[dict[str, Any]]) -> None:
        mission = self.fleet.dispatch.active.get(vehicle.robot)
        if mission is not None and mission.actions:
            reported = {a["actionId"]: a["actionStatus"] for a in states}
            await self.fleet.dispatch.action_states(vehicle.robot, reported)
        for action in states:
            action_id, status = action["actionId"], action["actionStatus"]
            what = vehicle.watched.get(action_id)
            if what is None or status not in ("FINISHED", "FAILED"):
                continue
            del vehicle.watched[action_id]  # its end is announced once
            await self.bus.emit(
                f"vda5050.{what}",
                f"robot/{vehicle.robot}",
                f"{vehicle.robot}: {what} {status.lower()}",
                {"action_id": action_id, "status": status},
            )


def _vda_action(action: dict[str, Any]) -> dict[str, Any]:
    """A mission's action as a VDA 5050 node action."""
    return {
        "actionType": action["type"],
        "actionId": action["id"],
        "blockingType": action["blocking"],
        "actionParameters": [{"key": k, "value": v} for k, v in action["parameters"].items()],
    }


def _base_end(state: dict[str, Any]) -> tuple[str, int]:
    """The last released node of the vehicle's order (its last node when none is left)."""
    released = [n for n in state["nodeStates"] if n["released"]]
    if released:
        return released[-1]["nodeId"], released[-1]["sequenceId"]
    return state["lastNodeId"], state["lastNodeSequenceId"]


def _idle(state: dict[str, Any]) -> bool:
    """Standing, with nothing released left to drive."""
    return not state["driving"] and not any(n["released"] for n in state["nodeStates"])


def _sender(message: dict[str, Any]) -> tuple[str, str]:
    return message["manufacturer"], message["serialNumber"]
