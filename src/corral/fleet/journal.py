"""The fleet's writes in batches (group commit): the dispatcher's decisions (made in memory
under its lock), stored in one transaction per batch, then sent to robots and announced;
and, apart from them, the robots' acknowledgements, in group commits of their own (an ack
never waits for a batch of decisions).

Nothing is sent before it is stored: a move reaches its robot only once its grant and the
map's reservations are in the store, so a restart never finds a robot moving on a grant
it forgot. Each batch proves the leadership term; a batch of a term that is over is
dropped, never retried. While one batch is being written the next one gathers, so the decisions a
second are bounded by the CPU, not by the store's latency.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from corral.events import EventBus
from corral.fleet.meter import FleetMeter
from corral.model.traffic import Place, Traffic
from corral.store.fleet import FleetStore
from corral.store.leadership import StaleTerm
from corral.store.tables import CommandRow, MissionRow, utcnow

log = structlog.get_logger("corral.fleet.journal")
Deliver = Callable[[list[CommandRow]], Awaitable[None]]
Tables = Callable[[str], Traffic | None]  # a map's traffic table, by name
MissionEnd = Callable[[MissionRow], Awaitable[None]]
Event = tuple[str, str, str, dict[str, Any] | None]
Ask = tuple[str, list[int], "asyncio.Future[list[int]]"]


@dataclass
class Batch:
    missions: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> values
    robots: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> values
    acks: dict[str, set[int]] = field(default_factory=dict)  # robot -> command ids
    commands: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    maps: set[str] = field(default_factory=set)  # whose reservations changed
    events: list[Event] = field(default_factory=list)
    ended: list[MissionRow] = field(default_factory=list)

    def then(self, later: "Batch") -> "Batch":
        """This batch followed by a later one (a failed write is retried with what came
        after it)."""
        merged = Batch(
            missions={k: dict(v) for k, v in self.missions.items()},
            robots={k: dict(v) for k, v in self.robots.items()},
            acks={k: set(v) for k, v in self.acks.items()},
            commands=self.commands + later.commands,
            maps=self.maps | later.maps,
            events=self.events + later.events,
            ended=self.ended + later.ended,
        )
        for key, values in later.missions.items():
            merged.missions.setdefault(key, {}).update(values)
        for name, values in later.robots.items():
            merged.robots.setdefault(name, {}).update(values)
        for name, ids in later.acks.items():
            merged.acks.setdefault(name, set()).update(ids)
        return merged


class Journal:
    def __init__(
        self,
        store: FleetStore,
        bus: EventBus,
        tables: Tables,
        deliver: Deliver,
        on_end: list[MissionEnd],
        meter: FleetMeter,
    ) -> None:
        self.store = store
        self.meter = meter
        self.bus = bus
        self.tables = tables
        self.deliver = deliver
        self.on_end = on_end
        self.batch = Batch()
        self.recorded = 0  # decisions recorded so far
        self.written = 0  # of which stored
        self.writing = asyncio.Lock()
        self.asks: list[Ask] = []  # acknowledgements waiting for the next ack write
        self.acking = asyncio.Lock()

    # ------------------------------------------------------------------ recording
    def mission(self, id: int, **values: Any) -> None:
        self.batch.missions.setdefault(id, {}).update(values)
        self.recorded += 1

    def robot(self, name: str, **values: Any) -> None:
        self.batch.robots.setdefault(name, {}).update(values)
        self.recorded += 1

    def ack(self, robot: str, ids: list[int]) -> None:
        """The robot has these commands (ids of another robot's commands change nothing)."""
        self.batch.acks.setdefault(robot, set()).update(ids)
        self.recorded += 1

    def command(self, robot: str, kind: str, body: dict[str, Any]) -> None:
        self.batch.commands.append((robot, kind, body))
        self.recorded += 1

    def changed(self, map_name: str) -> None:
        self.batch.maps.add(map_name)
        self.recorded += 1

    def event(
        self, kind: str, resource: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        self.batch.events.append((kind, resource, message, data))
        self.recorded += 1

    def ended(self, row: MissionRow) -> None:
        self.batch.ended.append(row)
        self.recorded += 1

    async def acknowledge(self, robot: str, ids: list[int]) -> list[int]:
        """Store a robot's acknowledgement of `ids` apart from the decisions' batches, so a
        command's round trip never waits for a batch of checkpoints and moves: the acks
        that arrive while one ack write is on go together in the next (group commit, one
        statement). Returns once stored: the ids that are none of the robot's commands
        (nothing was stored for them)."""
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        mine: Ask = (robot, ids, future)
        self.asks.append(mine)
        async with self.acking:
            if not future.done():
                asks, self.asks = self.asks, []
                try:
                    unknown, acked = await self.store.acknowledge([a[:2] for a in asks])
                except asyncio.CancelledError:
                    # the others' asks go with the next writer (each waits for the lock)
                    self.asks = [a for a in asks if a is not mine] + self.asks
                    raise
                except BaseException as exc:
                    for ask in asks:
                        if ask is not mine:
                            ask[2].set_exception(exc)
                    raise
                now = utcnow()
                for created in acked:  # each command's round trip: stored to its ack stored
                    self.meter.round_trip.observe((now - created).total_seconds())
                for ask, missing in zip(asks, unknown, strict=True):
                    ask[2].set_result(missing)
        return await future

    def forget(self) -> None:
        """Drop what is not stored yet: the decisions of a leadership term that is over
        (stored later, under another term, they would grant steps already taken)."""
        self.batch = Batch()
        self.written = self.recorded

    # ------------------------------------------------------------------ writing
    async def commit(self) -> None:
        """Return once everything recorded before this call is stored and sent."""
        target = self.recorded
        ended: list[MissionRow] = []
        async with self.writing:
            if self.written >= target:
                return
            # Cut the batch and take the maps' changed rows together (no await between):
            # they hold exactly the decisions of this batch. Only the robots whose row
            # changed since the last batch are written; a failed write has its tables give
            # those rows again with the next batch.
            batch, self.batch, upto = self.batch, Batch(), self.recorded
            changes: dict[str, tuple[dict[str, Place], set[str]]] = {}
            for name in sorted(batch.maps):
                table = self.tables(name)
                if table is not None:
                    changes[name] = table.changes()
            try:
                rows, acked = await self.store.apply(
                    batch.missions, batch.robots, batch.acks, batch.commands, changes
                )
            except StaleTerm:
                self.forget()  # decisions of a term that is over: the next leader decides
                raise
            except BaseException:
                self.batch = batch.then(self.batch)
                for name, (places, gone) in changes.items():
                    table = self.tables(name)
                    if table is not None:  # the map's table now (a map replaced meanwhile)
                        table.touch([*places, *gone])
                raise
            self.written = upto
            if acked:  # each command's round trip: from stored to its ack stored
                now = utcnow()
                for created in acked:
                    self.meter.round_trip.observe((now - created).total_seconds())
            if batch.events:
                await self.bus.emit_many(batch.events)
            await self.deliver(rows)
            ended = batch.ended
        for row in ended:
            for hook in self.on_end:
                try:
                    await hook(row)
                except Exception:
                    log.exception("mission end hook failed", mission=row.id)
