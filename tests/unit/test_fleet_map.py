"""Fleet maps: parsing (YAML and JSON, every refusal named), grids, A* routes and mapping
mode calibrated by the arena's diameter."""

import json
import math
import time
from itertools import pairwise

import pytest

from corral.errors import Conflict, Invalid
from corral.model.fleet_map import (
    FleetMap,
    MapBuilder,
    Marker,
    grid_map,
    lane_key,
    parse_map,
    shortest_route,
)

YAML_MAP = """\
name: arena
diameter: 3.0
markers:
  - {id: A, x: 0, y: 0}
  - {id: B, x: 1, y: 0}
  - {id: C, x: 1, y: 1.5}
  - {id: D, x: 0, y: 1}
lanes:
  - [A, B]
  - {from: B, to: C, oneway: true}
  - {from: C, to: D}
  - [D, A]
"""


def test_lane_key_is_undirected() -> None:
    assert lane_key("B", "A") == lane_key("A", "B") == "A|B"


def test_parse_yaml_map() -> None:
    fmap = parse_map(YAML_MAP)
    assert fmap.name == "arena"
    assert fmap.diameter == 3.0
    assert fmap.markers["C"] == Marker("C", 1.0, 1.5)
    assert fmap.lanes == {
        "A|B": ("A", "B"),
        "B|C": ("B", "C"),
        "C|D": ("C", "D"),
        "A|D": ("D", "A"),
    }
    assert fmap.oneway == frozenset({"B|C"})
    assert fmap.neighbours("A") == ["B", "D"]
    assert fmap.neighbours("B") == ["A", "C"]
    assert fmap.neighbours("C") == ["D"]  # B->C is one-way
    assert fmap.has_lane("B", "C")
    assert not fmap.has_lane("C", "B")
    assert fmap.has_lane("A", "D")
    assert not fmap.has_lane("A", "C")
    assert fmap.length("A", "C") == pytest.approx(math.hypot(1, 1.5))


def test_as_dict_round_trips_through_json_and_dicts() -> None:
    fmap = parse_map(YAML_MAP)
    again = parse_map(json.dumps(fmap.as_dict()))
    assert again == fmap
    assert parse_map(fmap.as_dict()) == fmap
    assert again.neighbours("C") == ["D"]
    grid = grid_map("g", 3, 2)
    assert parse_map(grid.as_dict()) == grid
    assert "diameter" not in grid.as_dict()


def test_json_text_and_bytes() -> None:
    doc = {"name": "j", "markers": [{"id": "a", "x": 0, "y": 0}, {"id": "b", "x": 2, "y": 0}]}
    doc["lanes"] = [["a", "b"]]
    assert parse_map(json.dumps(doc)).length("a", "b") == 2.0
    assert parse_map(json.dumps(doc).encode()).lanes == {"a|b": ("a", "b")}


