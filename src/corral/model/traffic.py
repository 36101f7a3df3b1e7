"""Traffic on one map: which robot holds which marker and lane, who waits for whom, and how
a deadlock between waiting robots is broken.

Used by the fleet service (every telemetry placement, move request and checkpoint goes
through one `Traffic` per map); pure and synchronous, so the simulator and tests drive it.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from corral.errors import Conflict, Invalid
from corral.model.fleet_map import FleetMap, lane_key, shortest_route

MARKER = "marker:"
LANE = "lane:"


def marker_resource(marker: str) -> str:
    return MARKER + marker


def lane_resource(a: str, b: str) -> str:
    return LANE + lane_key(a, b)


@dataclass(frozen=True)
class Grant:
    """`robot` may move along `lane` (FROM, TO) to `marker`: both are reserved for it."""

    robot: str
    marker: str
    lane: tuple[str, str]


@dataclass(frozen=True)
class Blocked:
    """`robot` may not move yet: `resource` is held by `holder`."""

    robot: str
    resource: str
    holder: str


@dataclass(frozen=True)
class Wait:
    """What a blocked robot asked for (`marker`), the resource it could not have and the
    robot that held it when it asked."""

    marker: str
    resource: str
    holder: str


Place = tuple[str, str | None, Wait | None]  # a robot's marker, granted move and wait


@dataclass
class _Plan:
    """What `Traffic.resolve` knows about one robot of a deadlock."""

    robot: str
    at: str
    goal: str
    contested: set[str] = field(default_factory=set)  # held or wanted by the rest of the cycle
    queued: set[str] = field(default_factory=set)  # held by robots waiting for this one
    standing: set[str] = field(default_factory=set)  # held by robots standing still
    ahead: set[str] = field(default_factory=set)  # on the others' routes


class Traffic:
    """The reservation table of one map.

    Each robot holds the marker it is at and, once granted a move, the lane to its next
    marker and that marker: at most three resources. A resource (`marker:<id>` or
    `lane:<a>|<b>`) is held by at most one robot; a lane is one resource in both directions,
    so two robots never swap along it. A robot that drops offline keeps what it holds until
    it reports again or an operator calls `release`.
    """

    def __init__(self, fmap: FleetMap) -> None:
        self.fmap = fmap
        self.holds: dict[str, str] = {}  # resource -> robot
        self.waits: dict[str, Wait] = {}  # robot -> what it waits for (`_wait` writes it)
        self._waiting: dict[str, set[str]] = {}  # resource -> the robots waiting for it
        self._at: dict[str, str] = {}  # robot -> the marker it is at
        self._next: dict[str, tuple[str, str]] = {}  # robot -> (granted marker, FROM)
        # The robots whose row (entry and wait) changed since `changes` last took them: a
        # batch of decisions writes those rows only, without comparing 1,000 robots.
        self._touched: set[str] = set()

    # ------------------------------------------------------------------ queries
    def position(self, robot: str) -> str | None:
        """The marker the robot is at (the last one placed or arrived at), or None."""
        return self._at.get(robot)

    def granted(self, robot: str) -> str | None:
        """The next marker the robot has been granted and not yet reached, or None."""
        step = self._next.get(robot)
        return step[0] if step else None

    def holder(self, resource: str) -> str | None:
        return self.holds.get(resource)

    def held(self, robot: str) -> list[str]:
        """What the robot holds: its marker, then its lane and next marker if granted."""
        at = self._at.get(robot)
        if at is None:
            return []
        out = [MARKER + at]
        step = self._next.get(robot)
        if step is not None:
            out += [lane_resource(step[1], step[0]), MARKER + step[0]]
        return out

    def standing(self, besides: Container[str]) -> dict[str, str]:
        """Robots with no granted move, other than those in `besides`: marker -> robot."""
        moving = self._next
        return {at: r for r, at in self._at.items() if r not in moving and r not in besides}

    def robots(self) -> list[str]:
        """Every robot that holds something, by name."""
        return sorted(self._at)

    # ------------------------------------------------------------------ changes
    def place(self, robot: str, marker: str) -> str | None:
        """The robot is physically at `marker` (its first report, or after corral restarts):
        it holds that marker and lets go of anything else it held.

        When another robot already holds that marker, nothing changes and that robot's name
        is returned: a physical conflict the caller reports as an event (corral never takes
        a reservation away from a robot that may be standing there). Otherwise None.
        """
        self._known(marker)
        resource = MARKER + marker
        holder = self.holds.get(resource)
        if holder is not None and holder != robot:
            return holder
        self._drop(robot)
        self.holds[resource] = robot
        self._at[robot] = marker
        self._touched.add(robot)
        return None

    def request(self, robot: str, next_marker: str) -> Grant | Blocked:
        """Reserve the lane from the robot's marker to `next_marker` and that marker, both or
        neither. Blocked is also recorded in `waits`; a Grant clears the robot's wait.

        Invalid when the robot holds no marker or there is no lane it may use; Conflict when it
        already has another move granted (it must report that checkpoint first). Asking again
        for the move already granted returns the same Grant.
        """
        at = self._at.get(robot)
        if at is None:
            raise Invalid(
                f"robot {robot!r} is at no marker; it must report its position first",
                {"robot": robot},
            )
        self._known(next_marker)
        if not self.fmap.has_lane(at, next_marker):
            raise Invalid(
                f"map {self.fmap.name}: no lane from {at!r} to {next_marker!r}",
                {"robot": robot, "lane": [at, next_marker]},
            )
        step = self._next.get(robot)
        if step is not None:
            if step == (next_marker, at):
                return Grant(robot, next_marker, (at, next_marker))
            raise Conflict(
                f"robot {robot!r} is already moving to {step[0]!r}; it must reach it first",
                {"robot": robot, "granted": step[0], "asked": next_marker},
            )
        holds = self.holds
        marker = MARKER + next_marker
        lane = LANE + lane_key(at, next_marker)
        for resource in (marker, lane):
            holder = holds.get(resource)
            if holder is not None and holder != robot:
                self._wait(robot, Wait(next_marker, resource, holder))
                return Blocked(robot, resource, holder)
        holds[marker] = robot
        holds[lane] = robot
        self._next[robot] = (next_marker, at)
        self._wait(robot, None)
        self._touched.add(robot)
        return Grant(robot, next_marker, (at, next_marker))

    def arrived(self, robot: str, marker: str) -> list[str]:
        """Checkpoint: the robot reached `marker`, which it was granted; release the marker
        behind it and the lane, and return them. A checkpoint at the marker it is already at
        changes nothing; any other marker is a Conflict naming it."""
        self._known(marker)
        at = self._at.get(robot)
        if at == marker:
            return []
        step = self._next.get(robot)
        if at is None or step is None or step[0] != marker:
            where = f"at {at!r}" if at is not None else "at no marker"
            granted = f", granted {step[0]!r}" if step is not None else ", granted nothing"
            raise Conflict(
                f"robot {robot!r} reported marker {marker!r} but is {where}{granted}",
                {"robot": robot, "marker": marker, "at": at, "granted": step and step[0]},
            )
        released = [MARKER + at, lane_resource(at, marker)]
        for resource in released:
            del self.holds[resource]
        del self._next[robot]
        self._at[robot] = marker
        self._wait(robot, None)
        self._touched.add(robot)
        return released

    def release(self, robot: str) -> list[str]:
        """The operator clears a robot (offline, removed): free everything it holds."""
        return self._drop(robot)

    def unwait(self, robot: str) -> None:
        """Forget what the robot waits for (the dispatcher re-routes it)."""
        self._wait(robot, None)

    def waiting_for(self, resources: Iterable[str]) -> set[str]:
        """The robots waiting for any of `resources`."""
        waiting = self._waiting
        return {r for resource in resources for r in waiting.get(resource, ())}

    def _wait(self, robot: str, wait: Wait | None) -> None:
        """Set (or, with None, end) what the robot waits for; its row changes only when the
        wait does (a robot asking again for the same move waits as it did)."""
        before = self.waits.get(robot)
        if before == wait:
            return
        if before is not None:
            robots = self._waiting[before.resource]
            robots.discard(robot)
            if not robots:
                del self._waiting[before.resource]
        if wait is None:
            del self.waits[robot]
        else:
            self.waits[robot] = wait
            self._waiting.setdefault(wait.resource, set()).add(robot)
        self._touched.add(robot)

    def _drop(self, robot: str) -> list[str]:
        released = self.held(robot)
        for resource in released:
            del self.holds[resource]
        self._at.pop(robot, None)
        self._next.pop(robot, None)
        self._wait(robot, None)
        self._touched.add(robot)
        return released

    def _markers(self, robot: str) -> list[str]:
        """The markers a robot holds: where it is and where it was granted to go."""
        at = self._at.get(robot)
        if at is None:
            return []
        step = self._next.get(robot)
        return [at] if step is None else [at, step[0]]

    def _known(self, marker: str) -> None:
        if marker not in self.fmap.markers:
            raise Invalid(
                f"map {self.fmap.name}: unknown marker {marker!r}",
                {"map": self.fmap.name, "marker": marker},
            )

    # ------------------------------------------------------------------ deadlocks
    def deadlock(self, start: str | None = None) -> list[str] | None:
        """A cycle of robots each waiting for what the next one holds, in wait order and
        starting with the smallest name; None when there is none.

        Each robot waits for one resource, so the wait-for graph has at most one edge per
        robot: from `start` (the robot just blocked) this follows at most one chain; without
        `start`, every chain, still in time linear in the number of waiting robots.
        """
        holds, waits = self.holds, self.waits
        seen: set[str] = set()
        starts = [start] if start is not None else list(waits)
        for first in starts:
            if first in seen:
                continue
            chain: dict[str, int] = {}
            robot: str | None = first
            while robot is not None and robot not in seen:
                chain[robot] = len(chain)
                seen.add(robot)
                wait = waits.get(robot)
                robot = holds.get(wait.resource) if wait is not None else None
            if robot is not None and robot in chain:
                cycle = list(chain)[chain[robot] :]
                pivot = cycle.index(min(cycle))
                return cycle[pivot:] + cycle[:pivot]
        return None

    def resolve(
        self, cycle: list[str], routes: dict[str, list[str]], priority: dict[str, int]
    ) -> dict[str, list[str]]:
        """How to break a deadlock: `{robot: new_route}` (from its marker to its goal, the
        last marker of `routes[robot]`) for the robot that gives way; empty when nothing can
        be done now (the caller raises an event and tries again later).

        Ways out, best first; within each, robots from the lowest priority (then name):
        1. a route to the goal avoiding every marker the rest of the cycle holds or wants,
           the robots queued behind this one and the robots standing still (parked, offline);
        2. a side-step to a free neighbour the cycle neither holds nor wants and that is off
           the others' routes, then on to the goal without passing a standing robot;
        3. the same with a neighbour on the others' routes (backing up);
        4. a route as in 1 that may pass standing robots; 5. a side-step whose way on may;
        6. a route avoiding only what the rest of the cycle holds or wants.

        The guarantee: the first step of the new route is never a marker the rest of the
        cycle holds or wants, so once the robot takes it, it frees the marker the robot
        behind it in the cycle waits for; that robot proceeds and the cycle is gone. Robots
        outside the cycle may still be in the way (the caller checks `deadlock` again after
        each Blocked, and bounds how often it resolves before raising an event). Nothing here
        changes the table: the caller sends the robot its new route, forgets its old wait,
        and the robot asks for the first step with `request`.
        """
        members = set(cycle)
        standing = {
            at
            for robot, at in self._at.items()
            if robot not in self.waits and robot not in self._next
        }
        plans: list[_Plan] = []
        for victim in sorted(cycle, key=lambda r: (priority.get(r, 0), r)):
            at = self._at.get(victim)
            route = routes.get(victim)
            if at is None or not route:
                continue
            plan = _Plan(victim, at, route[-1])
            for other in members - {victim}:
                plan.contested.update(self._markers(other))
                wait = self.waits.get(other)
                if wait is not None:
                    plan.contested.add(wait.marker)
                plan.ahead.update(routes.get(other, ()))
            wait = self.waits.get(victim)
            if wait is not None:
                plan.contested.add(wait.marker)
            plan.contested.discard(at)
            # Robots outside the cycle queued behind this one: stepping towards them would
            # only start a new head-on deadlock.
            for other, wait in self.waits.items():
                if other not in members and self.holds.get(wait.resource) == victim:
                    plan.queued.update(self._markers(other))
                    plan.ahead.update(routes.get(other, ()))
            plan.standing = standing - {at}
            plans.append(plan)
        for tier in range(1, 7):
            for plan in plans:
                found = self._way_out(plan, tier)
                if found is not None:
                    return {plan.robot: found}
        return {}

    def _way_out(self, plan: _Plan, tier: int) -> list[str] | None:
        fmap, at, goal = self.fmap, plan.at, plan.goal
        if tier in (1, 4, 6):
            if goal == at:
                return None
            avoid = plan.contested | plan.queued if tier < 6 else plan.contested
            if tier == 1:
                avoid = avoid | plan.standing
            return shortest_route(fmap, at, goal, frozenset(avoid))
        best: tuple[tuple[float, str], list[str]] | None = None
        for side in fmap.neighbours(at):
            if side in plan.contested or MARKER + side in self.holds:
                continue
            if tier == 2 and side in plan.ahead:
                continue
            ways = [plan.contested | plan.standing | {at}, plan.standing | {at}, plan.standing]
            if tier == 5:
                ways += [{at}, set()]
            for avoid in ways:
                onward = shortest_route(fmap, side, goal, frozenset(avoid - {side}))
                if onward is not None:
                    cost = sum(fmap.length(a, b) for a, b in pairwise(onward))
                    if best is None or (cost, side) < best[0]:
                        best = ((cost, side), [at, *onward])
                    break
        return best[1] if best is not None else None

    # ------------------------------------------------------------------ persistence
    def snapshot(self) -> dict[str, Any]:
        """The table as JSON: `holds` and `waits` for the API, `robots` (marker, granted move)
        for `restore`."""
        robots: dict[str, Any] = {}
        for robot, at in sorted(self._at.items()):
            step = self._next.get(robot)
            robots[robot] = {"at": at, "next": step[0] if step else None}
        return {
            "holds": dict(sorted(self.holds.items())),
            "waits": {
                r: {"marker": w.marker, "resource": w.resource, "holder": w.holder}
                for r, w in sorted(self.waits.items())
            },
            "robots": robots,
        }

    def changes(self) -> tuple[dict[str, Place], set[str]]:
        """Take the rows changed since the last call: the robots whose row changed, each
        with its row now, and the robots gone from the table (their rows to delete)."""
        touched, self._touched = self._touched, set()
        at, moves, waits = self._at, self._next, self.waits
        places: dict[str, Place] = {}
        for r in touched:
            if r in at:
                step = moves.get(r)
                places[r] = (at[r], step[0] if step else None, waits.get(r))
        return places, touched - places.keys()

    def touch(self, robots: Iterable[str]) -> None:
        """Have the next `changes` give these robots' rows again (a write that failed, or a
        table that replaces one whose changes are not all written)."""
        self._touched.update(robots)

    def pending(self) -> set[str]:
        """The robots whose rows the next `changes` gives."""
        return set(self._touched)

    @classmethod
    def restore(cls, fmap: FleetMap, snapshot: dict[str, Any]) -> Traffic:
        """The table a `snapshot` described; Invalid if it does not fit the map or is
        inconsistent (two robots on one resource, a move along no lane)."""
        traffic = cls(fmap)
        robots = snapshot.get("robots", {})
        waits = snapshot.get("waits", {})
        if not isinstance(robots, dict) or not isinstance(waits, dict):
            raise Invalid("a traffic snapshot has robots and waits mappings", {"map": fmap.name})
        try:
            for robot, item in robots.items():
                at, step = item["at"], item.get("next")
                holder = traffic.place(str(robot), str(at))
                if holder is not None:
                    raise Conflict(f"marker {at!r} is held by {holder!r}", {"marker": at})
                if step is not None:
                    answer = traffic.request(str(robot), str(step))
                    if isinstance(answer, Blocked):
                        raise Conflict(
                            f"{answer.resource} is held by {answer.holder!r}",
                            {"resource": answer.resource},
                        )
            for robot, item in waits.items():
                if robot not in traffic._at:
                    raise Conflict(f"robot {robot!r} waits but is at no marker", {})
                wait = Wait(str(item["marker"]), str(item["resource"]), str(item["holder"]))
                traffic._known(wait.marker)
                traffic._wait(str(robot), wait)
        except (KeyError, TypeError, AttributeError, Conflict, Invalid) as exc:
            reason = exc.message if isinstance(exc, Conflict | Invalid) else f"missing {exc}"
            raise Invalid(
                f"map {fmap.name}: the traffic snapshot does not fit: {reason}",
                {"map": fmap.name},
            ) from None
        traffic._touched.clear()  # the table as stored: none of its rows to write again
        return traffic
