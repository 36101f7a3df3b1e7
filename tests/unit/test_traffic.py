"""Traffic reservations: grants and blocks, checkpoints, deadlock detection and resolution,
snapshots; simulated fleets on grids that must all arrive without ever sharing a marker or a
lane, and randomized operations that must never break the table's invariants."""

import random
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from corral.errors import Conflict, Invalid
from corral.model.fleet_map import FleetMap, grid_map, lane_key, parse_map, shortest_route
from corral.model.traffic import Blocked, Grant, Place, Traffic, Wait

LINE = parse_map(
    {
        "name": "line",
        "markers": [{"id": f"m{i}", "x": i, "y": 0} for i in range(5)],
        "lanes": [[f"m{i}", f"m{i + 1}"] for i in range(4)],
    }
)
# A corridor m0..m4 with a siding s below m2.
SIDING = parse_map(
    {
        "name": "siding",
        "markers": [{"id": f"m{i}", "x": i, "y": 0} for i in range(5)]
        + [{"id": "s", "x": 2, "y": -1}],
        "lanes": [[f"m{i}", f"m{i + 1}"] for i in range(4)] + [["m2", "s"]],
    }
)


def check(traffic: Traffic) -> None:
    """The table's invariants: one holder per resource, at most marker + lane + next marker
    per robot, the lane joining the two markers, waits only from robots not moving, and
    the robots waiting for each resource as the waits say."""
    seen: dict[str, str] = {}
    for robot in traffic.robots():
        held = traffic.held(robot)
        at = traffic.position(robot)
        assert at is not None
        assert held[0] == f"marker:{at}"
        assert len(held) in (1, 3)
        if len(held) == 3:
            following = traffic.granted(robot)
            assert following is not None
            assert held[1:] == [f"lane:{lane_key(at, following)}", f"marker:{following}"]
            assert traffic.fmap.has_lane(at, following)
            assert robot not in traffic.waits
        for resource in held:
            assert resource not in seen, f"{resource} held by {seen.get(resource)} and {robot}"
            seen[resource] = robot
    assert seen == traffic.holds
    resources = [f"marker:{m}" for m in traffic.fmap.markers]
    resources += [f"lane:{lane_key(a, b)}" for a, b in traffic.fmap.lanes.values()]
    for resource in resources:  # the index of waits by resource agrees with the waits
        waiting = {r for r, wait in traffic.waits.items() if wait.resource == resource}
        assert traffic.waiting_for([resource]) == waiting, resource
    for robot in traffic.waits:
        assert traffic.position(robot) is not None


def test_grant_then_arrive_releases_what_is_behind() -> None:
    traffic = Traffic(LINE)
    assert traffic.place("a", "m0") is None
    assert traffic.holds == {"marker:m0": "a"}
    grant = traffic.request("a", "m1")
    assert grant == Grant("a", "m1", ("m0", "m1"))
    assert traffic.held("a") == ["marker:m0", "lane:m0|m1", "marker:m1"]
    assert traffic.request("a", "m1") == grant  # asked again: the same grant
    assert traffic.arrived("a", "m1") == ["marker:m0", "lane:m0|m1"]
    assert traffic.holds == {"marker:m1": "a"}
    assert traffic.position("a") == "m1"
    assert traffic.arrived("a", "m1") == []  # the same checkpoint again: nothing changes
    check(traffic)


def test_blocked_is_recorded_and_cleared_by_a_grant() -> None:
    traffic = Traffic(LINE)
    traffic.place("a", "m0")
    traffic.place("b", "m2")
    assert isinstance(traffic.request("b", "m1"), Grant)
    answer = traffic.request("a", "m1")
    assert answer == Blocked("a", "marker:m1", "b")
    assert traffic.waits == {"a": Wait("m1", "marker:m1", "b")}
    traffic.arrived("b", "m1")
    assert traffic.request("b", "m2") == Grant("b", "m2", ("m1", "m2"))
    traffic.arrived("b", "m2")
    assert isinstance(traffic.request("a", "m1"), Grant)
    assert traffic.waits == {}
    check(traffic)


