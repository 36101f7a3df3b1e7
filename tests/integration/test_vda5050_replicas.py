"""VDA 5050 vehicles with two `corral serve` replicas on one PostgreSQL: each replica takes
a share of the vehicles' visualization messages through an MQTT shared subscription
(`$share/GROUP/...`), the leader still sees every vehicle's latest position, so does a
read through either replica, and after the leader is stopped the other replica takes
every visualization alone.

The vehicles are plain MQTT publishers written from the standard's visualization message
(VDA 5050 2.1, 6.12 and its schema: header, then `agvPosition` with x, y, theta, mapId and
positionInitialized), on the machine's Mosquitto, under an interface name and a share
group of this test's own, so no other test's vehicles or replicas mix in.
"""

import asyncio
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import httpx
from prometheus_client.parser import text_string_to_metric_families
from tests.support.leadership import leaders
from tests.support.server import ADMIN, ServeProcess, wait_until

from corral.model.fleet_map import grid_map

HEADERS = {"Authorization": f"Bearer {ADMIN}"}
VEHICLES = 12


def _visualization(serial: str, header: int, x: float) -> bytes:
    return json.dumps(
        {
            "headerId": header,
            "timestamp": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "version": "2.1.0",
            "manufacturer": "acme",
            "serialNumber": serial,
            "agvPosition": {
                "x": x,
                "y": 1.0,
                "theta": 0.0,
                "mapId": "yard",
                "positionInitialized": True,
            },
        }
    ).encode()


async def _publish(interface: str, rounds: int, base: float) -> None:
    """Every vehicle's visualization, `rounds` times at 20 Hz; the last round says x =
    base + the vehicle's number, so the latest position of each is known."""
    async with aiomqtt.Client(
        "127.0.0.1", 1883, identifier=f"vehicles-{secrets.token_hex(3)}"
    ) as c:
        for n in range(1, rounds + 1):
            for i in range(VEHICLES):
                x = base + i if n == rounds else float(n)
                topic = f"{interface}/v2/acme/s{i}/visualization"
                await c.publish(topic, _visualization(f"s{i}", n, x), qos=0)
            await asyncio.sleep(0.05)


def _taken(metrics: str) -> float:
    """Visualizations this replica took (valid, or superseded by a newer one before read)."""
    total = 0.0
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "corral_vda5050_messages_total"
                and labels.get("direction") == "in"
                and labels.get("topic") == "visualization"
                and labels.get("outcome") in ("ok", "superseded")
            ):
                total += sample.value
    return total


def _positions(api: httpx.Client) -> dict[str, float | None]:
    robots = api.get("/fleet/robots").json()
    return {
        r["name"]: (r["telemetry"].get("position") or {}).get("x")
        for r in robots
        if r["name"].startswith("v")
    }


def _all_at(api: httpx.Client, base: float) -> bool:
    return _positions(api) == {f"v{i}": base + i for i in range(VEHICLES)}


def test_each_replica_takes_a_share_of_the_visualizations_and_every_one_shows_all(
    tmp_path: Path, pg_url: str
) -> None:
    interface = f"t{secrets.token_hex(4)}"
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_DATABASE_URL": pg_url,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_MDNS_ENABLED": "false",
        "CORRAL_REPLICA_POLL_SECONDS": "1.0",
        "CORRAL_BROKERS": json.dumps({"vda": "mqtt://127.0.0.1:1883"}),
        "CORRAL_VDA5050_BROKER": "vda",
        "CORRAL_VDA5050_INTERFACE": interface,
        "CORRAL_VDA5050_SHARE_GROUP": f"g{secrets.token_hex(4)}",
    }
    first = ServeProcess(tmp_path / "a", env).start()
    second: ServeProcess | None = None
    try:
        with httpx.Client(base_url=first.url, headers=HEADERS, timeout=60) as a:
            wait_until(lambda: len(leaders(a)) == 1, "the first replica leads", 30)
            second = ServeProcess(tmp_path / "b", env).start()
            b = httpx.Client(base_url=second.url, headers=HEADERS, timeout=60)
            assert a.post("/fleet/maps", json=grid_map("yard", 4, 4).as_dict()).status_code == 201
            for i in range(VEHICLES):
                body = {"name": f"v{i}", "manufacturer": "acme", "serial_number": f"s{i}"}
                made = a.post("/fleet/vda5050/vehicles", json=body | {"map": "yard"})
                assert made.status_code == 201, made.text
            # Both replicas' share connections are up (each says so in its events).
            wait_until(
                lambda: _connected_shares(a) >= 2, "both replicas' visualization shares connected"
            )
            # The second replica learns the vehicles registered through the first from the
            # store as their visualizations reach it: the first rounds may be dropped there.
            asyncio.run(_publish(interface, 40, 100.0))
            try:
                wait_until(lambda: _all_at(a, 100.0), "every vehicle's latest position, leader")
            except AssertionError:
                print("leader:", _positions(a), "\nfollower's log:", second.log.read_text()[-3000:])
                raise
            wait_until(lambda: _all_at(b, 100.0), "and through the other replica", 10)
            took_a, took_b = _taken(a.get("/metrics").text), _taken(b.get("/metrics").text)
            print(f"visualizations taken: leader {took_a:.0f}, follower {took_b:.0f}")
            assert took_a > 0, (took_a, took_b)  # each took a share
            assert took_b > 0, (took_a, took_b)
            assert took_a + took_b <= 40 * VEHICLES  # and none was taken twice

            # The first replica goes: the second takes the lead and every visualization.
            first.stop()
            wait_until(lambda: _leads(b), "the second replica leads", 30)
            before = _taken(b.get("/metrics").text)
            asyncio.run(_publish(interface, 20, 200.0))
            wait_until(lambda: _all_at(b, 200.0), "every position, with one replica left")
            assert _taken(b.get("/metrics").text) - before == 20 * VEHICLES
            b.close()
    finally:
        first.stop()
        if second is not None:
            second.stop()


def _connected_shares(api: httpx.Client) -> int:
    found = api.get(
        "/events", params={"kind": "broker.connected", "resource": "broker/vda-visualization"}
    )
    assert found.status_code == 200, found.text
    return len(found.json())


def _leads(api: httpx.Client) -> bool:
    try:
        return any(r["this"] for r in leaders(api))
    except httpx.HTTPError:
        return False
