"""A print farm for tests: unique queue and topic names per test, a farm layout made
through the API, and what the simulated arm recorded."""

import json
import secrets
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tests.support.brokers import AMQP_URL, MQTT_URL

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "printfarm"
sys.path.insert(0, str(EXAMPLE))

from simulators import Arm, finish  # noqa: E402


@dataclass(frozen=True)
class Names:
    """Queues and topics of one test, so parallel tests never share one."""

    ready: str
    homing: str
    job: str
    status: str

    @classmethod
    def fresh(cls) -> "Names":
        tag = secrets.token_hex(4)
        return cls(f"ready-{tag}", f"homing-{tag}", f"t{tag}/job", f"t{tag}/status")

    def settings(self) -> dict[str, Any]:
        return {
            "brokers": {"amqp": AMQP_URL, "mqtt": MQTT_URL},
            "farm_enabled": True,
            "farm_ready_queue": self.ready,
            "farm_homing_queue": self.homing,
            "farm_job_topic": self.job,
            "farm_status_topic": self.status,
            "farm_homing_schedule": "",
        }

    def env(self) -> dict[str, str]:
        return {
            f"CORRAL_{k.upper()}": json.dumps(v) if isinstance(v, dict) else str(v).lower()
            if isinstance(v, bool) else str(v)
            for k, v in self.settings().items()
        }  # fmt: skip

    def finish(self, printers: list[str]) -> None:
        finish(printers, queue=self.ready)


def layout(api: httpx.Client, printers: int, spare_beds: int) -> dict[str, str]:
    """Two racks (near and far), spare clean beds in them, printers each holding a bed.
    Returns printer -> the bed in it."""
    api.put("/farm/racks/near", json={"position": 0, "slots": 500}).raise_for_status()
    api.put("/farm/racks/far", json={"position": 50, "slots": 500}).raise_for_status()
    for n in range(1, (spare_beds - 1) // 1000 + 1):  # more than 1,000: farther racks too
        api.put(f"/farm/racks/far{n}", json={"position": 50 + 50 * n, "slots": 1000})
    for i in range(spare_beds):
        rack = "near" if i % 2 == 0 else "far"
        slot = i // 2 + 1
        if i >= 1000:
            rack, slot = f"far{i // 1000}", i % 1000 + 1
        api.put(
            f"/farm/beds/spare-{i}", json={"type": "pei", "rack": rack, "slot": slot}
        ).raise_for_status()
    inside = {}
    for i in range(printers):
        bed = f"inside-{i}"
        api.put(f"/farm/beds/{bed}", json={"type": "pei", "state": "with_part"}).raise_for_status()
        api.put(
            f"/farm/printers/p{i}",
            json={"door": f"door-{i}", "bed_type": "pei", "position": 10, "bed": bed},
        ).raise_for_status()
        inside[f"p{i}"] = bed
    return inside


def seed_layout(api: httpx.Client, printers: Iterable[int], spares: int) -> dict[int, int]:
    """Numeric ids as the seed's: printer N holds bed 500+N, spare clean beds 801... in a
    rack. Returns printer -> the bed in it."""
    api.put("/farm/racks/1", json={"position": 0, "slots": 1000}).raise_for_status()
    for i in range(spares):
        api.put(
            f"/farm/beds/{801 + i}", json={"type": "pei", "rack": "1", "slot": i + 1}
        ).raise_for_status()
    inside = {}
    for printer in printers:
        bed = 500 + printer
        api.put(f"/farm/beds/{bed}", json={"type": "pei", "state": "with_part"}).raise_for_status()
        api.put(
            f"/farm/printers/{printer}",
            json={"door": f"printer{printer}", "bed_type": "pei", "bed": str(bed)},
        ).raise_for_status()
        inside[printer] = bed
    return inside


@contextmanager
def arm(
    names: Names, record: Path, work: float = 0.05, port: int = 1883, nodelay: bool = False
) -> Iterator[Arm]:
    running = Arm(
        record, work, port=port, job_topic=names.job, status_topic=names.status, nodelay=nodelay
    ).start()
    try:
        yield running
    finally:
        running.stop()


def jobs(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
