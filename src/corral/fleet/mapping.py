"""Mapping mode: a robot drives the arena and reports each marker it reaches with its
own coordinates; corral records the markers and the lanes it travelled, then builds the
map scaled by the arena's diameter (the seed's calibration).

Sessions live in the fleet service's memory (a mapping run is short; a restart loses it).
"""

import math
from dataclasses import dataclass, field
from typing import Any

from corral.errors import Conflict, Invalid, NotFound
from corral.model.fleet_map import FleetMap, MapBuilder


@dataclass
class Mapping:
    robot: str
    map: str
    builder: MapBuilder = field(default_factory=MapBuilder)
    last: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "robot": self.robot,
            "map": self.map,
            "markers": self.builder.markers,
            "lanes": self.builder.lanes,
            "at": self.last,
        }


class MappingSessions:
    def __init__(self) -> None:
        self.by_robot: dict[str, Mapping] = {}

    def start(self, robot: str, map_name: str) -> Mapping:
        """`map_name` is checked by the route (the name pattern)."""
        if robot in self.by_robot:
            raise Conflict(f"robot {robot} is already mapping {self.by_robot[robot].map}")
        session = self.by_robot[robot] = Mapping(robot, map_name)
        return session

    def get(self, robot: str) -> Mapping:
        session = self.by_robot.get(robot)
        if session is None:
            raise NotFound(f"robot {robot} is not mapping", {"robot": robot})
        return session

    def observe(self, robot: str, marker: str, message: dict[str, Any]) -> None:
        """A checkpoint in mapping mode: `x` and `y` in the robot's own units."""
        session = self.get(robot)
        x, y = _coordinate(message, "x"), _coordinate(message, "y")
        session.builder.observe(marker, x, y)
        if session.last is not None and session.last != marker:
            session.builder.travelled(session.last, marker)
        session.last = marker

    def finish(self, robot: str, diameter: float, measured: float | None) -> tuple[FleetMap, str]:
        session = self.get(robot)
        fmap = session.builder.build(session.map, diameter, measured)
        del self.by_robot[robot]
        return fmap, session.last or ""

    def cancel(self, robot: str) -> None:
        self.get(robot)
        del self.by_robot[robot]


def _coordinate(message: dict[str, Any], name: str) -> float:
    value = message.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid(
            f"in mapping mode a checkpoint needs {name} (a number), not {value!r}",
            {"field": name},
        )
    return float(value)