def test_two_robots_never_swap_along_a_lane() -> None:
    traffic = Traffic(LINE)
    traffic.place("a", "m1")
    traffic.place("b", "m2")
    assert traffic.request("a", "m2") == Blocked("a", "marker:m2", "b")
    assert traffic.request("b", "m1") == Blocked("b", "marker:m1", "a")
    assert traffic.deadlock() == ["a", "b"]
    assert traffic.deadlock("b") == ["a", "b"]
    # one moving along the lane holds it whole: the other cannot enter it from either end
    traffic.release("b")
    assert isinstance(traffic.request("a", "m2"), Grant)
    traffic.place("c", "m3")
    assert traffic.request("c", "m2") == Blocked("c", "marker:m2", "a")
    assert traffic.holder("lane:m1|m2") == "a"
    check(traffic)


def test_request_refusals() -> None:
    traffic = Traffic(LINE)
    with pytest.raises(Invalid, match="at no marker"):
        traffic.request("ghost", "m1")
    traffic.place("a", "m0")
    with pytest.raises(Invalid, match="no lane from 'm0' to 'm2'"):
        traffic.request("a", "m2")
    with pytest.raises(Invalid, match="unknown marker 'zz'"):
        traffic.request("a", "zz")
    with pytest.raises(Invalid, match="unknown marker"):
        traffic.place("a", "zz")
    oneway = parse_map(
        {
            "name": "oneway",
            "markers": [{"id": "p", "x": 0, "y": 0}, {"id": "q", "x": 1, "y": 0}],
            "lanes": [{"from": "p", "to": "q", "oneway": True}],
        }
    )
    one = Traffic(oneway)
    one.place("a", "q")
    with pytest.raises(Invalid, match="no lane from 'q' to 'p'"):
        one.request("a", "p")


def test_a_second_move_before_the_checkpoint_conflicts() -> None:
    traffic = Traffic(SIDING)
    traffic.place("a", "m2")
    traffic.request("a", "m3")
    with pytest.raises(Conflict, match="already moving to 'm3'"):
        traffic.request("a", "s")


def test_arrived_must_be_granted() -> None:
    traffic = Traffic(LINE)
    traffic.place("a", "m0")
    with pytest.raises(Conflict, match="reported marker 'm1'") as caught:
        traffic.arrived("a", "m1")
    assert caught.value.detail["marker"] == "m1"
    traffic.request("a", "m1")
    with pytest.raises(Conflict, match="granted 'm1'"):
        traffic.arrived("a", "m3")
    with pytest.raises(Conflict, match="at no marker"):
        traffic.arrived("ghost", "m3")
    with pytest.raises(Invalid):
        traffic.arrived("a", "zz")
    check(traffic)


def test_place_does_not_steal_and_moves_the_robot() -> None:
    traffic = Traffic(LINE)
    traffic.place("a", "m0")
    traffic.request("a", "m1")
    assert traffic.place("b", "m1") == "a"  # a physical conflict: reported, nothing taken
    assert traffic.position("b") is None
    assert traffic.holder("marker:m1") == "a"
    # corral restarted and the robot reports itself elsewhere: it lets go of the rest
    assert traffic.place("a", "m3") is None
    assert traffic.holds == {"marker:m3": "a"}
    assert traffic.place("a", "m3") is None
    check(traffic)


def test_offline_robot_keeps_its_reservations_until_released() -> None:
    traffic = Traffic(LINE)
    traffic.place("a", "m1")
    traffic.request("a", "m2")
    traffic.place("b", "m3")
    # a goes offline: nothing changes; b cannot enter what a holds
    assert traffic.request("b", "m2") == Blocked("b", "marker:m2", "a")
    assert traffic.deadlock() is None
    assert traffic.release("a") == ["marker:m1", "lane:m1|m2", "marker:m2"]
    assert traffic.position("a") is None
    assert isinstance(traffic.request("b", "m2"), Grant)
    check(traffic)


def test_snapshot_round_trip() -> None:
    traffic = Traffic(SIDING)
    traffic.place("a", "m0")
    traffic.place("b", "m2")
    traffic.place("c", "m4")
    traffic.request("b", "s")
    traffic.request("c", "m3")
    traffic.request("a", "m1")
    traffic.arrived("a", "m1")
    traffic.request("a", "m2")
    snap = traffic.snapshot()
    assert snap["holds"]["lane:m2|s"] == "b"
    assert snap["waits"] == {"a": {"marker": "m2", "resource": "marker:m2", "holder": "b"}}
    assert snap["robots"]["b"] == {"at": "m2", "next": "s"}
    again = Traffic.restore(SIDING, snap)
    assert again.snapshot() == snap
    assert again.holds == traffic.holds
    assert again.waits == traffic.waits
    assert again.granted("c") == "m3"
    check(again)
    rows = written({}, traffic.changes())
    assert sorted(rows) == ["a", "b", "c"]
    assert Traffic.restore(SIDING, as_read(rows)).snapshot() == snap


