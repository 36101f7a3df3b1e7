"""VDA 5050 topics and messages: the topic layout, the standard's JSON schemas (shipped
with their MIT license in schemas/) and the check of every message in and out against them.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).parent / "schemas"
# topic -> (MQTT QoS, retained), as the standard says (6.2, 6.14, 6.15)
TOPICS: dict[str, tuple[int, bool]] = {
    "order": (0, False),
    "instantActions": (0, False),
    "state": (0, False),
    "visualization": (0, False),
    "connection": (1, True),
    "factsheet": (0, True),
}
INBOUND = ("state", "visualization", "connection", "factsheet")
VERSION = "2.1.0"


@dataclass(frozen=True)
class Topics:
    """`{interfaceName}/{majorVersion}/{manufacturer}/{serialNumber}/{topic}`."""

    interface: str = "uagv"
    major: str = "v2"

    def of(self, manufacturer: str, serial: str, topic: str) -> str:
        return f"{self.interface}/{self.major}/{manufacturer}/{serial}/{topic}"

    def inbound(self, topic: str) -> str:
        """The subscription for one inbound topic of every vehicle."""
        return f"{self.interface}/{self.major}/+/+/{topic}"

    def parse(self, topic: str) -> tuple[str, str, str] | None:
        """(manufacturer, serialNumber, topic) of a topic of this interface, else None."""
        parts = topic.split("/")
        if len(parts) != 5 or parts[0] != self.interface or parts[1] != self.major:
            return None
        return parts[2], parts[3], parts[4]


@cache
def _schema(topic: str) -> Any:
    return json.loads((SCHEMAS / f"{topic}.schema").read_text())


@cache
def validator(topic: str) -> Draft202012Validator:
    """The detailed check: every problem, worded for people."""
    return Draft202012Validator(_schema(topic))


@cache
def _fast(topic: str) -> Any:
    """The quick check of the same schema (compiled, in Rust): valid or not."""
    return jsonschema_rs.validator_for(_schema(topic))


def problems(topic: str, message: Any) -> list[str]:
    """What is wrong with `message` as a `topic` message (empty when it is valid): each
    problem names where it is (`nodes/0/sequenceId: -1 is less than the minimum of 0`).
    A valid message costs the quick check only."""
    if topic not in TOPICS:
        return [f"unknown topic {topic!r}"]
    if _fast(topic).is_valid(message):
        return []
    found = sorted(validator(topic).iter_errors(message), key=lambda e: list(e.absolute_path))
    out = []
    for error in found[:5]:
        where = "/".join(str(p) for p in error.absolute_path) or "(message)"
        out.append(f"{where}: {error.message[:200]}")
    if not out:  # the two checks differ on this message: say what the quick one found
        for fast in list(_fast(topic).iter_errors(message))[:5]:
            where = "/".join(str(p) for p in fast.instance_path) or "(message)"
            out.append(f"{where}: {str(fast.message)[:200]}")
    return out


def decode(topic: str, payload: bytes) -> tuple[dict[str, Any] | None, list[str]]:
    """The message of an inbound payload and its problems (not JSON, not an object, or
    against the schema)."""
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"not JSON: {exc}"]
    if not isinstance(message, dict):
        return None, ["not a JSON object"]
    return message, problems(topic, message)


def timestamp() -> str:
    """ISO 8601 UTC with milliseconds and a Z, as the standard writes it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Headers:
    """One sender's headerIds: per topic, growing by one with each message sent."""

    def __init__(self, manufacturer: str, serial: str) -> None:
        self.manufacturer = manufacturer
        self.serial = serial
        self.next: dict[str, int] = {}

    def header(self, topic: str) -> dict[str, Any]:
        header_id = self.next.get(topic, 0)
        self.next[topic] = header_id + 1
        return {
            "headerId": header_id,
            "timestamp": timestamp(),
            "version": VERSION,
            "manufacturer": self.manufacturer,
            "serialNumber": self.serial,
        }
