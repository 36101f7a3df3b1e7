"""What a robot reports, built once for both channels (WebSocket and HTTP); stdlib only."""

from collections.abc import Sequence
from typing import Any


def telemetry_fields(
    marker: str | None,
    lane: Sequence[str] | None,
    progress: float | None,
    distance: float | None,
    battery: float | None,
    status: str | None,
) -> dict[str, Any]:
    """Where the robot is (a marker, or a lane [FROM, TO]) and the readings it has."""
    fields: dict[str, Any] = {"marker": marker, "lane": list(lane) if lane is not None else None}
    for name, value in (
        ("progress", progress),
        ("distance", distance),
        ("battery", battery),
        ("status", status),
    ):
        if value is not None:
            fields[name] = value
    return fields
