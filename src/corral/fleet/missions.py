"""Maps, missions and traffic: each robot's destination and objective, routed on its map;
the next stretch reserved before a robot is told to move; checkpoints that release what
is behind it; deadlocks found and broken (re-route, or yield by priority).

Owned by the fleet service, which feeds it checkpoints and positions and gives it a way
to deliver commands. Decisions happen in memory under one lock, so they are serial and
cheap (no await under it); the journal stores them in batches, then sends and announces.
"""

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from corral.errors import Conflict, Invalid, NotFound
from corral.events import EventBus
from corral.fleet.journal import Deliver, Journal, MissionEnd
from corral.fleet.meter import FleetMeter
from corral.model.fleet_map import FleetMap, lane_key, parse_map, shortest_route
from corral.model.traffic import MARKER, Blocked, Traffic, marker_resource
from corral.store.fleet import FleetStore
from corral.store.tables import MissionRow, utcnow

MAX_REROUTES = 20  # per mission: past this a deadlock is left to an operator (and said so)
ENDED = ("FINISHED", "FAILED")  # an action's last status
TICK_SLICE = 100  # robots the tick asks again per turn of the event loop


def mission_doc(row: MissionRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "robot": row.robot,
        "map": row.map,
        "goal": row.goal,
        "objective": row.objective,
        "route": row.route,
        "progress": row.progress,
        "at": row.route[row.progress] if row.route else None,
        "state": row.state,
        "reason": row.reason,
        "task_id": row.task_id,
        "actions": row.actions or [],
        "created_at": row.created_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
    }


