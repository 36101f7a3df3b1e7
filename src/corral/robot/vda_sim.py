"""A VDA 5050 (2.x) vehicle simulator written from the standard alone: it connects with a
last will, drives the released part of its orders edge by edge at a set speed, accepts
order updates that stitch on its last base node, publishes state and visualization, and
honours the instant actions startPause (pause), stopPause (resume), cancelOrder,
stateRequest and factsheetRequest, and runs the node actions pick and drop where its order
puts them (WAITING until the node, then INITIALIZING, RUNNING, FINISHED or FAILED).

It shares nothing with corral's fleet code: only the standard's JSON schemas (shipped with
corral), jsonschema and the standard library. `corral sim vda N` runs a fleet of them.

Each vehicle has its own MQTT connection (3.1.1: its own client id, credentials and last
will), spoken here directly over an asyncio transport, so that a publish is one write of a
frame whose topic and constant parts are built once. All the vehicles of a process move and
report from one loop (`SimFleet`: one tick for all, not a timer or task per vehicle);
`VehicleProcesses` spreads a fleet over several processes.
"""

import asyncio
import contextlib
import heapq
import json
import math
import multiprocessing as mp
import os
import random
import signal
import ssl
import struct
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).resolve().parents[1] / "fleet" / "vda5050" / "schemas"
VERSION = "2.1.0"
TICK = 0.05  # seconds between two steps of the motion
MAX_STEP = 0.25  # a late tick moves a vehicle at most this many seconds' worth
NODE_ACTIONS = ("pick", "drop")  # what it can do at a node (6.8.2)
ENDED = ("FINISHED", "FAILED")
KEEPALIVE = 5  # seconds (MQTT keep alive)
GAP = 0.005  # the loop's shortest sleep: beats due within it go out together
BACKLOG = 256 * 1024  # bytes unsent on a connection above which QoS 0 reports are dropped
VEHICLES_PER_PROCESS = 500  # the default spread of `corral sim vda` (at most one per core)


@cache
def _schema(topic: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / f"{topic}.schema").read_text()))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ----------------------------------------------------------------------------- MQTT 3.1.1


