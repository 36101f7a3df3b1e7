"""A VDA 5050 (2.x) vehicle simulator written from the standard alone: it connects with a
last will, drives the released part of its orders edge by edge at a set speed, accepts
order updates that stitch on its last base node, publishes state and visualization, and
honours the instant actions startPause (pause), stopPause (resume), cancelOrder,
stateRequest and factsheetRequest, and runs the node actions pick and drop where its order
puts them (WAITING until the node, then INITIALIZING, RUNNING, FINISHED or FAILED).

It shares nothing with corral's fleet code: only the standard's JSON schemas (shipped with
corral), aiomqtt and the standard library. `corral sim vda N` runs a fleet of them.
"""

import asyncio
import contextlib
import json
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).resolve().parents[1] / "fleet" / "vda5050" / "schemas"
VERSION = "2.1.0"
TICK = 0.05  # seconds between two steps of the motion
NODE_ACTIONS = ("pick", "drop")  # what it can do at a node (6.8.2)
ENDED = ("FINISHED", "FAILED")


@cache
def _schema(topic: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / f"{topic}.schema").read_text()))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
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
    headers: dict[str, int] = field(default_factory=dict)
    reached: list[str] = field(default_factory=list)  # every node reached, in order
    travelled: float = 0.0  # metres along an edge whose end has no nodePosition (1 m long)
    _client: aiomqtt.Client | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.last_node = self.start_node

    def topic(self, name: str) -> str:
        return f"{self.interface}/{self.major}/{self.manufacturer}/{self.serial}/{name}"

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
        """Connect (last will: CONNECTIONBROKEN, retained, QoS 1), say ONLINE, serve until
        `stop`, then say OFFLINE and disconnect. Reconnects after a lost connection; while
        it is away it drives on to the end of its base (6.2)."""
        driving = asyncio.create_task(self._drive())
        try:
            while not stop.is_set():
                try:
                    await self._serve(stop)
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.5)
        finally:
            driving.cancel()

    async def _serve(self, stop: asyncio.Event) -> None:
        parts = urlsplit(self.url)
        will = {**self._header("connection"), "connectionState": "CONNECTIONBROKEN"}
        async with aiomqtt.Client(
            hostname=parts.hostname or "127.0.0.1",
            port=parts.port or 1883,
            username=parts.username,
            password=parts.password,
            identifier=f"{self.manufacturer}-{self.serial}",
            keepalive=5,
            will=aiomqtt.Will(self.topic("connection"), json.dumps(will), qos=1, retain=True),
        ) as client:
            self._client = client
            await client.subscribe(self.topic("order"), qos=0)
            await client.subscribe(self.topic("instantActions"), qos=0)
            await self._connection("ONLINE")
            await self.publish_state()
            tasks = [
                asyncio.create_task(self._receive(client)),
                asyncio.create_task(self._report()),
            ]
            stopping = asyncio.create_task(stop.wait())
            try:
                done, _ = await asyncio.wait(
                    [*tasks, stopping], return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if task is not stopping:
                        task.result()  # a lost connection raises here
                await self._connection("OFFLINE")
            finally:
                for task in [*tasks, stopping]:
                    task.cancel()
                self._client = None

    async def _publish(
        self, name: str, body: dict[str, Any], qos: int = 0, retain: bool = False
    ) -> None:
        client = self._client
        if client is None:
            return
        message = {**self._header(name), **body}
        await client.publish(self.topic(name), json.dumps(message), qos=qos, retain=retain)

    async def _connection(self, state: str) -> None:
        await self._publish("connection", {"connectionState": state}, qos=1, retain=True)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            name = str(message.topic).rsplit("/", 1)[-1]
            try:
                body = json.loads(message.payload if isinstance(message.payload, bytes) else b"")
            except (UnicodeDecodeError, json.JSONDecodeError):
                self._error("validationError", f"{name}: not JSON")
                continue
            found = (
                list(_schema(name).iter_errors(body)) if name in ("order", "instantActions") else []
            )
            if found or not isinstance(body, dict):
                self._error(
                    "validationError", f"{name}: {found[0].message if found else 'not an object'}"
                )
            elif name == "order":
                self._order(body)
            elif name == "instantActions":
                await self._instant(body["actions"])
            await self.publish_state()

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
            self._wake.set()
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
        self._wake.set()

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

    async def _drive(self) -> None:
        """Move along released edges to released nodes at `speed`; stop where the base ends."""
        while True:
            if (
                self.paused
                or not self.nodes
                or not self.edges
                or not (self.nodes[0]["released"] and self.edges[0]["released"])
            ):
                self.driving = False
                self._wake.clear()
                await self._wake.wait()  # an order, an update or a resume sets it
                continue
            target = self.nodes[0]
            where = target.get("nodePosition")
            self.driving = True
            if where is None or self.position is None:
                self.travelled += self.speed * TICK
                if self.travelled < 1.0:
                    await asyncio.sleep(TICK)  # tick by tick: a pause stops it mid-edge
                    continue
                self.travelled = 0.0
            else:
                x, y = self.position
                dx, dy = where["x"] - x, where["y"] - y
                distance = math.hypot(dx, dy)
                step = self.speed * TICK
                if distance > step:
                    self.position = (x + dx / distance * step, y + dy / distance * step)
                    await asyncio.sleep(TICK)
                    continue
            self._place(target)
            self.nodes.pop(0)
            self.edges.pop(0)
            self.last_node, self.last_seq = target["nodeId"], target["sequenceId"]
            self.reached.append(target["nodeId"])
            if self.cancelling is not None:
                self._cancelled()
            elif target["actions"]:
                with contextlib.suppress(aiomqtt.MqttError):
                    await self._node_actions(target["actions"])
            if not self.nodes:
                self.driving = False
            with contextlib.suppress(aiomqtt.MqttError):  # the connection's own task notices
                await self.publish_state()

    async def _node_actions(self, actions: list[dict[str, Any]]) -> None:
        """Run the actions of the node it reached, one after another, standing (a pick or a
        drop blocks driving): INITIALIZING, RUNNING, then FINISHED, or FAILED with an error
        (a drop with nothing loaded, a pick with a load on board)."""
        for action in actions:
            state = self.actions.get(action["actionId"])
            if state is None or state["actionStatus"] != "WAITING":
                continue  # cancelled, or run already
            for phase, share in (("INITIALIZING", 0.3), ("RUNNING", 0.7)):
                state["actionStatus"] = phase
                await self.publish_state()
                await asyncio.sleep(self.action_seconds * share)
                if state["actionStatus"] != phase:
                    break  # cancelled meanwhile
            if state["actionStatus"] != "RUNNING":
                continue
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
            await self.publish_state()

    # ------------------------------------------------------------------ instant actions (6.8)
    async def _instant(self, actions: list[dict[str, Any]]) -> None:
        for action in actions:
            kind, action_id = action["actionType"], action["actionId"]
            status = "FINISHED"
            if kind == "startPause":  # activates the pause mode (6.8.1)
                self.paused = True
            elif kind == "stopPause":  # deactivates it
                self.paused = False
                self._wake.set()
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
                await self._publish("factsheet", self.factsheet(), retain=True)
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

    async def publish_state(self) -> None:
        await self._publish("state", self.state())

    async def _report(self) -> None:
        """State every `state_every` s, visualization every `visualization_every` s, on a
        fixed beat (a late tick does not push the next ones back; missed ones are skipped)."""
        ticks = max(1, round(self.state_every / self.visualization_every))
        loop = asyncio.get_running_loop()
        # a phase of its own: a fleet started at once does not report in bursts
        began, count, states = loop.time() + random.uniform(0, self.visualization_every), 0, 0
        while True:
            count += 1
            beat = began + count * self.visualization_every
            late = loop.time() - beat
            if late > self.visualization_every:  # skip the beats already missed
                count += int(late / self.visualization_every)
                beat = began + count * self.visualization_every
            await asyncio.sleep(max(0.0, beat - loop.time()))
            if self.position is not None:
                await self._publish("visualization", {"agvPosition": self._where()})
            if count // ticks > states:
                states = count // ticks
                await self.publish_state()

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


async def run_vehicles(vehicles: list[SimVehicle], stop: asyncio.Event) -> None:
    await asyncio.gather(*(v.run(stop) for v in vehicles))


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