def _doc(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "name": "m",
        "markers": [{"id": "a", "x": 0, "y": 0}, {"id": "b", "x": 1, "y": 0}],
        "lanes": [["a", "b"]],
    }
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    ("doc", "field", "words"),
    [
        (_doc(colour="red"), "colour", "unknown key"),
        (_doc(name=""), "name", "required"),
        (_doc(markers=[]), "markers", "non-empty"),
        (_doc(markers=[{"id": "a", "x": 0}]), "markers[0].y", "required"),
        (_doc(markers=[{"id": "a", "x": 0, "y": 0, "z": 1}]), "markers[0].z", "unknown key"),
        (
            _doc(markers=[{"id": "a", "x": 0, "y": 0}, {"id": "a", "x": 1, "y": 1}]),
            "markers[1].id",
            "appears twice",
        ),
        (_doc(markers=[{"id": "-a", "x": 0, "y": 0}]), "markers[0].id", "marker id"),
        (_doc(markers=[{"id": "a|b", "x": 0, "y": 0}]), "markers[0].id", "marker id"),
        (_doc(markers=[{"id": "a" * 64, "x": 0, "y": 0}]), "markers[0].id", "marker id"),
        (_doc(markers=[{"id": 7, "x": 0, "y": 0}]), "markers[0].id", "marker id"),
        (_doc(markers=[{"id": "a", "x": math.inf, "y": 0}]), "markers[0].x", "finite"),
        (_doc(markers=[{"id": "a", "x": math.nan, "y": 0}]), "markers[0].x", "finite"),
        (_doc(markers=[{"id": "a", "x": "1", "y": 0}]), "markers[0].x", "number"),
        (_doc(lanes=[["a", "z"]]), "lanes[0]", "unknown marker 'z'"),
        (_doc(lanes=[["a", "a"]]), "lanes[0]", "to itself"),
        (_doc(lanes=[["a", "b"], {"from": "b", "to": "a"}]), "lanes[1]", "second lane"),
        (_doc(lanes=[["a"]]), "lanes[0]", "[FROM, TO]"),
        (_doc(lanes=[{"from": "a", "to": "b", "oneway": "yes"}]), "lanes[0].oneway", "true or"),
        (_doc(lanes=[{"from": "a", "to": "b", "speed": 2}]), "lanes[0].speed", "unknown key"),
        (_doc(diameter=-1), "diameter", "positive"),
    ],
)
def test_refusals_name_the_field(doc: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_map(doc, "upload")
    assert caught.value.detail["field"] == field
    assert words in caught.value.message
    assert caught.value.message.startswith("upload: ")


def test_too_many_markers() -> None:
    markers = [{"id": f"m{i}", "x": i, "y": 0} for i in range(100_001)]
    with pytest.raises(Invalid, match="at most 100000"):
        parse_map({"name": "big", "markers": markers, "lanes": []})


def test_yaml_errors_name_the_line() -> None:
    text = YAML_MAP.replace("[D, A]", "[D, Q]")
    with pytest.raises(Invalid) as caught:
        parse_map(text, "arena.yml")
    assert caught.value.detail == {"source": "arena.yml", "field": "lanes[3]", "line": 12}
    assert "line 12" in caught.value.message
    with pytest.raises(Invalid, match="not valid YAML"):
        parse_map("name: [unclosed\n")
    with pytest.raises(Invalid, match="a mapping"):
        parse_map("- just\n- a list\n")


def test_grid_map() -> None:
    grid = grid_map("g", 4, 3, spacing=2.0)
    assert len(grid.markers) == 12
    assert len(grid.lanes) == 3 * 3 + 4 * 2
    assert grid.markers["r2c3"] == Marker("r2c3", 6.0, 4.0)
    assert grid.neighbours("r0c0") == ["r0c1", "r1c0"]
    assert grid.neighbours("r1c1") == ["r0c1", "r1c0", "r1c2", "r2c1"]
    assert grid.length("r0c0", "r0c1") == 2.0


def test_shortest_route_on_a_grid() -> None:
    grid = grid_map("g", 5, 5)
    route = shortest_route(grid, "r0c0", "r4c4")
    assert route is not None
    assert route[0] == "r0c0"
    assert route[-1] == "r4c4"
    assert len(route) == 9
    assert all(grid.has_lane(a, b) for a, b in pairwise(route))
    # deterministic
    assert shortest_route(grid, "r0c0", "r4c4") == route
    assert shortest_route(grid, "r2c2", "r2c2") == ["r2c2"]


def test_shortest_route_avoids_markers() -> None:
    grid = grid_map("g", 3, 3)
    route = shortest_route(grid, "r1c0", "r1c2", avoid=frozenset({"r1c1"}))
    assert route is not None
    assert "r1c1" not in route
    assert len(route) == 5
    # a wall with no gap: no route
    wall = frozenset({"r0c1", "r1c1", "r2c1"})
    assert shortest_route(grid, "r1c0", "r1c2", avoid=wall) is None
    # the start itself may be in avoid; the goal may not
    assert shortest_route(grid, "r0c0", "r0c1", avoid=frozenset({"r0c0"})) == ["r0c0", "r0c1"]
    assert shortest_route(grid, "r0c0", "r0c1", avoid=frozenset({"r0c1"})) is None


def test_shortest_route_respects_one_way_and_lengths() -> None:
    fmap = parse_map(YAML_MAP)
    assert shortest_route(fmap, "A", "C") == ["A", "D", "C"]  # 2.12 m against 2.5 m
    assert shortest_route(fmap, "B", "C") == ["B", "C"]
    assert shortest_route(fmap, "C", "B") == ["C", "D", "A", "B"]
    # a long straight lane against a short dog-leg: lengths are the costs
    doc = _doc(
        markers=[
            {"id": "s", "x": 0, "y": 0},
            {"id": "t", "x": 10, "y": 0},
            {"id": "u", "x": 5, "y": 0.1},
            {"id": "far", "x": 5, "y": 50},
        ],
        lanes=[["s", "far"], ["far", "t"], ["s", "u"], ["u", "t"]],
    )
    assert shortest_route(parse_map(doc), "s", "t") == ["s", "u", "t"]


def test_shortest_route_refuses_unknown_markers() -> None:
    grid = grid_map("g", 2, 2)
    with pytest.raises(Invalid, match="unknown marker 'nowhere'"):
        shortest_route(grid, "nowhere", "r0c0")
    with pytest.raises(Invalid, match="unknown marker 'nowhere'"):
        shortest_route(grid, "r0c0", "nowhere")
    with pytest.raises(Invalid):
        grid.neighbours("nowhere")


def test_shortest_route_is_fast_on_a_thousand_markers() -> None:
    grid = grid_map("big", 40, 25)
    started = time.perf_counter()
    for _ in range(20):
        route = shortest_route(grid, "r0c0", "r24c39")
    elapsed = (time.perf_counter() - started) / 20
    assert route is not None
    assert len(route) == 64
    assert elapsed < 0.05  # generous: about a millisecond on a laptop


def test_map_builder_averages_and_scales_by_the_diameter() -> None:
    builder = MapBuilder()
    builder.observe("west", -10, 0)
    builder.observe("west", -10, 2)  # averaged to (-10, 1)
    builder.observe("east", 10, 1)
    builder.observe("mid", 0, 1)
    builder.travelled("west", "mid")
    builder.travelled("mid", "east")
    builder.travelled("east", "mid")  # the same lane
    fmap = builder.build("mapped", diameter=2.0)
    # widest span is 20 robot units = 2 metres
    assert fmap.markers["west"] == Marker("west", -1.0, 0.1)
    assert fmap.markers["east"] == Marker("east", 1.0, 0.1)
    assert fmap.diameter == 2.0
    assert set(fmap.lanes) == {"mid|west", "east|mid"}
    assert fmap.length("west", "east") == pytest.approx(2.0)
    # a measured diameter overrides the widest span
    measured = builder.build("mapped", diameter=2.0, measured_diameter=40)
    assert measured.length("west", "east") == pytest.approx(1.0)
    assert parse_map(fmap.as_dict()) == fmap


def test_map_builder_refusals() -> None:
    builder = MapBuilder()
    builder.observe("only", 1, 1)
    with pytest.raises(Conflict, match="at least 2"):  # what it saw so far, not the request
        builder.build("m", 5.0)
    with pytest.raises(Invalid, match="marker id"):
        builder.observe("bad id", 0, 0)
    with pytest.raises(Invalid, match="finite"):
        builder.observe("ok", math.nan, 0)
    builder.observe("other", 1, 1)
    with pytest.raises(Invalid, match="measured diameter"):
        builder.build("m", 5.0)  # both seen at one place
    builder.travelled("other", "ghost")
    builder.observe("far", 5, 5)
    with pytest.raises(Invalid, match="never observed"):
        builder.build("m", 5.0)
    with pytest.raises(Invalid, match="diameter"):
        MapBuilder().build("m", 0)


def test_widest_span_uses_every_marker() -> None:
    builder = MapBuilder()
    points = [(math.cos(a / 10), math.sin(a / 10)) for a in range(63)] + [(0.1, 0.2), (0, 0)]
    for index, (x, y) in enumerate(points):
        builder.observe(f"m{index}", x * 50, y * 50)
    fmap = builder.build("ring", diameter=4.0)
    spans = [fmap.length(a, b) for a in fmap.markers for b in fmap.markers if a < b]  # brute force
    assert max(spans) == pytest.approx(4.0)


def test_fleet_map_checks_lanes() -> None:
    with pytest.raises(Invalid, match="unknown marker"):
        FleetMap("m", {"a": Marker("a", 0, 0)}, {"a|b": ("a", "b")})
