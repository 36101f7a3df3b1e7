"""Traffic: the time to decide one reservation for 100 robots on a 1,000-marker map.

100 robots drive on a 40x25 grid towards random goals (a new one on arrival), through
corral's `Traffic`: request the next marker (and look for a deadlock when blocked), move,
report the checkpoint; deadlocks are broken with `resolve`. The run is recorded as a trace
of operations, then the same trace is replayed, decision by decision, against corral's table
and against a naive one, timing each: `request` + the deadlock check, and `arrived`.

The naive table is what a first orchestrator does (the seed keeps "the robots' destinations
in memory"): a list of (resource, robot) reservations scanned to see whether a resource is
free, and on every Blocked, the whole wait-for graph rebuilt from that list and searched for
a cycle from every robot. It takes the same decisions (checked), so the comparison is fair:
only the bookkeeping differs. Also timed: `shortest_route` on the map and `resolve` for a
two-robot head-on deadlock.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from corral.model.fleet_map import FleetMap, grid_map, lane_key, shortest_route  # noqa: E402
from corral.model.traffic import Blocked, Grant, Traffic  # noqa: E402

Op = tuple[str, str, str]  # (kind, robot, marker)


class NaiveTable:
    """Reservations in a list, scanned on every question; deadlocks by rebuilding the whole
    wait-for graph and searching it from every robot."""

    def __init__(self, fmap: FleetMap) -> None:
        self.fmap = fmap
        self.reservations: list[tuple[str, str]] = []
        self.at: dict[str, str] = {}
        self.next: dict[str, str] = {}
        self.waits: dict[str, str] = {}  # robot -> resource

    def holder(self, resource: str) -> str | None:
        for held, robot in self.reservations:
            if held == resource:
                return robot
        return None

    def place(self, robot: str, marker: str) -> None:
        self.reservations.append((f"marker:{marker}", robot))
        self.at[robot] = marker

    def request(self, robot: str, marker: str) -> bool:
        at = self.at[robot]
        if not self.fmap.has_lane(at, marker):
            raise ValueError(f"no lane {at}->{marker}")
        wanted = [f"marker:{marker}", f"lane:{lane_key(at, marker)}"]
        for resource in wanted:
            holder = self.holder(resource)
            if holder is not None and holder != robot:
                self.waits[robot] = resource
                return False
        self.reservations += [(resource, robot) for resource in wanted]
        self.next[robot] = marker
        self.waits.pop(robot, None)
        return True

    def arrived(self, robot: str, marker: str) -> None:
        at = self.at[robot]
        behind = {f"marker:{at}", f"lane:{lane_key(at, marker)}"}
        self.reservations = [
            (r, b) for r, b in self.reservations if not (b == robot and r in behind)
        ]
        self.at[robot] = marker
        del self.next[robot]
        self.waits.pop(robot, None)

    def deadlock(self) -> list[str] | None:
        graph: dict[str, str] = {}
        for waiting, resource in self.waits.items():
            holder = self.holder(resource)
            if holder is not None:
                graph[waiting] = holder
        for first in sorted(graph):
            path = [first]
            robot = graph.get(first)
            while robot is not None:
                if robot in path:
                    return path[path.index(robot) :]
                path.append(robot)
                robot = graph.get(robot)
        return None


def record(
    fmap: FleetMap, robots: int, decisions: int, seed: int
) -> tuple[dict[str, str], list[Op]]:
    """Drive the fleet with corral's table; return the starts and the trace of operations."""
    rng = random.Random(seed)
    names = sorted(fmap.markers)
    spots = rng.sample(names, robots)
    starts = {f"robot{i:03}": spot for i, spot in enumerate(spots)}
    traffic = Traffic(fmap)
    routes: dict[str, list[str]] = {}
    moving: set[str] = set()

    def new_goal(robot: str) -> None:
        here = traffic.position(robot) or ""
        while True:
            route = shortest_route(fmap, here, rng.choice(names))
            if route is not None and len(route) > 1:
                routes[robot] = route
                return

    for robot, spot in starts.items():
        traffic.place(robot, spot)
        new_goal(robot)
    trace: list[Op] = []
    stuck: dict[str, int] = {}
    while len(trace) < decisions:
        robot = rng.choice(sorted(starts))
        if robot in moving:
            marker = routes[robot][1]
            traffic.arrived(robot, marker)
            trace.append(("arrived", robot, marker))
            moving.discard(robot)
            routes[robot] = routes[robot][1:]
            if len(routes[robot]) == 1:
                new_goal(robot)
            continue
        marker = routes[robot][1]
        answer = traffic.request(robot, marker)
        trace.append(("request", robot, marker))
        if isinstance(answer, Grant):
            moving.add(robot)
            stuck.pop(robot, None)
            continue
        stuck[robot] = stuck.get(robot, 0) + 1
        cycle = traffic.deadlock(robot)
        if cycle is not None:
            changes = traffic.resolve(cycle, routes, {})
            if not changes:  # nothing to do now: give one of them another goal
                changes = {cycle[0]: []}
            for victim, route in changes.items():
                if route:
                    routes[victim] = route
                else:
                    new_goal(victim)
                traffic.waits.pop(victim, None)
                trace.append(("forget", victim, ""))
        elif stuck[robot] > 50:  # waiting too long behind someone: try elsewhere
            new_goal(robot)
            traffic.waits.pop(robot, None)
            trace.append(("forget", robot, ""))
    return starts, trace


