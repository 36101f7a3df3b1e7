"""Fleet maps: markers and lanes, parsing an uploaded map, mapping mode and A* routes.

Used by the fleet service (map upload, mapping mode, missions' routes) and by
`corral.model.traffic`; pure, so the simulator, the tests and the benchmarks use it too.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from corral.errors import Conflict, Invalid

MAX_MARKERS = 100_000
MAX_LANES = 400_000
MARKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_MAP_KEYS = frozenset({"name", "diameter", "markers", "lanes"})
_MARKER_KEYS = frozenset({"id", "x", "y"})
_LANE_KEYS = frozenset({"from", "to", "oneway"})


@dataclass(frozen=True)
class Marker:
    """A marker robots can stop on, at (x, y) in metres."""

    id: str
    x: float
    y: float


def lane_key(a: str, b: str) -> str:
    """The key of the lane between two markers: a lane is one resource in both directions."""
    return f"{a}|{b}" if a <= b else f"{b}|{a}"


@dataclass(frozen=True)
class FleetMap:
    """A graph of markers and lanes. `lanes` maps each key to its endpoints as written; a
    key in `oneway` may be used only from the first endpoint to the second."""

    name: str
    markers: dict[str, Marker]
    lanes: dict[str, tuple[str, str]]
    oneway: frozenset[str] = frozenset()
    diameter: float | None = None
    # marker -> [(neighbour, length)] in id order, respecting one-way lanes; and the same
    # with the neighbour's position, for A*.
    _out: dict[str, list[tuple[str, float]]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _steps: dict[str, list[tuple[str, float, float, float]]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        out: dict[str, list[tuple[str, float]]] = {m: [] for m in self.markers}
        for key, (a, b) in self.lanes.items():
            if a not in self.markers or b not in self.markers:
                raise Invalid(
                    f"map {self.name}: lane {a}->{b} names an unknown marker",
                    {"map": self.name, "lane": [a, b]},
                )
            length = self.length(a, b)
            out[a].append((b, length))
            if key not in self.oneway:
                out[b].append((a, length))
        for items in out.values():
            items.sort()
        markers = self.markers
        steps = {
            m: [(n, length, markers[n].x, markers[n].y) for n, length in items]
            for m, items in out.items()
        }
        object.__setattr__(self, "_out", out)
        object.__setattr__(self, "_steps", steps)

    def neighbours(self, marker: str) -> list[str]:
        """The markers reachable from `marker` along one lane (one-way lanes respected)."""
        try:
            return [n for n, _ in self._out[marker]]
        except KeyError:
            raise _unknown(self, marker, "marker") from None

    def has_lane(self, a: str, b: str) -> bool:
        """Whether a robot may go from `a` to `b` along one lane."""
        ends = self.lanes.get(lane_key(a, b))
        if ends is None or a == b:
            return False
        return lane_key(a, b) not in self.oneway or ends == (a, b)

    def length(self, a: str, b: str) -> float:
        """The straight-line distance between two markers."""
        try:
            first, second = self.markers[a], self.markers[b]
        except KeyError as exc:
            raise _unknown(self, str(exc.args[0]), "marker") from None
        return math.hypot(first.x - second.x, first.y - second.y)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form, which `parse_map` reads back into an equal map."""
        lanes: list[Any] = []
        for key, (a, b) in self.lanes.items():
            lanes.append({"from": a, "to": b, "oneway": True} if key in self.oneway else [a, b])
        out: dict[str, Any] = {"name": self.name}
        if self.diameter is not None:
            out["diameter"] = self.diameter
        out["markers"] = [{"id": m.id, "x": m.x, "y": m.y} for m in self.markers.values()]
        out["lanes"] = lanes
        return out


def _unknown(fmap: FleetMap, marker: str, what: str) -> Invalid:
    return Invalid(f"map {fmap.name}: unknown {what} {marker!r}", {"map": fmap.name, what: marker})


