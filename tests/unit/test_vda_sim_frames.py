"""The VDA 5050 simulator's MQTT 3.1.1 frames, byte by byte as the specification lays them
out: the remaining length, a CONNECT with its last will and login, a PUBLISH at QoS 0 and 1,
and a visualization's prebuilt JSON against the same message made with json.dumps."""

import json

from corral.robot.vda_sim import SimVehicle, _length, _string, connect_packet, publish_packet


def test_the_remaining_length_takes_seven_bits_a_byte_low_first() -> None:
    assert _length(0) == b"\x00"
    assert _length(127) == b"\x7f"
    assert _length(128) == b"\x80\x01"
    assert _length(16_383) == b"\xff\x7f"
    assert _length(16_384) == b"\x80\x80\x01"


def test_connect_carries_a_retained_qos1_will_a_clean_session_and_the_login() -> None:
    frame = connect_packet("acme-sn1", "uagv/v2/acme/sn1/connection", b"{}", "u", "p", 5)
    body = b"\x00\x04MQTT\x04" + bytes((0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02,)) + b"\x00\x05"
    body += _string("acme-sn1") + _string("uagv/v2/acme/sn1/connection") + _string(b"{}")
    body += _string("u") + _string("p")
    assert frame == b"\x10" + _length(len(body)) + body
    anonymous = connect_packet("x", "t", b"w", None, None)
    assert anonymous[9] == 0x2E  # no user, no password


def test_publish_frames() -> None:
    topic = _string("a/b")
    assert publish_packet(topic, b"hi") == b"\x30\x07\x00\x03a/bhi"
    assert publish_packet(topic, b"hi", qos=1, retain=True, packet_id=7) == (
        b"\x33\x09\x00\x03a/b\x00\x07hi"
    )


def test_a_prebuilt_visualization_is_the_message_json_would_make() -> None:
    sent: list[tuple[bytes, bytes]] = []

    class Link:
        def publish(self, topic: bytes, payload: bytes) -> None:
            sent.append((topic, payload))

    sim = SimVehicle("mqtt://h", 'a"%', "s1", "n0", position=(1.5, -2.0), map_id="m%d")
    sim._link = Link()  # type: ignore[assignment]
    sim._visualize("2026-01-01T00:00:00.000Z")
    sim._visualize("2026-01-01T00:00:00.100Z")
    [(topic, first), (_, second)] = sent
    assert topic == _string('uagv/v2/a"%/s1/visualization')
    assert json.loads(first) == {
        "headerId": 0,
        "timestamp": "2026-01-01T00:00:00.000Z",
        "version": "2.1.0",
        "manufacturer": 'a"%',
        "serialNumber": "s1",
        "agvPosition": {
            "x": 1.5,
            "y": -2.0,
            "theta": 0.0,
            "mapId": "m%d",
            "positionInitialized": True,
        },
    }
    assert json.loads(second)["headerId"] == 1
    assert sim.headers == {"visualization": 2}