def replay(
    table: Traffic | NaiveTable,
    decide: Callable[[str, str], bool],
    starts: dict[str, str],
    trace: list[Op],
) -> tuple[list[float], int]:
    """Replay the trace on a table; `decide` is its request plus deadlock handling, True
    when granted. Returns the time of each decision (µs) and the grants."""
    for robot, spot in starts.items():
        table.place(robot, spot)
    times: list[float] = []
    grants = 0
    clock = time.perf_counter_ns
    for kind, robot, marker in trace:
        started = clock()
        if kind == "request":
            grants += decide(robot, marker)
        elif kind == "arrived":
            table.arrived(robot, marker)
        else:
            table.waits.pop(robot, None)
            continue
        times.append((clock() - started) / 1000)
    return times, grants


def replay_corral(
    fmap: FleetMap, starts: dict[str, str], trace: list[Op]
) -> tuple[list[float], int]:
    traffic = Traffic(fmap)

    def decide(robot: str, marker: str) -> bool:
        answer = traffic.request(robot, marker)
        if isinstance(answer, Blocked):
            traffic.deadlock(robot)
        return isinstance(answer, Grant)

    return replay(traffic, decide, starts, trace)


def replay_naive(
    fmap: FleetMap, starts: dict[str, str], trace: list[Op]
) -> tuple[list[float], int]:
    table = NaiveTable(fmap)

    def decide(robot: str, marker: str) -> bool:
        granted = table.request(robot, marker)
        if not granted:
            table.deadlock()
        return granted

    return replay(table, decide, starts, trace)


def describe(name: str, values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(f"{name:48} {p50:9.1f} {p99:9.1f} {max(ordered):9.1f} {len(ordered):7}")
    return p50, p99


def time_routes(fmap: FleetMap, count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    names = sorted(fmap.markers)
    times = []
    for _ in range(count):
        start, goal = rng.choice(names), rng.choice(names)
        started = time.perf_counter_ns()
        shortest_route(fmap, start, goal)
        times.append((time.perf_counter_ns() - started) / 1000)
    return times


def time_resolve(fmap: FleetMap, count: int) -> list[float]:
    """Two robots head-on in the middle row of the grid, each needing the other's marker."""
    traffic = Traffic(fmap)
    traffic.place("a", "r12c19")
    traffic.place("b", "r12c20")
    routes = {
        "a": [f"r12c{c}" for c in range(19, 40)],
        "b": [f"r12c{c}" for c in range(20, -1, -1)],
    }
    traffic.request("a", "r12c20")
    traffic.request("b", "r12c19")
    cycle = traffic.deadlock()
    if cycle != ["a", "b"]:
        raise RuntimeError(f"expected a deadlock, got {cycle}")
    times = []
    for _ in range(count):
        started = time.perf_counter_ns()
        changes = traffic.resolve(cycle, routes, {"a": 1, "b": 2})
        times.append((time.perf_counter_ns() - started) / 1000)
    if list(changes) != ["a"]:
        raise RuntimeError(f"unexpected resolution {changes}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--robots", type=int, default=100)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    fmap = grid_map("bench", 40, 25)
    print(
        f"traffic: {args.robots} robots on a {len(fmap.markers)}-marker map (40x25 grid), "
        f"{args.decisions} decisions, {dt.datetime.now():%Y-%m-%d %H:%M}"
    )
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    starts, trace = record(fmap, args.robots, args.decisions, args.seed)
    requests = sum(1 for kind, _, _ in trace if kind == "request")
    forgets = sum(1 for kind, _, _ in trace if kind == "forget")
    naive_times, naive_grants = replay_naive(fmap, starts, trace)
    ours_times, ours_grants = replay_corral(fmap, starts, trace)
    if naive_grants != ours_grants:
        raise RuntimeError(f"the tables disagree: {naive_grants} against {ours_grants} grants")
    print(
        f"trace: {requests} requests ({ours_grants} granted), "
        f"{len(trace) - requests - forgets} checkpoints, {forgets} re-routes"
    )
    print(f"{'per decision':48} {'p50 µs':>9} {'p99 µs':>9} {'max µs':>9} {'n':>7}")
    base = describe("naive (scanned list, whole wait-for graph)", naive_times)
    ours = describe("corral Traffic (request + deadlock, arrived)", ours_times)
    print(f"ratio naive/corral: p50 {base[0] / ours[0]:.1f}x, p99 {base[1] / ours[1]:.1f}x")
    describe("shortest_route, random pairs (A*)", time_routes(fmap, 2_000, args.seed))
    describe("resolve, two robots head-on", time_resolve(fmap, 1_000))


if __name__ == "__main__":
    main()