def written(rows: dict[str, Place], changes: tuple[dict[str, Place], set[str]]) -> dict[str, Place]:
    """A map's traffic rows after a batch wrote `changes` (as the store does: the changed
    rows replaced, the gone ones deleted)."""
    places, gone = changes
    assert not places.keys() & gone
    out = {r: place for r, place in rows.items() if r not in gone}
    out.update(places)
    return out


def as_read(rows: dict[str, Place]) -> dict[str, Any]:
    """Rows as the store reads them back for `Traffic.restore`."""
    return {
        "robots": {r: {"at": at, "next": step} for r, (at, step, _) in rows.items()},
        "waits": {
            r: {"marker": w.marker, "resource": w.resource, "holder": w.holder}
            for r, (_, _, w) in rows.items()
            if w is not None
        },
    }


def test_a_batch_writes_only_the_rows_it_changed() -> None:
    traffic = Traffic(LINE)
    for robot, marker in (("a", "m0"), ("b", "m2"), ("c", "m4")):
        traffic.place(robot, marker)
    rows = written({}, traffic.changes())
    assert sorted(rows) == ["a", "b", "c"]
    assert traffic.changes() == ({}, set())
    assert traffic.request("a", "m1") == Grant("a", "m1", ("m0", "m1"))
    assert isinstance(traffic.request("c", "m3"), Grant)
    assert isinstance(traffic.request("b", "m3"), Blocked)  # c holds m3: b waits
    places, gone = traffic.changes()
    assert places == {
        "a": ("m0", "m1", None),
        "b": ("m2", None, Wait("m3", "marker:m3", "c")),
        "c": ("m4", "m3", None),
    }
    assert gone == set()
    rows = written(rows, (places, gone))
    assert isinstance(traffic.request("b", "m3"), Blocked)  # asked again (the tick): same wait
    assert traffic.changes() == ({}, set()), "a wait asked again is no row to write"
    traffic.unwait("b")  # the dispatcher drops a wait (a re-route)
    traffic.release("c")
    places, gone = traffic.changes()
    assert places == {"b": ("m2", None, None)}
    assert gone == {"c"}
    rows = written(rows, (places, gone))
    assert Traffic.restore(LINE, as_read(rows)).snapshot() == traffic.snapshot()


@pytest.mark.parametrize(
    "snap",
    [
        {"robots": {"a": {"at": "m0"}, "b": {"at": "m0"}}},
        {"robots": {"a": {"at": "m0", "next": "m1"}, "b": {"at": "m1"}}},
        {"robots": {"a": {"at": "m0", "next": "m3"}}},
        {"robots": {"a": {"at": "zz"}}},
        {"robots": {"a": {}}},
        {"robots": {"a": "m0"}},
        {"robots": [], "waits": {}},
        {"robots": {}, "waits": {"a": {"marker": "m1", "resource": "marker:m1", "holder": "b"}}},
    ],
)
def test_restore_refuses_what_does_not_fit(snap: dict[str, Any]) -> None:
    with pytest.raises(Invalid, match="snapshot"):
        Traffic.restore(LINE, snap)


def test_deadlock_finds_the_cycle_among_chains() -> None:
    grid = grid_map("g", 3, 3)
    traffic = Traffic(grid)
    # d waits for a; a, b, c wait for each other around the top-left square
    for robot, marker in {"a": "r0c0", "b": "r0c1", "c": "r1c1", "e": "r1c0", "d": "r2c0"}.items():
        traffic.place(robot, marker)
    assert traffic.deadlock() is None
    assert isinstance(traffic.request("a", "r0c1"), Blocked)
    assert isinstance(traffic.request("b", "r1c1"), Blocked)
    assert isinstance(traffic.request("c", "r1c0"), Blocked)
    assert isinstance(traffic.request("d", "r1c0"), Blocked)
    assert traffic.deadlock() is None  # e is not waiting
    assert isinstance(traffic.request("e", "r0c0"), Blocked)
    assert traffic.deadlock() == ["a", "b", "c", "e"]
    assert traffic.deadlock("d") == ["a", "b", "c", "e"]  # d's chain leads into it
    assert traffic.deadlock("c") == ["a", "b", "c", "e"]
    traffic.release("d")
    traffic.release("e")
    assert traffic.deadlock() is None