def _length(n: int) -> bytes:
    """MQTT's remaining length: 7 bits a byte, low first (2.2.3)."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def connect_packet(
    client_id: str,
    will_topic: str,
    will: bytes,
    username: str | None,
    password: str | None,
    keepalive: int = KEEPALIVE,
) -> bytes:
    """CONNECT with a clean session and a retained QoS 1 last will (3.1)."""
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retain
    payload = _string(client_id) + _string(will_topic) + _string(will)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    body = _string("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive) + payload
    return b"\x10" + _length(len(body)) + body


def publish_packet(
    topic: bytes, payload: bytes, qos: int = 0, retain: bool = False, packet_id: int = 0
) -> bytes:
    """PUBLISH (3.3); `topic` is the topic already prefixed with its length."""
    ident = struct.pack("!H", packet_id) if qos else b""
    first = 0x30 | (qos << 1) | int(retain)
    return (
        bytes((first,)) + _length(len(topic) + len(ident) + len(payload)) + topic + ident + payload
    )


class MqttRefused(ConnectionError):
    """The broker answered CONNECT with a refusal (bad credentials, not authorised)."""


CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class _Link(asyncio.Protocol):
    """One vehicle's connection: CONNECT on connect, then PUBLISH both ways, PUBACK, PINGREQ;
    it hands the vehicle the orders and instant actions it receives."""

    def __init__(self, vehicle: "SimVehicle", hello: bytes) -> None:
        self.vehicle = vehicle
        self.hello = hello
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks: dict[int, asyncio.Future[None]] = {}
        self.next_id = 0
        self.pinged: float | None = None  # when a PINGREQ went without its PINGRESP yet
        self.last_ping = asyncio.get_running_loop().time()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.hello)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.accepted.done():
            self.accepted.set_exception(exc or ConnectionError("closed before CONNACK"))
        for ack in self.acks.values():
            if not ack.done():
                ack.set_exception(ConnectionError("connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)
        self.vehicle._lost(self)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= 2:
            length, shift, at = 0, 0, 1
            while True:  # the remaining length
                if at >= len(buffer):
                    return
                digit = buffer[at]
                length |= (digit & 0x7F) << shift
                shift, at = shift + 7, at + 1
                if not digit & 0x80:
                    break
                if shift > 21:
                    self.abort()
                    return
            if len(buffer) < at + length:
                return
            kind, body = buffer[0], bytes(buffer[at : at + length])
            del buffer[: at + length]
            self._packet(kind, body)
            if self.transport is None:
                return

    # -- packets
    def _packet(self, kind: int, body: bytes) -> None:
        kind_of = kind >> 4
        if kind_of == 3:  # PUBLISH
            qos = (kind >> 1) & 0x03
            (size,) = struct.unpack_from("!H", body)
            topic = body[2 : 2 + size].decode(errors="replace")
            at = 2 + size
            if qos:
                (packet_id,) = struct.unpack_from("!H", body, at)
                at += 2
                self._write(bytes((0x40 if qos == 1 else 0x50, 2)) + struct.pack("!H", packet_id))
            self.vehicle._received(topic.rsplit("/", 1)[-1], body[at:])
        elif kind_of == 2:  # CONNACK
            code = body[1] if len(body) > 1 else 255
            if code:
                reason = CONNACK_CODES.get(code, f"code {code}")
                if not self.accepted.done():
                    self.accepted.set_exception(MqttRefused(f"the broker refused: {reason}"))
                self.abort()
            elif not self.accepted.done():
                self.accepted.set_result(None)
        elif kind_of == 4:  # PUBACK
            (packet_id,) = struct.unpack_from("!H", body)
            ack = self.acks.pop(packet_id, None)
            if ack is not None and not ack.done():
                ack.set_result(None)
        elif kind_of == 13:  # PINGRESP
            self.pinged = None
        # SUBACK and anything else: nothing to do

    def _write(self, frame: bytes) -> None:
        if self.transport is not None:
            self.transport.write(frame)

    def subscribe(self, topics: list[bytes]) -> None:
        body = struct.pack("!H", self._packet_id()) + b"".join(t + b"\x00" for t in topics)
        self._write(b"\x82" + _length(len(body)) + body)

    def publish(
        self, topic: bytes, payload: bytes, qos: int = 0, retain: bool = False
    ) -> asyncio.Future[None] | None:
        """Send; for QoS 1, the future of its PUBACK. QoS 0 reports are dropped while the
        connection has more than BACKLOG bytes unsent (as a vehicle's radio would)."""
        transport = self.transport
        if transport is None:
            return None
        if not qos:
            if transport.get_write_buffer_size() > BACKLOG:
                return None
            transport.write(publish_packet(topic, payload, 0, retain))
            return None
        packet_id = self._packet_id()
        ack = asyncio.get_running_loop().create_future()
        self.acks[packet_id] = ack
        transport.write(publish_packet(topic, payload, qos, retain, packet_id))
        return ack

    def _packet_id(self) -> int:
        self.next_id = self.next_id % 0xFFFF + 1
        return self.next_id

    def keep_alive(self, now: float) -> None:
        """A PINGREQ every KEEPALIVE seconds; no PINGRESP within KEEPALIVE: the broker is
        gone, the connection is dropped (and made again)."""
        if self.pinged is not None and now - self.pinged > KEEPALIVE:
            self.abort()
        elif now - self.last_ping >= KEEPALIVE:
            self.last_ping = now
            if self.pinged is None:
                self.pinged = now
            self._write(b"\xc0\x00")

    def disconnect(self) -> None:
        """DISCONNECT: a graceful end, the broker drops the last will (3.14)."""
        if self.transport is not None:
            self.transport.write(b"\xe0\x00")
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


# ----------------------------------------------------------------------------- a vehicle


@dataclass(eq=False)  # a vehicle is itself: hashed by identity
class SimVehicle:
    url: str
    manufacturer: str
    serial: str
    start_node: str
    speed: float = 1.0  # metres per second along an edge
    interface: str = "uagv"
    major: str = "v2"
    state_every: float = 1.0  # seconds between two periodic states (and on every event)
    visualization_every: float = 0.1
    operating_mode: str = "AUTOMATIC"  # as its operator set it (6.10.6)
    action_seconds: float = 1.0  # how long a pick or drop takes (initializing, then running)
    position: tuple[float, float] | None = None  # where it stands, if it knows
    map_id: str = ""
    username: str | None = None  # broker credentials; None: those of `url`, if any
    password: str | None = None
    # order state
    order_id: str = ""
    order_update_id: int = 0
    last_node: str = ""
    last_seq: int = 0
    nodes: list[dict[str, Any]] = field(default_factory=list)  # not yet reached
    edges: list[dict[str, Any]] = field(default_factory=list)  # not yet traversed
    paused: bool = False
    driving: bool = False
    cancelling: str | None = None  # the cancelOrder actionId until it stops at a node
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    loads: list[dict[str, Any]] = field(default_factory=list)  # what it carries
    headers: dict[str, int] = field(default_factory=dict)  # topic -> messages sent
    reached: list[str] = field(default_factory=list)  # every node reached, in order
    travelled: float = 0.0  # metres along an edge whose end has no nodePosition (1 m long)
    link_error: str = ""  # why the last connection attempt failed, if it did
    # run time, set by the fleet that runs it
    _link: _Link | None = field(default=None, repr=False, compare=False)
    _fleet: "SimFleet | None" = field(default=None, repr=False, compare=False)
    _stepped_at: float = 0.0
    _acting: list[dict[str, Any]] = field(default_factory=list)  # node actions left here
    _phase_end: float = 0.0
    _topics: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)
    _visual: tuple[str, str] = ("", "")  # (map_id, the visualization's format for it)

    def __post_init__(self) -> None:
        self.last_node = self.start_node

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to another process) without what it runs on."""
        return {**self.__dict__, "_link": None, "_fleet": None}

    def topic(self, name: str) -> str:
        return f"{self.interface}/{self.major}/{self.manufacturer}/{self.serial}/{name}"

    def _topic(self, name: str) -> bytes:
        """The topic as a PUBLISH carries it (length first), built once."""
        framed = self._topics.get(name)
        if framed is None:
            framed = self._topics[name] = _string(self.topic(name))
        return framed

    def _header(self, topic: str) -> dict[str, Any]:
        header_id = self.headers.get(topic, 0)
        self.headers[topic] = header_id + 1
        return {
            "headerId": header_id,
            "timestamp": _now(),
            "version": VERSION,
            "manufacturer": self.manufacturer,
            "serialNumber": self.serial,
        }

    # ------------------------------------------------------------------ the connection
    async def run(self, stop: asyncio.Event) -> None:
        """Run this vehicle alone (a fleet of one) until `stop`: connect with its last will
        (CONNECTIONBROKEN, retained, QoS 1), say ONLINE, serve, then say OFFLINE and
        disconnect. Reconnects after a lost connection; while it is away it drives on to
        the end of its base (6.2)."""
        await SimFleet([self]).run(stop)

    def _hello(self) -> tuple[str, int, bytes, ssl.SSLContext | None]:
        """Where to connect and the CONNECT to send there (with a fresh last will)."""
        parts = urlsplit(self.url)
        secure = parts.scheme in ("mqtts", "ssl", "tls")
        username = self.username
        password = self.password
        if username is None and parts.username is not None:
            username = unquote(parts.username)
            password = unquote(parts.password) if parts.password is not None else None
        will = {**self._header("connection"), "connectionState": "CONNECTIONBROKEN"}
        hello = connect_packet(
            f"{self.manufacturer}-{self.serial}",
            self.topic("connection"),
            json.dumps(will).encode(),
            username,
            password,
        )
        context = ssl.create_default_context() if secure else None
        return (
            parts.hostname or "127.0.0.1",
            parts.port or (8883 if secure else 1883),
            hello,
            context,
        )

    def _up(self, link: _Link) -> None:
        """Accepted by the broker: subscribe, say ONLINE, report."""
        self._link = link
        self.link_error = ""
        link.subscribe([self._topic("order"), self._topic("instantActions")])
        self._connection("ONLINE")
        self.publish_state()

    def _lost(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
            if self._fleet is not None:
                self._fleet.down(self)

    def _publish(
        self, name: str, body: dict[str, Any], qos: int = 0, retain: bool = False
    ) -> asyncio.Future[None] | None:
        link = self._link
        if link is None:
            return None
        message = {**self._header(name), **body}
        return link.publish(self._topic(name), json.dumps(message).encode(), qos, retain)

    def _connection(self, state: str) -> asyncio.Future[None] | None:
        return self._publish("connection", {"connectionState": state}, qos=1, retain=True)

    def _received(self, name: str, payload: bytes) -> None:
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            self._error("validationError", f"{name}: not JSON")
            self.publish_state()
            return
        found = list(_schema(name).iter_errors(body)) if name in ("order", "instantActions") else []
        if found or not isinstance(body, dict):
            self._error(
                "validationError", f"{name}: {found[0].message if found else 'not an object'}"
            )
        elif name == "order":
            self._order(body)
        elif name == "instantActions":
            self._instant(body["actions"])
        self.publish_state()

    # ------------------------------------------------------------------ orders (6.6)
    def _error(self, kind: str, description: str, **references: str) -> None:
        error: dict[str, Any] = {
            "errorType": kind,
            "errorLevel": "WARNING",
            "errorDescription": description[:200],
        }
        if references:
            error["errorReferences"] = [
                {"referenceKey": k, "referenceValue": v} for k, v in references.items()
            ]
        self.errors.append(error)
        del self.errors[:-10]

    def _busy(self) -> bool:
        """Still executing an order or waiting for its update (6.6.2, step 3): nodes left
        (base or horizon) or an action neither FINISHED nor FAILED."""
        return bool(self.nodes) or any(
            a["actionStatus"] not in ENDED for a in self.actions.values()
        )

    def _base_end(self) -> tuple[str, int]:
        released = [n for n in self.nodes if n["released"]]
        if released:
            return released[-1]["nodeId"], released[-1]["sequenceId"]
        return self.last_node, self.last_seq

    def _order(self, order: dict[str, Any]) -> None:
        malformed = _malformed(order["nodes"], order["edges"])
        if malformed:
            self._error("validationError", malformed, orderId=order["orderId"])
            return
        for item in [*order["nodes"], *order["edges"]]:
            for action in item["actions"]:  # pick and drop at nodes, nothing more (6.6.4.2)
                if item in order["edges"] or action["actionType"] not in NODE_ACTIONS:
                    self._error(
                        "orderError",
                        f"action {action['actionType']} is not supported"
                        + (" on an edge" if item in order["edges"] else ""),
                        actionId=action["actionId"],
                    )
                    return
        first = order["nodes"][0]
        if order["orderId"] != self.order_id:
            if self._busy():
                self._error(
                    "orderError",
                    f"order {order['orderId']} while {self.order_id} runs",
                    orderId=order["orderId"],
                )
                return
            if first["nodeId"] != self.last_node:
                self._error(
                    "noRouteError",
                    f"order starts at {first['nodeId']}, not here",
                    nodeId=first["nodeId"],
                )
                return
            self.order_id, self.order_update_id = order["orderId"], order["orderUpdateId"]
            self.last_seq = first["sequenceId"]
            self._place(first)
            self.nodes, self.edges = list(order["nodes"][1:]), list(order["edges"])
            self.errors = []
            self._waiting(order["nodes"])
            self._wake()
            return
        if order["orderUpdateId"] < self.order_update_id:
            self._error("orderUpdateError", f"update {order['orderUpdateId']} is older")
            return
        if order["orderUpdateId"] == self.order_update_id:
            return  # the same update again: discarded
        if (first["nodeId"], first["sequenceId"]) != self._base_end():
            self._error(
                "orderUpdateError", f"update does not start at the base end {self._base_end()}"
            )
            return
        self.order_update_id = order["orderUpdateId"]
        self.nodes = [n for n in self.nodes if n["released"]] + list(order["nodes"][1:])
        self.edges = [e for e in self.edges if e["released"]] + list(order["edges"])
        self._waiting(order["nodes"])
        self._wake()

    def _waiting(self, nodes: list[dict[str, Any]]) -> None:
        """Each node action of an accepted order is WAITING until its node (6.11)."""
        for node in nodes:
            for action in node["actions"]:
                self.actions.setdefault(
                    action["actionId"],
                    {
                        "actionId": action["actionId"],
                        "actionType": action["actionType"],
                        "actionStatus": "WAITING",
                    },
                )

    def _place(self, node: dict[str, Any]) -> None:
        where = node.get("nodePosition")
        if where is not None:
            self.position, self.map_id = (where["x"], where["y"]), where["mapId"]

    # ------------------------------------------------------------------ motion
    def _wake(self) -> None:
        """Something to do (an order, an update, a resume): on the fleet's tick from now,
        and a first step at once (as if a tick had just passed)."""
        fleet = self._fleet
        if fleet is not None and self not in fleet.active:
            now = fleet.time()
            self._stepped_at = now - TICK
            fleet.active.add(self)
            if not self._step(now):
                fleet.active.discard(self)

    def _can_drive(self) -> bool:
        return (
            not self.paused
            and bool(self.nodes)
            and bool(self.edges)
            and self.nodes[0]["released"]
            and self.edges[0]["released"]
        )

    def _step(self, now: float) -> bool:
        """One step: along the released edge it is on at `speed` (stopping where the base
        ends), or of the node action it is doing. False: nothing left to do until woken."""
        elapsed = min(now - self._stepped_at, MAX_STEP)
        self._stepped_at = now
        if self._acting:
            self._act(now)
            return True
        if not self._can_drive():
            self.driving = False
            return False
        target = self.nodes[0]
        where = target.get("nodePosition")
        self.driving = True
        step = self.speed * elapsed
        if where is None or self.position is None:
            self.travelled += step
            if self.travelled < 1.0:
                return True
            self.travelled = 0.0
        else:
            x, y = self.position
            dx, dy = where["x"] - x, where["y"] - y
            distance = math.hypot(dx, dy)
            if distance > step:
                self.position = (x + dx / distance * step, y + dy / distance * step)
                return True
        self._arrive(target, now)
        return True

    def _arrive(self, target: dict[str, Any], now: float) -> None:
        self._place(target)
        self.nodes.pop(0)
        self.edges.pop(0)
        self.last_node, self.last_seq = target["nodeId"], target["sequenceId"]
        self.reached.append(target["nodeId"])
        if self.cancelling is not None:
            self._cancelled()
        elif target["actions"]:
            self.driving = False  # it stands for its actions
            self._acting = list(target["actions"])
            self._next_action(now)
        if not self.nodes:
            self.driving = False
        self.publish_state()

    # ------------------------------------------------------------------ node actions
    def _next_action(self, now: float) -> bool:
        """Begin the next node action still WAITING here (INITIALIZING); False: none left."""
        while self._acting:
            state = self.actions.get(self._acting[0]["actionId"])
            if state is not None and state["actionStatus"] == "WAITING":
                state["actionStatus"] = "INITIALIZING"
                self._phase_end = now + self.action_seconds * 0.3
                return True
            self._acting.pop(0)  # cancelled, or run already
        return False

    def _act(self, now: float) -> None:
        """The node actions of the node it reached, one after another, standing (a pick or a
        drop blocks driving): INITIALIZING, RUNNING, then FINISHED, or FAILED with an error
        (a drop with nothing loaded, a pick with a load on board). A state at each change."""
        if now < self._phase_end:
            return
        action = self._acting[0]
        state = self.actions.get(action["actionId"])
        if state is not None and state["actionStatus"] == "INITIALIZING":
            state["actionStatus"] = "RUNNING"
            self._phase_end = now + self.action_seconds * 0.7
        elif state is not None and state["actionStatus"] == "RUNNING":
            self._acted(action, state)
            self._acting.pop(0)
            self._next_action(now)
        else:  # cancelled meanwhile
            self._acting.pop(0)
            self._next_action(now)
        self.publish_state()

    def _acted(self, action: dict[str, Any], state: dict[str, Any]) -> None:
        kind = action["actionType"]
        params = {p["key"]: p["value"] for p in action.get("actionParameters", [])}
        if kind == "pick" and self.loads:
            self._error("pickError", "a load is on board already", actionId=state["actionId"])
            state["actionStatus"] = "FAILED"
        elif kind == "drop" and not self.loads:
            self._error("dropError", "there is no load to drop", actionId=state["actionId"])
            state["actionStatus"] = "FAILED"
        else:
            if kind == "pick":
                load = {"loadType": str(params.get("loadType", ""))}
                if "loadId" in params:
                    load["loadId"] = str(params["loadId"])
                self.loads.append(load)
            else:
                self.loads.clear()
            state["actionStatus"] = "FINISHED"
            state["resultDescription"] = f"{kind} done"

    # ------------------------------------------------------------------ instant actions (6.8)
    def _instant(self, actions: list[dict[str, Any]]) -> None:
        for action in actions:
            kind, action_id = action["actionType"], action["actionId"]
            status = "FINISHED"
            if kind == "startPause":  # activates the pause mode (6.8.1)
                self.paused = True
                self.driving = False
            elif kind == "stopPause":  # deactivates it
                self.paused = False
                self._wake()
            elif kind == "cancelOrder":
                acting = any(
                    a["actionType"] in NODE_ACTIONS and a["actionStatus"] not in ENDED
                    for a in self.actions.values()
                )
                if not self.order_id or (not self.nodes and not self.driving and not acting):
                    self._error(
                        "noOrderToCancel", "there is no order to cancel", actionId=action_id
                    )
                    status = "FAILED"
                else:
                    status = "RUNNING"
                    self.cancelling = action_id
                    # finish the edge it is on (if any), then stop at that node
                    self.nodes = self.nodes[:1] if self.driving else []
                    self.edges = self.edges[:1] if self.driving else []
                    if not self.driving:
                        self.actions[action_id] = {
                            "actionId": action_id,
                            "actionType": kind,
                            "actionStatus": status,
                        }
                        self._cancelled()
                        continue
            elif kind == "factsheetRequest":
                self._publish("factsheet", self.factsheet(), retain=True)
            elif kind != "stateRequest":
                status = "FAILED"
                self._error(
                    "unsupportedAction",
                    f"instant action {kind} is not supported",
                    actionId=action_id,
                )
            self.actions[action_id] = {
                "actionId": action_id,
                "actionType": kind,
                "actionStatus": status,
            }

    def _cancelled(self) -> None:
        """The order is gone: its scheduled and running node actions FAILED (6.6.3)."""
        for state in self.actions.values():
            if state["actionType"] in NODE_ACTIONS and state["actionStatus"] not in ENDED:
                state["actionStatus"] = "FAILED"
        if self.cancelling is not None:
            self.actions[self.cancelling]["actionStatus"] = "FINISHED"
            self.cancelling = None
        self.nodes, self.edges, self.travelled = [], [], 0.0

    # ------------------------------------------------------------------ reports (6.10, 6.11)
    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "orderId": self.order_id,
            "orderUpdateId": self.order_update_id,
            "lastNodeId": self.last_node,
            "lastNodeSequenceId": self.last_seq,
            "driving": self.driving and not self.paused,
            "paused": self.paused,
            "operatingMode": self.operating_mode,
            "nodeStates": [
                {"nodeId": n["nodeId"], "sequenceId": n["sequenceId"], "released": n["released"]}
                for n in self.nodes
            ],
            "edgeStates": [
                {"edgeId": e["edgeId"], "sequenceId": e["sequenceId"], "released": e["released"]}
                for e in self.edges
            ],
            "actionStates": list(self.actions.values())[-20:],
            "loads": self.loads,
            "batteryState": {"batteryCharge": 80.0, "charging": False},
            "errors": self.errors,
            "safetyState": {"eStop": "NONE", "fieldViolation": False},
        }
        if self.position is not None:
            state["agvPosition"] = self._where()
        return state

    def _where(self) -> dict[str, Any]:
        x, y = self.position or (0.0, 0.0)
        return {"x": x, "y": y, "theta": 0.0, "mapId": self.map_id, "positionInitialized": True}

    def publish_state(self) -> None:
        self._publish("state", self.state())

    def _visualize(self, stamp: str) -> None:
        """A visualization (6.12): the constant parts of its JSON are formatted once."""
        link, where = self._link, self.position
        if link is None or where is None:
            return
        if self._visual[0] != self.map_id or not self._visual[1]:
            head = {"version": VERSION, "manufacturer": self.manufacturer}
            head["serialNumber"] = self.serial
            constant = json.dumps(head, separators=(",", ":"))[1:-1].replace("%", "%%")
            map_id = json.dumps(self.map_id).replace("%", "%%")
            self._visual = (
                self.map_id,
                '{"headerId":%d,"timestamp":"%s",' + constant + ',"agvPosition":{"x":%r,"y":%r,'
                '"theta":0.0,"mapId":' + map_id + ',"positionInitialized":true}}',
            )
        header_id = self.headers.get("visualization", 0)
        self.headers["visualization"] = header_id + 1
        payload = self._visual[1] % (header_id, stamp, float(where[0]), float(where[1]))
        link.publish(self._topic("visualization"), payload.encode())

    def factsheet(self) -> dict[str, Any]:
        return {
            "typeSpecification": {
                "seriesName": "simulated",
                "agvKinematic": "DIFF",
                "agvClass": "CARRIER",
                "maxLoadMass": 100.0,
                "localizationTypes": ["NATURAL"],
                "navigationTypes": ["AUTONOMOUS"],
            },
            "physicalParameters": {
                "speedMin": 0.0,
                "speedMax": self.speed,
                "accelerationMax": 1.0,
                "decelerationMax": 1.0,
                "heightMax": 0.5,
                "width": 0.5,
                "length": 0.8,
            },
            "protocolLimits": {
                "maxStringLens": {},
                "maxArrayLens": {},
                "timing": {"minOrderInterval": 0.1, "minStateInterval": 0.1},
            },
            "protocolFeatures": {"optionalParameters": [], "agvActions": []},
            "agvGeometry": {},
            "loadSpecification": {},
        }


# ----------------------------------------------------------------------------- a fleet


class SimFleet:
    """The vehicles of one process, driven by one loop: a step of motion for those moving
    every TICK, each vehicle's visualization (and every `state_every`, its state) on a beat
    of its own phase from one heap, reconnections and keep-alives; stop says OFFLINE."""

    def __init__(self, vehicles: list["SimVehicle"]) -> None:
        self.vehicles = vehicles
        self.active: set[SimVehicle] = set()  # moving or acting: stepped every TICK
        self._down: dict[SimVehicle, float] = {}  # not connected -> when to try again
        self._retry: dict[SimVehicle, float] = {}  # the back-off of each one failing
        self._connecting: set[asyncio.Task[None]] = set()
        self._beats: dict[SimVehicle, tuple[int, int, int]] = {}  # beats, states, per state
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def time(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def down(self, vehicle: "SimVehicle", after: float = 0.5) -> None:
        if not self._stopping:
            self._down[vehicle] = self.time() + after

    async def run(self, stop: asyncio.Event) -> None:
        loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        beats: list[tuple[float, int, SimVehicle]] = []
        for i, vehicle in enumerate(self.vehicles):
            vehicle._fleet = self
            vehicle._stepped_at = now
            self._down[vehicle] = now
            every = max(vehicle.visualization_every, 0.001)
            per_state = max(1, round(vehicle.state_every / every))
            self._beats[vehicle] = (0, 0, per_state)
            # a phase of its own: a fleet started at once does not report in bursts
            beats.append((now + random.uniform(0, every), i, vehicle))
            if vehicle._can_drive() or vehicle._acting:
                self.active.add(vehicle)
        heapq.heapify(beats)
        next_motion, next_house, next_ping = now + TICK, now, now + 1.0
        try:
            while not stop.is_set():
                now = loop.time()
                if now >= next_house:
                    self._reconnect(now)
                    next_house = now + 0.1
                    if now >= next_ping:
                        for vehicle in self.vehicles:
                            if vehicle._link is not None:
                                vehicle._link.keep_alive(now)
                        next_ping = now + 1.0
                if now >= next_motion:
                    for vehicle in list(self.active):
                        if not vehicle._step(now):
                            self.active.discard(vehicle)
                    next_motion += TICK
                    if next_motion < now:
                        next_motion = now + TICK
                if beats and beats[0][0] <= now:
                    stamp = _now()
                    while beats[0][0] <= now:
                        due, i, vehicle = beats[0]
                        self._beat(vehicle, stamp)
                        every = max(vehicle.visualization_every, 0.001)
                        due += every
                        if due <= now:  # late: skip the beats already missed
                            due += every * math.ceil((now - due) / every)
                        heapq.heapreplace(beats, (due, i, vehicle))
                wake = min(next_motion, next_house, beats[0][0] if beats else next_house)
                await asyncio.sleep(max(GAP, wake - loop.time()))
        finally:
            await self._shutdown()

    def _beat(self, vehicle: "SimVehicle", stamp: str) -> None:
        count, states, per_state = self._beats[vehicle]
        count += 1
        if vehicle._link is not None:
            vehicle._visualize(stamp)
            if count // per_state > states:
                states = count // per_state
                vehicle.publish_state()
        else:
            states = count // per_state
        self._beats[vehicle] = (count, states, per_state)

    def _reconnect(self, now: float) -> None:
        due = [v for v, at in self._down.items() if at <= now]
        for vehicle in due:
            del self._down[vehicle]
            task = asyncio.get_running_loop().create_task(self._connect(vehicle))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, vehicle: "SimVehicle") -> None:
        link: _Link | None = None
        try:
            host, port, hello, context = vehicle._hello()
            made = _Link(vehicle, hello)
            link = made
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(
                loop.create_connection(lambda: made, host, port, ssl=context), 10
            )
            await asyncio.wait_for(made.accepted, 10)
        except (OSError, TimeoutError, ValueError) as exc:
            vehicle.link_error = str(exc) or type(exc).__name__
            if link is not None:
                link.abort()
            after = self._retry.get(vehicle, 0.25) * 2
            self._retry[vehicle] = min(after, 5.0)
            self.down(vehicle, self._retry[vehicle])
            return
        self._retry.pop(vehicle, None)
        if self._stopping:
            link.disconnect()
            return
        vehicle._up(link)

    async def _shutdown(self) -> None:
        """OFFLINE from each one connected (QoS 1, waiting for the broker's PUBACKs up to
        2 s), then DISCONNECT: a graceful end, no last will."""
        self._stopping = True
        for task in list(self._connecting):
            task.cancel()
        acks: list[asyncio.Future[None] | None] = []
        try:
            if self._connecting:
                await asyncio.wait(list(self._connecting), timeout=2)
            acks = [vehicle._connection("OFFLINE") for vehicle in self.vehicles]
            waiting = [ack for ack in acks if ack is not None]
            if waiting:
                await asyncio.wait(waiting, timeout=2)
        finally:
            links = []
            for vehicle in self.vehicles:
                link, vehicle._link = vehicle._link, None
                vehicle._fleet = None
                vehicle.driving = False
                if link is not None:
                    link.disconnect()
                    links.append(link.closed)
            self.active.clear()
            if links:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait(links, timeout=2)
        for ack in acks:  # a PUBACK lost with its connection: nothing to retrieve
            if ack is not None and ack.done() and not ack.cancelled():
                ack.exception()


async def run_vehicles(vehicles: list[SimVehicle], stop: asyncio.Event) -> None:
    """Run `vehicles` in this process, from one loop, until `stop`."""
    await SimFleet(vehicles).run(stop)


def run_loop(main: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run, on uvloop where it is installed (cheaper sockets and timers)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is there off Windows
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


# ----------------------------------------------------------------------------- processes


def default_procs(n: int) -> int:
    """A process per VEHICLES_PER_PROCESS vehicles, at most one per core."""
    return max(1, min(os.cpu_count() or 1, math.ceil(n / VEHICLES_PER_PROCESS)))


class VehicleProcesses:
    """A fleet spread over `procs` processes (spawned), vehicle i in process i mod procs,
    each running its share from one loop. Asked, they say what they sent; stopped, they
    say OFFLINE and hand back their vehicles. If this process dies, they end at once
    without a word: the broker sends their last wills, as for a vehicle switched off."""

    def __init__(self, vehicles: list[SimVehicle], procs: int) -> None:
        procs = max(1, min(procs, len(vehicles)))
        self.shares = [vehicles[k::procs] for k in range(procs)]
        self.procs: list[Any] = []
        self.conns: list[Connection] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def start(self) -> "VehicleProcesses":
        ctx = mp.get_context("spawn")
        for share in self.shares:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_process_main, args=(share, theirs), daemon=False)
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(mine)
        for conn in self.conns:
            if conn.recv() != "started":
                raise RuntimeError("a vehicle process did not start")
        return self

    def sent(self) -> dict[str, int]:
        """The messages sent so far, by topic, over all the processes."""
        for conn in self.conns:
            conn.send("sent")
        total: dict[str, int] = {}
        for conn in self.conns:
            for topic, count in conn.recv().items():
                total[topic] = total.get(topic, 0) + count
        return total

    def stop(self, timeout: float = 30.0) -> list[SimVehicle]:
        """Stop them all (OFFLINE, DISCONNECT); the vehicles as they ended."""
        ended: list[SimVehicle] = []
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send("stop")
        for conn in self.conns:
            with contextlib.suppress(EOFError, OSError):
                if conn.poll(timeout):
                    ended += conn.recv()
        for proc in self.procs:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()
        return ended


def _process_main(vehicles: list[SimVehicle], conn: Connection) -> None:
    """A vehicle process: Ctrl-C is for its parent, which tells it to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_loop(_serve_process(vehicles, conn))