class Dispatcher:
    def __init__(
        self,
        store: FleetStore,
        bus: EventBus,
        deliver: Deliver,
        meter: FleetMeter,
        priority: Callable[[str], int],
    ) -> None:
        self.store = store
        self.bus = bus
        self.meter = meter
        self.maps: dict[str, FleetMap] = {}
        self.traffic: dict[str, Traffic] = {}
        self.active: dict[str, MissionRow] = {}  # robot -> its active mission
        self.priority = priority  # a robot's priority, as the fleet service knows it
        self.on_end: list[MissionEnd] = []
        self.journal = Journal(store, bus, self._table, deliver, self.on_end, meter)
        self.lock = asyncio.Lock()
        self._breaking: set[str] = set()
        self._reported: dict[str, tuple[str, ...]] = {}
        self._reroutes: dict[int, int] = {}  # mission id -> re-routes so far
        self._blocked_said: dict[int, tuple[int, str]] = {}

    async def load(self) -> None:
        """Everything as stored (a replica taking the lead): read first, then replaced at
        once, so no reader sees a half-read fleet."""
        self.journal.forget()  # what this process decided in an earlier term is void
        maps, traffic = await self._read()
        active = {m.robot: m for m in await self.store.missions("active", limit=None)}
        self.maps, self.traffic, self.active = maps, traffic, active

    async def read_maps(self) -> None:
        """The maps as stored, for a replica that does not lead (it checks reports against
        them); its traffic, missions and journal are left as they are."""
        maps, traffic = await self._read()
        for name, table in traffic.items():
            self.traffic.setdefault(name, table)
        self.maps = maps

    async def _read(self) -> tuple[dict[str, FleetMap], dict[str, Traffic]]:
        maps: dict[str, FleetMap] = {}
        traffic: dict[str, Traffic] = {}
        for row, table in await self.store.maps():
            fmap = parse_map(row.doc, f"map {row.name}")
            maps[row.name] = fmap
            traffic[row.name] = Traffic.restore(fmap, table)
        return maps, traffic

    # ------------------------------------------------------------------ maps
    async def put_map(self, data: Any, source: str) -> tuple[FleetMap, bool]:
        fmap = parse_map(data, source)
        async with self.lock:
            old = self.traffic.get(fmap.name)
            if old is not None:
                missing = [
                    r.removeprefix(MARKER)
                    for r in old.holds
                    if r.startswith(MARKER) and r.removeprefix(MARKER) not in fmap.markers
                ]
                if missing:
                    raise Conflict(
                        f"map {fmap.name}: robots stand on marker(s) the new map lacks: "
                        f"{', '.join(sorted(missing)[:5])}"
                    )
            # Whatever the restore refuses must be refused before the map is stored.
            traffic = Traffic.restore(fmap, old.snapshot()) if old is not None else Traffic(fmap)
            created = await self.store.put_map(fmap.name, fmap.as_dict())
            if old is not None:  # the old table's rows not written yet go with the new one
                traffic.touch(old.pending())
            self.maps[fmap.name] = fmap
            self.traffic[fmap.name] = traffic
            self.journal.changed(fmap.name)
        await self.journal.commit()
        await self.bus.emit(
            "map.created" if created else "map.updated",
            f"map/{fmap.name}",
            f"map {fmap.name}: {len(fmap.markers)} markers, {len(fmap.lanes)} lanes",
        )
        return fmap, created

    def check_marker(self, map_name: str, marker: str) -> None:
        """Refuse (422) a marker the map does not have."""
        if marker not in self.map(map_name).markers:
            raise Invalid(f"marker {marker!r} is not on map {map_name}", {"marker": marker})

    def map(self, name: str) -> FleetMap:
        fmap = self.maps.get(name)
        if fmap is None:
            known = ", ".join(sorted(self.maps)) or "none yet"
            raise NotFound(f"map {name!r} not found (maps: {known})", {"map": name})
        return fmap

    # ------------------------------------------------------------------ positions
    async def place(self, robot: str, map_name: str, marker: str) -> None:
        """The robot is physically at `marker` (registration, its first report)."""
        self.check_marker(map_name, marker)
        async with self.lock:
            traffic = self.traffic[map_name]
            if traffic.position(robot) == marker:
                return
            before = traffic.held(robot)
            other = traffic.place(robot, marker)
            if other is not None:
                raise Conflict(
                    f"marker {marker} on map {map_name} is held by robot {other}",
                    {"marker": marker, "holder": other},
                )
            self.journal.changed(map_name)
            # what it held elsewhere is free: the robots waiting for it ask again
            self._retry_waiting(map_name, traffic.waiting_for(before))
        await self.journal.commit()

    def granted(self, robot: str, map_name: str) -> str | None:
        traffic = self.traffic.get(map_name)
        return traffic.granted(robot) if traffic is not None else None

    def position(self, robot: str, map_name: str | None) -> str | None:
        if map_name is None or map_name not in self.traffic:
            return None
        return self.traffic[map_name].position(robot)

    async def clear(self, robot: str, map_name: str | None) -> list[str]:
        if map_name is None or map_name not in self.traffic:
            return []
        async with self.lock:
            released = self.traffic[map_name].release(robot)
            self.journal.changed(map_name)
            self._retry_waiting(map_name)
        await self.journal.commit()
        return released

    # ------------------------------------------------------------------ missions
    async def start(
        self,
        robot: str,
        map_name: str,
        goal: str,
        objective: str,
        task_id: int | None = None,
        actions: list[dict[str, Any]] | None = None,
    ) -> MissionRow:
        """A mission to `goal`; with `actions` ({id, type, blocking, parameters}), done once
        the robot is there and each action FINISHED (failed when one FAILED)."""
        fmap = self.map(map_name)
        if goal not in fmap.markers:
            raise NotFound(f"goal {goal!r} is not a marker of map {map_name}", {"field": "goal"})
        async with self.lock:
            if robot in self.active:
                raise Conflict(
                    f"robot {robot} already has mission {self.active[robot].id}; cancel it first",
                    {"mission": self.active[robot].id},
                )
            here = self.traffic[map_name].position(robot)
            if here is None:
                raise Conflict(
                    f"robot {robot} has no known position on map {map_name}: register it with a "
                    "marker, or let it report one",
                    {"robot": robot},
                )
            standing = frozenset(m for m in self._standing(map_name) if m not in (here, goal))
            route = shortest_route(fmap, here, goal, standing) or shortest_route(fmap, here, goal)
            if route is None:
                raise Invalid(f"no route from {here} to {goal} on map {map_name}")
            row = await self.store.add_mission(
                MissionRow(
                    robot=robot,
                    map=map_name,
                    goal=goal,
                    objective=objective,
                    route=route,
                    progress=0,
                    state="active",
                    reason="",
                    task_id=task_id,
                    actions=[{**a, "status": None} for a in actions or []],
                    created_at=utcnow(),
                )
            )
            self.active[robot] = row
            self.journal.event(
                "mission.started",
                f"mission/{row.id}",
                f"mission {row.id}: {robot} to {goal} ({' > '.join(route)})"
                + (f": {objective}" if objective else ""),
                {"robot": robot, "goal": goal, "route": route},
            )
            self.journal.command(
                robot, "mission", {"mission": row.id, "goal": goal, "objective": objective}
            )
            self._advance(robot)
        await self.journal.commit()
        return row

    async def cancel(self, mission_id: int, reason: str = "cancelled by request") -> MissionRow:
        async with self.lock:
            row = next((m for m in self.active.values() if m.id == mission_id), None)
            if row is not None:
                self._finish(row, "cancelled", reason)
        await self.journal.commit()
        stored = await self.store.mission(mission_id)
        if row is None:
            raise Conflict(f"mission {mission_id} is {stored.state}")
        return stored

    def _finish(self, row: MissionRow, state: str, reason: str = "") -> None:
        """End an active mission (under the lock); its end hooks run once it is stored."""
        if self.active.get(row.robot) is not row:
            return
        del self.active[row.robot]
        row.state, row.reason, row.finished_at = state, reason, utcnow()
        self.journal.mission(row.id, state=state, reason=reason, finished_at=row.finished_at)
        self.journal.event(
            f"mission.{state}",
            f"mission/{row.id}",
            f"mission {row.id} ({row.robot} to {row.goal}) {state}"
            + (f": {reason}" if reason else ""),
            {"robot": row.robot, "goal": row.goal},
        )
        self.journal.ended(row)

    def _at_goal(self, mission: MissionRow) -> None:
        """The robot is at its goal: done, unless actions there have not ended (it waits
        for them) or one failed (under the lock)."""
        actions = mission.actions or []
        if any(a["status"] not in ENDED for a in actions):
            return
        failed = [a["type"] for a in actions if a["status"] == "FAILED"]
        if failed:
            self._finish(mission, "failed", f"action {failed[0]} at {mission.goal} failed")
        else:
            self._finish(mission, "done")

    async def action_states(self, robot: str, states: dict[str, str]) -> None:
        """What the robot reports of its mission's actions (action id -> status): each
        change is stored with an event; at the goal, the last one to end ends the mission."""
        mission = self.active.get(robot)
        if mission is None or not mission.actions:
            return
        async with self.lock:
            if self.active.get(robot) is not mission:
                return
            changed = False
            for action in mission.actions:
                status = states.get(action["id"])
                if status is None or status == action["status"] or action["status"] in ENDED:
                    continue
                action["status"], changed = status, True
                self.journal.event(
                    "mission.action",
                    f"mission/{mission.id}",
                    f"mission {mission.id}: {robot}'s {action['type']} at {mission.goal} "
                    f"{status.lower()}",
                    {"robot": robot, "action": action["id"], "type": action["type"]}
                    | {"status": status},
                )
            if not changed:
                return
            mission.actions = [dict(a) for a in mission.actions]
            self.journal.mission(mission.id, actions=mission.actions)
            if self.traffic[mission.map].position(robot) == mission.goal:
                self._at_goal(mission)
        await self.journal.commit()

    # ------------------------------------------------------------------ checkpoints
    async def checkpoint(self, robot: str, map_name: str, marker: str) -> None:
        """The robot reached `marker`: release what is behind it, move it on, and let the
        robots waiting on this map try again. Returns once all that is stored and sent."""
        self.check_marker(map_name, marker)
        async with self.lock:
            traffic = self.traffic[map_name]
            if traffic.position(robot) == marker:
                return
            holder = traffic.holder(marker_resource(marker))
            if holder == robot:
                self.meter.checkpoints_taken += 1
                released = traffic.arrived(robot, marker)
                self.journal.changed(map_name)
                self.journal.robot(robot, marker=marker)
                mission = self.active.get(robot)
                if mission is not None and marker in mission.route[mission.progress :]:
                    mission.progress = mission.route.index(marker, mission.progress)
                    self.journal.mission(mission.id, progress=mission.progress)
                if mission is not None and marker == mission.goal:
                    self._at_goal(mission)
                else:
                    self._advance(robot)
                self._retry_waiting(map_name, traffic.waiting_for(released))
        if holder == robot:
            await self.journal.commit()
            return
        self.meter.checkpoints_refused += 1
        await self.bus.emit(
            "robot.off_route",
            f"robot/{robot}",
            f"robot {robot} reports {marker}, which was not reserved for it"
            + (f" (held by {holder})" if holder else ""),
            {"marker": marker, "holder": holder},
        )
        raise Conflict(
            f"checkpoint {marker} was not reserved for {robot}",
            {"marker": marker, "holder": holder},
        )

    # ------------------------------------------------------------------ the traffic loop
    def _advance(self, robot: str) -> None:
        """Reserve the robot's next stretch and tell it to go; called under the lock."""
        mission = self.active.get(robot)
        if mission is None:
            return
        traffic = self.traffic[mission.map]
        here = traffic.position(robot)
        if here is None:
            return
        if here != mission.route[mission.progress]:
            if here not in mission.route[mission.progress :]:
                return
            # corral stopped between storing the robot's arrival and its progress
            mission.progress = mission.route.index(here, mission.progress)
            self.journal.mission(mission.id, progress=mission.progress)
        if here == mission.goal:
            self._at_goal(mission)
            return
        following = mission.route[mission.progress + 1]
        if traffic.holder(marker_resource(following)) == robot:
            return  # granted already; waiting for its checkpoint
        waited = traffic.waits.get(robot)
        answer = traffic.request(robot, following)
        if not isinstance(answer, Blocked) or traffic.waits.get(robot) != waited:
            self.journal.changed(mission.map)  # a grant, or a new wait (not the same again)
        if isinstance(answer, Blocked):
            if traffic.waits.get(robot) != waited:
                self.meter.refusals += 1
            if not self._around_standing(mission, answer):
                # a new cycle can only pass through this robot's wait (a grant leaves its
                # holder waiting for nothing): follow its one chain, not every waiting robot
                self._break_deadlock(mission.map, robot)
            return
        self.meter.grants += 1
        self.journal.command(
            robot, "move", {"marker": following, "lane": [here, following], "mission": mission.id}
        )

    def _standing(self, map_name: str) -> dict[str, str]:
        """Robots on the map with no mission and no granted move: marker -> robot."""
        return self.traffic[map_name].standing(self.active)

    def _around_standing(self, mission: MissionRow, blocked: Blocked) -> bool:
        """Blocked by a robot that is not going anywhere: route around it (True), or say so
        once and wait (False is returned only when the holder is moving)."""
        traffic = self.traffic[mission.map]
        holder = blocked.holder
        if holder in self.active or traffic.granted(holder) is not None:
            return False  # the holder is on its way: wait (cheaper than listing who stands)
        standing = self._standing(mission.map)
        if holder not in standing.values():
            return False
        here = mission.route[mission.progress]
        avoid = frozenset(m for m in standing if m != here)
        route = shortest_route(self.maps[mission.map], here, mission.goal, avoid)
        if route is None or mission.goal in standing:
            key = (mission.id, blocked.holder)
            if self._blocked_said.get(mission.id) != key:
                self._blocked_said[mission.id] = key
                self.journal.event(
                    "traffic.blocked",
                    f"mission/{mission.id}",
                    f"{mission.robot} waits for {blocked.holder}, which stands on its way with no "
                    "mission and there is no way around; move it or give it a mission",
                    {"robot": mission.robot, "holder": blocked.holder},
                )
            return True
        mission.route, mission.progress = route, 0
        self.journal.mission(mission.id, route=route, progress=0)
        traffic.unwait(mission.robot)
        self.journal.event(
            "traffic.rerouted",
            f"mission/{mission.id}",
            f"{mission.robot} re-routed around {blocked.holder} (standing) via {' > '.join(route)}",
            {"robot": mission.robot, "route": route, "around": blocked.holder},
        )
        self._advance(mission.robot)
        return True

    def _break_deadlock(self, map_name: str, start: str | None = None) -> None:
        if map_name in self._breaking:
            return  # a resolution on this map is under way; the next tick looks again
        self._breaking.add(map_name)
        try:
            self._resolve(map_name, start)
        finally:
            self._breaking.discard(map_name)

    def _resolve(self, map_name: str, start: str | None = None) -> None:
        """Find a deadlock on the map (the one `start`'s wait leads into, or any: the tick's
        look over every waiting robot) and break it by re-routing or a side-step."""
        traffic = self.traffic[map_name]
        cycle = traffic.deadlock(start)
        if cycle is None:
            if start is None:
                self._reported.pop(map_name, None)
            return
        routes = {
            r: self.active[r].route[self.active[r].progress :]
            for r in cycle
            if r in self.active and self._reroutes.get(self.active[r].id, 0) < MAX_REROUTES
        }
        changes = {}
        if routes:
            priority = {r: self.priority(r) for r in cycle}
            changes = traffic.resolve(cycle, routes, priority)
            changes = {r: route for r, route in changes.items() if r in routes}
        if not changes:
            if self._reported.get(map_name) != tuple(cycle):
                self._reported[map_name] = tuple(cycle)
                stuck = len(routes) < len(cycle)
                self.journal.event(
                    "traffic.deadlock",
                    f"map/{map_name}",
                    f"deadlock between {', '.join(cycle)}: "
                    + (
                        f"re-routed {MAX_REROUTES} times already; an operator should look"
                        if stuck
                        else "no re-route or side-step yet; retrying"
                    ),
                    {"robots": cycle, "stuck": stuck},
                )
            return
        self._reported.pop(map_name, None)
        for robot, route in changes.items():
            mission = self.active[robot]
            self._reroutes[mission.id] = self._reroutes.get(mission.id, 0) + 1
            mission.route, mission.progress = route, 0
            self.journal.mission(mission.id, route=route, progress=0)
            self.journal.event(
                "traffic.rerouted",
                f"mission/{mission.id}",
                f"deadlock between {', '.join(cycle)}: {robot} re-routed via {' > '.join(route)}",
                {"robots": cycle, "robot": robot, "route": route},
            )
        self.journal.changed(map_name)
        for robot in changes:
            traffic.unwait(robot)
            self._advance(robot)

    def _retry_waiting(self, map_name: str, robots: Iterable[str] | None = None) -> None:
        """Ask again for every waiting robot (or those of `robots`: after a checkpoint, the
        robots waiting for what it released), by priority. A robot whose resource is still
        held by the robot it waited for is not asked: it would get the same wait (the tick,
        twice a second, asks every robot, and routes around a holder that has since stopped)."""
        for robot in self._waiting(map_name, robots):
            self._advance(robot)

    def _waiting(self, map_name: str, robots: Iterable[str] | None = None) -> list[str]:
        traffic = self.traffic[map_name]
        if robots is None:
            return sorted(traffic.waits, key=lambda r: (-self.priority(r), r))
        holds, waits = traffic.holds, traffic.waits
        return sorted(
            (r for r in robots if holds.get(waits[r].resource) != waits[r].holder),
            key=lambda r: (-self.priority(r), r),
        )

    async def tick(self) -> None:
        """Periodic: retry every waiting robot and every deadlock (bounded resolution), then
        every active mission. `TICK_SLICE` robots at a time, letting the event loop turn in
        between (1,000 robots in one go held it for ~10 ms); the lock keeps the dispatcher's
        other changes out until the pass is over."""
        async with self.lock:
            for map_name in list(self.traffic):
                await self._advance_all(self._waiting(map_name))
                with contextlib.suppress(KeyError):
                    self._break_deadlock(map_name)
            await self._advance_all(list(self.active))
        await self.journal.commit()

    async def _advance_all(self, robots: list[str]) -> None:
        for start in range(0, len(robots), TICK_SLICE):
            if start:
                await asyncio.sleep(0)
            for robot in robots[start : start + TICK_SLICE]:
                self._advance(robot)

    def held(self) -> dict[str, int]:
        """Markers and lanes reserved now, by map (for metrics)."""
        return {name: len(traffic.holds) for name, traffic in self.traffic.items()}

    def _table(self, map_name: str) -> Traffic | None:
        return self.traffic.get(map_name)

    def snapshot(self, map_name: str) -> dict[str, Any]:
        self.map(map_name)
        traffic = self.traffic[map_name]
        return {"map": map_name, **traffic.snapshot()}

    def lane_of(self, map_name: str, a: str, b: str) -> str:
        fmap = self.map(map_name)
        if not fmap.has_lane(a, b):
            raise Invalid(f"there is no lane {a} -> {b} on map {map_name}", {"lane": [a, b]})
        return lane_key(a, b)