# ---------------------------------------------------------------------------- parsing
class _Refused(Exception):
    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _field(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _line_of(text: str, path: tuple[str | int, ...]) -> int:
    """The 1-based line of `path` in YAML/JSON `text`, or 0; only called on errors."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return 0
    for part in path:
        if isinstance(part, int) and isinstance(node, yaml.SequenceNode):
            if part >= len(node.value):
                break
            node = node.value[part]
        elif isinstance(part, str) and isinstance(node, yaml.MappingNode):
            found = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part]
            if not found:
                break
            node = found[0]
        else:
            break
    return node.start_mark.line + 1 if node is not None else 0


def _number(value: object, path: tuple[str | int, ...]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Refused(path, "must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise _Refused(path, "must be a finite number")
    return number


def _marker_id(value: object, path: tuple[str | int, ...]) -> str:
    if not isinstance(value, str) or not MARKER_ID.match(value):
        raise _Refused(
            path,
            f"marker id {value!r} must be 1-63 letters, digits, '_', '.' or '-' "
            "starting with a letter or digit",
        )
    return value


def _unknown_keys(
    item: dict[Any, Any], allowed: frozenset[str], path: tuple[str | int, ...]
) -> None:
    extra = sorted(str(k) for k in item if k not in allowed)
    if extra:
        raise _Refused((*path, extra[0]), f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _build(data: object) -> FleetMap:
    if not isinstance(data, dict):
        raise _Refused((), "a map must be a mapping with name, markers and lanes")
    _unknown_keys(data, _MAP_KEYS, ())
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _Refused(("name",), "required, a non-empty text")
    diameter: float | None = None
    if data.get("diameter") is not None:
        diameter = _number(data["diameter"], ("diameter",))
        if diameter <= 0:
            raise _Refused(("diameter",), "must be positive")
    raw_markers = data.get("markers")
    if not isinstance(raw_markers, list) or not raw_markers:
        raise _Refused(("markers",), "required, a non-empty list of {id, x, y}")
    if len(raw_markers) > MAX_MARKERS:
        raise _Refused(("markers",), f"{len(raw_markers)} markers; at most {MAX_MARKERS}")
    markers: dict[str, Marker] = {}
    for index, item in enumerate(raw_markers):
        path: tuple[str | int, ...] = ("markers", index)
        if not isinstance(item, dict):
            raise _Refused(path, "must be a mapping {id, x, y}")
        _unknown_keys(item, _MARKER_KEYS, path)
        for key in ("id", "x", "y"):
            if key not in item:
                raise _Refused((*path, key), "required")
        marker_id = _marker_id(item["id"], (*path, "id"))
        if marker_id in markers:
            raise _Refused((*path, "id"), f"marker {marker_id!r} appears twice")
        x = _number(item["x"], (*path, "x"))
        y = _number(item["y"], (*path, "y"))
        markers[marker_id] = Marker(marker_id, x, y)
    raw_lanes = data.get("lanes", [])
    if not isinstance(raw_lanes, list):
        raise _Refused(("lanes",), "must be a list of [A, B] or {from, to, oneway}")
    if len(raw_lanes) > MAX_LANES:
        raise _Refused(("lanes",), f"{len(raw_lanes)} lanes; at most {MAX_LANES}")
    lanes: dict[str, tuple[str, str]] = {}
    oneway: set[str] = set()
    for index, item in enumerate(raw_lanes):
        path = ("lanes", index)
        one = False
        if isinstance(item, list):
            if len(item) != 2:
                raise _Refused(path, "a lane as a list must be [FROM, TO]")
            ends: list[object] = list(item)
        elif isinstance(item, dict):
            _unknown_keys(item, _LANE_KEYS, path)
            for key in ("from", "to"):
                if key not in item:
                    raise _Refused((*path, key), "required")
            ends = [item["from"], item["to"]]
            one = item.get("oneway", False)
            if not isinstance(one, bool):
                raise _Refused((*path, "oneway"), "must be true or false")
        else:
            raise _Refused(path, "must be [FROM, TO] or {from, to, oneway}")
        for end in ends:
            if not isinstance(end, str) or end not in markers:
                raise _Refused(path, f"names an unknown marker {end!r}")
        a, b = str(ends[0]), str(ends[1])
        if a == b:
            raise _Refused(path, f"a lane from {a!r} to itself")
        key = lane_key(a, b)
        if key in lanes:
            raise _Refused(path, f"a second lane between {a!r} and {b!r}")
        lanes[key] = (a, b)
        if one:
            oneway.add(key)
    return FleetMap(name.strip(), markers, lanes, frozenset(oneway), diameter)


def parse_map(data: object, source: str = "map") -> FleetMap:
    """A map from a mapping or from YAML/JSON text; `Invalid` naming the field (and line)."""
    text: str | None = None
    if isinstance(data, bytes):
        try:
            data = data.decode()
        except UnicodeDecodeError:
            raise Invalid(f"{source}: not UTF-8 text", {"source": source}) from None
    if isinstance(data, str):
        text = data
        try:
            data = json.loads(text) if text.lstrip().startswith("{") else None
        except ValueError:
            data = None
        if data is None:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                line = mark.line + 1 if mark is not None else 0
                reason = getattr(exc, "problem", None) or str(exc)
                raise Invalid(
                    f"{source}: line {line}: not valid YAML or JSON: {reason}",
                    {"source": source, "line": line},
                ) from None
            except RecursionError:
                raise Invalid(f"{source}: nested too deeply", {"source": source}) from None
    try:
        return _build(data)
    except _Refused as exc:
        where = _field(exc.path)
        detail: dict[str, Any] = {"source": source, "field": where}
        prefix = f"{source}: "
        if text is not None:
            line = _line_of(text, exc.path)
            if line:
                detail["line"] = line
                prefix += f"line {line}: "
        if where:
            prefix += f"{where}: "
        raise Invalid(prefix + exc.message, detail) from None


# ---------------------------------------------------------------------------- building
def grid_map(name: str, columns: int, rows: int, spacing: float = 1.0) -> FleetMap:
    """A grid of markers `r{row}c{col}` at (col, row) * spacing, with 4-neighbour lanes."""
    if columns < 1 or rows < 1 or columns * rows > MAX_MARKERS:
        raise Invalid(f"grid {columns}x{rows} is not a map", {"columns": columns, "rows": rows})
    markers: dict[str, Marker] = {}
    lanes: dict[str, tuple[str, str]] = {}
    for row in range(rows):
        for col in range(columns):
            here = f"r{row}c{col}"
            markers[here] = Marker(here, col * spacing, row * spacing)
            if col:
                left = f"r{row}c{col - 1}"
                lanes[lane_key(left, here)] = (left, here)
            if row:
                up = f"r{row - 1}c{col}"
                lanes[lane_key(up, here)] = (up, here)
    return FleetMap(name, markers, lanes)


def shortest_route(
    fmap: FleetMap, start: str, goal: str, avoid: frozenset[str] = frozenset()
) -> list[str] | None:
    """The shortest route from `start` to `goal`, both included (A*, lane lengths as costs),
    never entering a marker in `avoid`; None when there is none. Ties go to the smaller id."""
    markers = fmap.markers
    if start not in markers:
        raise _unknown(fmap, start, "marker")
    if goal not in markers:
        raise _unknown(fmap, goal, "marker")
    if start == goal:
        return [start]
    if goal in avoid:
        return None
    target = markers[goal]
    gx, gy = target.x, target.y
    hypot, push, pop = math.hypot, heapq.heappush, heapq.heappop
    out = fmap._steps
    best: dict[str, float] = {start: 0.0}
    came: dict[str, str] = {}
    # (estimate, -cost so far: deeper first on ties, id)
    heap: list[tuple[float, float, str]] = [(0.0, 0.0, start)]
    while heap:
        _, negative, here = pop(heap)
        if here == goal:
            route = [goal]
            while route[-1] != start:
                route.append(came[route[-1]])
            route.reverse()
            return route
        cost = -negative
        if cost > best[here]:
            continue  # a stale entry: reached more cheaply since
        for there, length, x, y in out[here]:
            total = cost + length
            if total < best.get(there, math.inf) and there not in avoid:
                best[there] = total
                came[there] = here
                push(heap, (total + hypot(x - gx, y - gy), -total, there))
    return None


class MapBuilder:
    """Mapping mode: markers as a robot reports them (in its own units) and the lanes it
    travelled, turned into a map in metres with the arena's diameter as calibration."""

    def __init__(self) -> None:
        self._sums: dict[str, tuple[float, float, int]] = {}
        self._lanes: dict[str, tuple[str, str]] = {}

    @property
    def markers(self) -> list[str]:
        """The markers seen so far, sorted."""
        return sorted(self._sums)

    @property
    def lanes(self) -> list[list[str]]:
        """The lanes travelled so far, each as [lower id, higher id], sorted."""
        return sorted(sorted(pair) for pair in self._lanes.values())

    def observe(self, marker_id: str, x: float, y: float) -> None:
        """The robot saw `marker_id` at (x, y); repeated observations are averaged."""
        try:
            marker_id = _marker_id(marker_id, ("marker",))
            x = _number(x, ("x",))
            y = _number(y, ("y",))
        except _Refused as exc:
            raise Invalid(
                f"{_field(exc.path)}: {exc.message}", {"field": _field(exc.path)}
            ) from None
        sx, sy, n = self._sums.get(marker_id, (0.0, 0.0, 0))
        self._sums[marker_id] = (sx + x, sy + y, n + 1)

    def travelled(self, a: str, b: str) -> None:
        """The robot went from `a` to `b` directly: there is a lane between them."""
        for end in (a, b):
            try:
                _marker_id(end, ("marker",))
            except _Refused as exc:
                raise Invalid(exc.message, {"field": "marker"}) from None
        if a == b:
            return
        self._lanes.setdefault(lane_key(a, b), (a, b))

    def build(self, name: str, diameter: float, measured_diameter: float | None = None) -> FleetMap:
        """The map, every position scaled by `diameter / measured` where `measured` is the
        arena's diameter in the robot's units: given, or the widest span between markers."""
        if not (isinstance(diameter, int | float) and math.isfinite(diameter) and diameter > 0):
            raise Invalid("diameter must be a positive number of metres", {"field": "diameter"})
        if len(self._sums) < 2:
            raise Conflict(
                f"mapping saw {len(self._sums)} marker(s); at least 2 are needed",
                {"markers": len(self._sums)},
            )
        points = {m: (sx / n, sy / n) for m, (sx, sy, n) in self._sums.items()}
        for a, b in self._lanes.values():
            for end in (a, b):
                if end not in points:
                    raise Invalid(
                        f"lane {a}->{b} names marker {end!r}, which was never observed",
                        {"lane": [a, b], "marker": end},
                    )
        measured = measured_diameter if measured_diameter is not None else _widest(points)
        if not (isinstance(measured, int | float) and math.isfinite(measured) and measured > 0):
            raise Invalid(
                "the measured diameter must be positive (were all markers seen at one place?)",
                {"field": "measured_diameter"},
            )
        scale = diameter / measured
        markers = {m: Marker(m, x * scale, y * scale) for m, (x, y) in sorted(points.items())}
        return FleetMap(name, markers, dict(self._lanes), frozenset(), float(diameter))


def _widest(points: dict[str, tuple[float, float]]) -> float:
    """The largest distance between two points (over their convex hull)."""
    ordered = sorted(set(points.values()))
    if len(ordered) < 3:
        hull = ordered
    else:

        def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
            return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

        lower: list[tuple[float, float]] = []
        for p in ordered:
            while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
                lower.pop()
            lower.append(p)
        upper: list[tuple[float, float]] = []
        for p in reversed(ordered):
            while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
                upper.pop()
            upper.append(p)
        hull = lower[:-1] + upper[:-1]
    widest = 0.0
    for i, (ax, ay) in enumerate(hull):
        for bx, by in hull[i + 1 :]:
            widest = max(widest, math.hypot(ax - bx, ay - by))
    return widest
