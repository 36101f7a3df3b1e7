"""The lean MQTT feed (corral.brokers.mqtt_feed) and the VDA 5050 intake on it: frames read
whole however the stream is cut, QoS 1 acknowledged, a handler's fault not ending the feed;
a vehicle's visualizations kept latest-only between two beats, the superseded counted."""

import asyncio
import json
import struct
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry

from corral.brokers.mqtt_feed import _length, _Protocol, connect_packet, subscribe_packet
from corral.fleet.links import Links
from corral.fleet.meter import FleetMeter
from corral.fleet.vda5050.master import BEAT, MasterControl, Vehicle
from corral.fleet.vda5050.messages import Headers, Topics


def publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False, pid: int = 0) -> bytes:
    raw = topic.encode()
    body = struct.pack("!H", len(raw)) + raw + (struct.pack("!H", pid) if qos else b"") + payload
    return bytes((0x30 | qos << 1 | int(retain),)) + _length(len(body)) + body


class Wire:
    """What the protocol writes (a transport that keeps the bytes)."""

    def __init__(self) -> None:
        self.out = b""

    def write(self, data: bytes) -> None:
        self.out += data


def test_connect_and_subscribe_frames() -> None:
    frame = connect_packet("corral-x", "u", "p", 10)
    body = b"\x00\x04MQTT\x04\xc2\x00\x0a" + b"\x00\x08corral-x" + b"\x00\x01u" + b"\x00\x01p"
    assert frame == b"\x10" + _length(len(body)) + body
    assert connect_packet("c", None, None, 5)[9] == 0x02  # clean session, no login
    sub = subscribe_packet(1, [("a/+", 1), ("$share/g/b", 0)])
    assert sub == b"\x82\x15\x00\x01" + b"\x00\x03a/+\x01" + b"\x00\x0a$share/g/b\x00"


async def test_frames_are_read_whole_however_the_stream_is_cut() -> None:
    sent = [
        ("uagv/v2/acme/sn1/state", b'{"a": 1}', 0, False, 0),
        ("uagv/v2/acme/sn1/connection", b'{"connectionState": "ONLINE"}', 1, True, 7),
        ("uagv/v2/acme/sn2/visualization", b"x" * 20_000, 0, False, 0),  # 3-byte length
        ("t", b"", 1, False, 513),
    ]
    stream = b"\x90\x03\x00\x01\x01"  # a SUBACK among them
    for i, (topic, payload, qos, retain, pid) in enumerate(sent):
        stream += publish(topic, payload, qos, retain, pid)
        if i == 1:
            stream += b"\xd0\x00"  # a PINGRESP
    for cut in (1, 2, 3, 5, 64, 4096, len(stream)):
        got: list[tuple[str, bytes, bool]] = []
        protocol = _Protocol(lambda t, p, r, got=got: got.append((t, p, r)))
        wire = Wire()
        protocol.transport = wire  # type: ignore[assignment]
        protocol.pinged = 1.0
        for at in range(0, len(stream), cut):
            protocol.data_received(stream[at : at + cut])
        assert got == [(t, p, r) for t, p, _, r, _ in sent], cut
        assert wire.out == b"\x40\x02\x00\x07" + b"\x40\x02\x02\x01"  # PUBACKs, in order
        assert protocol.pinged is None
        assert protocol.suback.result() == b"\x01"
        assert protocol.rest == b""


async def test_a_handler_fault_does_not_end_the_feed() -> None:
    got: list[str] = []

    def deliver(topic: str, payload: bytes, retained: bool) -> None:
        if topic == "bad":
            raise ValueError("boom")
        got.append(topic)

    protocol = _Protocol(deliver)
    protocol.transport = Wire()  # type: ignore[assignment]
    protocol.data_received(publish("a", b"1") + publish("bad", b"2") + publish("b", b"3"))
    assert got == ["a", "b"]
    assert protocol.faults == 1