def test_resolve_reroutes_the_lower_priority_robot() -> None:
    grid = grid_map("g", 3, 2)
    traffic = Traffic(grid)
    traffic.place("a", "r0c0")
    traffic.place("b", "r0c2")
    routes = {"a": ["r0c0", "r0c1", "r0c2"], "b": ["r0c2", "r0c1", "r0c0"]}
    traffic.request("a", "r0c1")
    traffic.arrived("a", "r0c1")
    routes["a"] = routes["a"][1:]
    assert isinstance(traffic.request("a", "r0c2"), Blocked)
    assert isinstance(traffic.request("b", "r0c1"), Blocked)
    cycle = traffic.deadlock()
    assert cycle == ["a", "b"]
    assert traffic.resolve(cycle, routes, {"a": 5, "b": 1}) == {
        "b": ["r0c2", "r1c2", "r1c1", "r1c0", "r0c0"]
    }
    # a's goal is where b stands: a could only side-step, b has a clean way round, so b
    # goes round even with the higher priority
    assert traffic.resolve(cycle, routes, {"a": 1, "b": 5}) == {
        "b": ["r0c2", "r1c2", "r1c1", "r1c0", "r0c0"]
    }
    # equal priorities: the smaller name gives way when it can
    assert list(traffic.resolve(cycle, routes, {})) == ["b"]  # a cannot go round
    assert traffic.snapshot()["waits"].keys() == {"a", "b"}  # resolve changes nothing


@pytest.mark.parametrize(
    ("priority", "victim"), [({"a": 1, "b": 5}, "a"), ({"a": 5, "b": 1}, "b"), ({}, "a")]
)
def test_the_lower_priority_robot_gives_way(priority: dict[str, int], victim: str) -> None:
    grid = grid_map("g", 5, 3)
    traffic = Traffic(grid)
    traffic.place("a", "r1c0")
    traffic.place("b", "r1c4")
    routes = {
        "a": ["r1c0", "r1c1", "r1c2", "r1c3", "r1c4"],
        "b": ["r1c4", "r1c3", "r1c2", "r1c1", "r1c0"],
    }
    for robot in ("a", "b", "a"):
        answer = traffic.request(robot, routes[robot][1])
        assert isinstance(answer, Grant)
        traffic.arrived(robot, answer.marker)
        routes[robot].pop(0)
    assert isinstance(traffic.request("a", "r1c3"), Blocked)
    assert isinstance(traffic.request("b", "r1c2"), Blocked)
    cycle = traffic.deadlock()
    assert cycle == ["a", "b"]
    changes = traffic.resolve(cycle, routes, priority)
    assert list(changes) == [victim]
    new_route = changes[victim]
    assert new_route[0] == routes[victim][0]
    assert new_route[-1] == routes[victim][-1]
    assert all(grid.has_lane(x, y) for x, y in pairwise(new_route))
    assert not {"r1c2", "r1c3"} & set(new_route[1:-1])
    assert traffic.snapshot()["waits"].keys() == {"a", "b"}  # resolve changes nothing


def test_head_on_in_a_corridor_resolves_through_the_siding() -> None:
    """Two robots needing each other's markers: the one giving way side-steps into the
    siding, the other passes, both reach their goals, no operator involved."""
    traffic = Traffic(SIDING)
    traffic.place("a", "m1")
    traffic.place("b", "m3")
    routes = {"a": ["m1", "m2", "m3", "m4"], "b": ["m3", "m2", "m1", "m0"]}
    assert isinstance(traffic.request("a", "m2"), Grant)
    traffic.arrived("a", "m2")
    routes["a"].pop(0)
    assert traffic.request("a", "m3") == Blocked("a", "marker:m3", "b")
    assert traffic.request("b", "m2") == Blocked("b", "marker:m2", "a")
    cycle = traffic.deadlock("b")
    assert cycle == ["a", "b"]
    changes = traffic.resolve(cycle, routes, {"a": 1, "b": 2})
    # no way round: a yields into the siding (not back into b's path), then carries on
    assert changes == {"a": ["m2", "s", "m2", "m3", "m4"]}
    routes.update(changes)
    final = simulate(SIDING, traffic, routes, {"a": 1, "b": 2}, seed=3)
    assert final == {"a": "m4", "b": "m0"}