async def _serve_process(vehicles: list[SimVehicle], conn: Connection) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(run_vehicles(vehicles, stop))
    conn.send("started")
    while True:
        try:
            asked = await asyncio.to_thread(conn.recv)
        except (EOFError, OSError):
            os._exit(1)  # the parent is gone: so are its vehicles, and their last wills go
        if asked != "sent":
            break
        total: dict[str, int] = {}
        for vehicle in vehicles:
            for topic, count in vehicle.headers.items():
                total[topic] = total.get(topic, 0) + count
        conn.send(total)
    stop.set()
    await running
    conn.send(vehicles)


def _malformed(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> str:
    """What makes an order's graph invalid (6.6.1), or "": at least one node, one edge
    fewer than nodes, each edge joining the nodes either side of it, an edge released only
    with both its nodes, and nothing released after something that is not."""
    if not nodes or len(edges) != len(nodes) - 1:
        return f"{len(nodes)} nodes need {max(len(nodes) - 1, 0)} edges, not {len(edges)}"
    for before, edge, after in zip(nodes[:-1], edges, nodes[1:], strict=True):
        if (edge["startNodeId"], edge["endNodeId"]) != (before["nodeId"], after["nodeId"]):
            return f"edge {edge['edgeId']} does not join {before['nodeId']} and {after['nodeId']}"
        if edge["released"] and not (before["released"] and after["released"]):
            return f"edge {edge['edgeId']} is released, one of its nodes is not"
    flags = [nodes[0]["released"]]
    for edge, node in zip(edges, nodes[1:], strict=True):
        flags += [edge["released"], node["released"]]
    if flags != sorted(flags, reverse=True):
        return "a released node or edge follows one that is not"
    return ""