def visualization(serial: str, x: float, header: int = 0) -> bytes:
    return json.dumps(
        {
            "headerId": header,
            "timestamp": "2026-12-04T21:00:00.000Z",
            "version": "2.1.0",
            "manufacturer": "acme",
            "serialNumber": serial,
            "agvPosition": {
                "x": x,
                "y": 0.0,
                "theta": 0.0,
                "mapId": "m",
                "positionInitialized": True,
            },
        }
    ).encode()


def counted(master: MasterControl, outcome: str) -> float:
    value: float = master.messages.labels(
        "in", "visualization", outcome, master.replica
    )._value.get()
    return value


async def test_visualizations_are_kept_latest_only_until_the_beat() -> None:
    """What the broker's feed gives between two beats: per vehicle only its latest
    visualization is read; the ones it superseded are counted, not queued."""
    fleet: Any = SimpleNamespace(meter=FleetMeter(), links=Links(), leads=lambda: True, peers=None)
    metrics: Any = SimpleNamespace(registry=CollectorRegistry())
    master = MasterControl(fleet, None, None, Topics(), None, metrics, "r1")  # type: ignore[arg-type]
    for serial in ("v1", "v2"):
        vehicle = Vehicle(serial, "acme", serial, Headers("acme", serial), master)
        master.by_identity[("acme", serial)] = vehicle
        master.by_robot[serial] = vehicle
    for i in range(5):
        master.on_message("uagv/v2/acme/v1/visualization", visualization("v1", float(i), i), False)
    master.on_message("uagv/v2/acme/v2/visualization", visualization("v2", 7.0), False)
    assert len(master._latest) == 2  # one per vehicle, whatever came
    await asyncio.sleep(BEAT * 3)
    assert fleet.links.get("v1").telemetry["position"]["x"] == 4.0  # the latest
    assert fleet.links.get("v2").telemetry["position"]["x"] == 7.0
    assert counted(master, "ok") == 2
    assert counted(master, "superseded") == 4
    assert fleet.meter.vda5050.telemetry == 2
    master.on_message("uagv/v2/acme/v1/visualization", visualization("v1", 9.0), False)
    await asyncio.sleep(BEAT * 3)
    assert fleet.links.get("v1").telemetry["position"]["x"] == 9.0
    assert counted(master, "ok") == 3
    assert master._latest == {}


class _Peers:
    """What a follower's master control tells the leader (fleet.peers), recorded."""

    def __init__(self) -> None:
        self.positions: dict[str, Any] = {}

    def vehicle_position(self, robot: str, position: Any) -> None:
        self.positions[robot] = position


async def test_a_follower_passes_its_share_of_positions_to_the_leader_and_admits_none() -> None:
    """On a replica that does not lead (its share of the shared subscription): a known
    vehicle's latest position is shown here and passed on for the leader; a vehicle it does
    not know is looked up in the store (once), never admitted or reported as unknown."""
    peers = _Peers()
    fleet: Any = SimpleNamespace(
        meter=FleetMeter(), links=Links(), leads=lambda: False, peers=peers, robots={}
    )
    metrics: Any = SimpleNamespace(registry=CollectorRegistry())
    looked: list[tuple[str, str]] = []

    class _Store:
        async def find(self, manufacturer: str, serial: str) -> None:
            looked.append((manufacturer, serial))

    master = MasterControl(fleet, _Store(), None, Topics(), None, metrics, "r2")  # type: ignore[arg-type]
    master.admit_map = "yard"  # admission is on, yet a follower never admits
    vehicle = Vehicle("v1", "acme", "v1", Headers("acme", "v1"), master)
    master.by_identity[("acme", "v1")] = vehicle
    master.by_robot["v1"] = vehicle
    master.on_message("uagv/v2/acme/v1/visualization", visualization("v1", 3.0), False)
    for _ in range(3):
        master.on_message("uagv/v2/acme/new/visualization", visualization("new", 1.0), False)
    await asyncio.sleep(BEAT * 3)
    assert fleet.links.get("v1").telemetry["position"]["x"] == 3.0
    assert peers.positions["v1"]["x"] == 3.0
    assert "new" not in peers.positions
    assert looked == [("acme", "new")]  # once, not per message
    assert master._admitting == {}
    assert counted(master, "unknown") == 0