def test_nothing_to_do_when_no_robot_can_move_aside() -> None:
    fmap = grid_map("pair", 2, 1)
    traffic = Traffic(fmap)
    traffic.place("a", "r0c0")
    traffic.place("b", "r0c1")
    traffic.request("a", "r0c1")
    traffic.request("b", "r0c0")
    cycle = traffic.deadlock()
    assert cycle == ["a", "b"]
    routes = {"a": ["r0c0", "r0c1"], "b": ["r0c1", "r0c0"]}
    assert traffic.resolve(cycle, routes, {}) == {}
    assert traffic.resolve(cycle, {}, {}) == {}  # no routes known


# ---------------------------------------------------------------------------- simulation
def simulate(
    fmap: FleetMap,
    traffic: Traffic,
    routes: dict[str, list[str]],
    priority: dict[str, int],
    seed: int,
    limit: int = 50_000,
) -> dict[str, str]:
    """Drive robots along their routes in a random interleaving, the way the fleet service
    does: request the next marker, move when granted, report the checkpoint; after each
    Blocked look for a deadlock and apply `resolve`. Robots parked at their goals are routed
    around. Checks, at every step, the table's invariants and that no two robots are ever
    physically on one marker or lane; a deadlock left unresolved fails. Returns where each
    robot ended (after `limit` steps, some may still be on their way)."""
    rng = random.Random(seed)
    moving: dict[str, tuple[str, str]] = {}  # robot -> the lane (FROM, TO) it is on
    robots = sorted(routes)
    resolutions = 0

    def parked(robot: str) -> bool:
        return robot not in moving and traffic.position(robot) == routes[robot][-1]

    for _ in range(limit):
        active = [r for r in robots if not parked(r)]
        if not active:
            break
        robot = rng.choice(active)
        if robot in moving:
            _, to = moving.pop(robot)
            traffic.arrived(robot, to)
            routes[robot] = routes[robot][1:]
        else:
            route = routes[robot]
            assert route[0] == traffic.position(robot)
            answer = traffic.request(robot, route[1])
            if isinstance(answer, Grant):
                moving[robot] = answer.lane
            else:
                if parked(answer.holder):
                    # go round every robot parked at its goal, if there is a way
                    walls = frozenset(traffic.position(r) or "" for r in robots if parked(r))
                    around = shortest_route(fmap, route[0], route[-1], walls)
                    if around is not None:
                        routes[robot] = around
                        traffic.unwait(robot)
                cycle = traffic.deadlock(robot)
                if cycle is not None:
                    changes = traffic.resolve(cycle, routes, priority)
                    assert changes, f"deadlock {cycle} left unresolved"
                    for victim, new_route in changes.items():
                        assert new_route[0] == traffic.position(victim)
                        routes[victim] = new_route
                        traffic.unwait(victim)
                    resolutions += 1
        check(traffic)
        # where each robot physically is: a marker, or a lane between two markers
        places = [
            f"lane:{lane_key(*moving[r])}" if r in moving else f"marker:{traffic.position(r)}"
            for r in robots
        ]
        assert len(set(places)) == len(places)
        for robot, place in zip(robots, places, strict=True):
            assert traffic.holder(place) == robot
    return {r: traffic.position(r) or "" for r in robots}


def crossing_fleet() -> tuple[FleetMap, dict[str, str], dict[str, str]]:
    """A 12x12 grid: ten robots along rows 1..10 (alternately left->right and right->left)
    and ten down or up columns 1..10, so every row robot crosses every column robot."""
    fmap = grid_map("crossing", 12, 12)
    starts: dict[str, str] = {}
    goals: dict[str, str] = {}
    for i in range(1, 11):
        west, east = f"r{i}c0", f"r{i}c11"
        starts[f"row{i}"], goals[f"row{i}"] = (west, east) if i % 2 else (east, west)
        north, south = f"r0c{i}", f"r11c{i}"
        starts[f"col{i}"], goals[f"col{i}"] = (north, south) if i % 2 else (south, north)
    return fmap, starts, goals


@pytest.mark.parametrize("seed", range(6))
def test_twenty_robots_with_crossing_routes_all_arrive(seed: int) -> None:
    fmap, starts, goals = crossing_fleet()
    traffic = Traffic(fmap)
    routes: dict[str, list[str]] = {}
    for robot, start in starts.items():
        assert traffic.place(robot, start) is None
        route = shortest_route(fmap, start, goals[robot])
        assert route is not None
        routes[robot] = route
    priority = {robot: index % 3 for index, robot in enumerate(sorted(starts))}
    assert simulate(fmap, traffic, routes, priority, seed) == goals
    assert traffic.waits == {}
    assert len(traffic.holds) == 20


@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(3, 6),
    count=st.integers(2, 4),
)
@settings(max_examples=40, deadline=None)
def test_random_fleets_never_share_a_marker_or_lane_and_resolve_every_deadlock(
    seed: int, size: int, count: int
) -> None:
    """Random starts and goals on small grids (crowded): the invariants hold at every step,
    every deadlock is resolved, and every robot gets home unless robots parked at their
    goals wall it in. Fleets whose goals wall each other in from the start are not drawn."""
    fmap = grid_map("random", size, size)
    rng = random.Random(seed)
    spots = rng.sample(sorted(fmap.markers), count * 2)
    starts, goals_list = spots[:count], spots[count:]
    for index in range(count):
        walls = frozenset(g for g in goals_list if g != goals_list[index])
        assume(shortest_route(fmap, starts[index], goals_list[index], walls) is not None)
    traffic = Traffic(fmap)
    routes: dict[str, list[str]] = {}
    for index in range(count):
        robot = f"r{index}"
        traffic.place(robot, starts[index])
        route = shortest_route(fmap, starts[index], goals_list[index])
        assert route is not None
        routes[robot] = route
    goals = {robot: route[-1] for robot, route in routes.items()}
    final = simulate(fmap, traffic, routes, {}, seed, limit=3_000)
    # Robots at their goals stay there (they do not give way: an operator moves them), so
    # on a crowded grid an unlucky order can wall a robot in, and two robots left on a
    # corridor between parked ones cannot pass each other. Any robot not home must be
    # walled in where the others stand; one with a free way home is a livelock.
    for robot, goal in goals.items():
        if final[robot] != goal:
            others = frozenset(final[r] for r in goals if r != robot)
            assert shortest_route(fmap, final[robot], goal, others) is None, (
                f"{robot} at {final[robot]} could still reach {goal}: {final}"
            )


OPS = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.sampled_from(
            [
                *("place", "request", "arrive", "arrive-granted", "release", "unwait"),
                *("write", "lost write"),
            ]
        ),
        st.integers(0, 8),
    ),
    max_size=80,
)


@given(OPS)
@settings(max_examples=200, deadline=None)
def test_any_sequence_of_operations_keeps_the_invariants(ops: list[tuple[int, str, int]]) -> None:
    fmap = grid_map("ops", 3, 3)  # small: robots meet, wait and deadlock often
    names = sorted(fmap.markers)
    traffic = Traffic(fmap)
    rows: dict[str, Place] = {}  # as stored, batch after batch
    for who, op, where in [*ops, (0, "write", 0)]:
        robot, marker = f"robot{who}", names[where]
        before = dict(traffic.holds)
        try:
            if op == "place":
                holder = traffic.place(robot, marker)
                if holder is not None:
                    assert traffic.holds == before
            elif op == "request":
                answer = traffic.request(robot, marker)
                if isinstance(answer, Blocked):
                    assert traffic.holds == before
                    assert answer.holder != robot
            elif op == "arrive":
                traffic.arrived(robot, marker)
            elif op == "arrive-granted":
                following = traffic.granted(robot)
                if following is not None:
                    traffic.arrived(robot, following)
            elif op == "unwait":
                traffic.unwait(robot)  # as the dispatcher does on a re-route
            elif op == "write":  # a batch of decisions stored: the rows read back are the table
                rows = written(rows, traffic.changes())
                assert Traffic.restore(fmap, as_read(rows)).snapshot() == traffic.snapshot()
            elif op == "lost write":  # a batch's write failed: its rows go with the next
                places, gone = traffic.changes()
                traffic.touch([*places, *gone])
            else:
                traffic.release(robot)
        except (Invalid, Conflict):
            assert traffic.holds == before
        check(traffic)
        cycle = traffic.deadlock()
        if cycle is not None:
            for index, robot in enumerate(cycle):
                wait = traffic.waits[robot]
                assert traffic.holder(wait.resource) == cycle[(index + 1) % len(cycle)]
        assert Traffic.restore(fmap, traffic.snapshot()).holds == traffic.holds


def test_standing_robots_are_those_without_a_granted_move() -> None:
    traffic = Traffic(LINE)
    for robot, marker in (("a", "m0"), ("b", "m2"), ("c", "m4")):
        traffic.place(robot, marker)
    assert isinstance(traffic.request("a", "m1"), Grant)
    assert traffic.standing(set()) == {"m2": "b", "m4": "c"}
    assert traffic.standing({"c"}) == {"m2": "b"}  # c has a mission: it is going somewhere
