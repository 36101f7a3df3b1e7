"""The print farm: printers that finish, beds to swap, and the robot arm that does it.

A `ready` message (a printer id) becomes a take and a replace task, with their events, in
one transaction; the arm dispatcher (control/arm.py) sends them one at a time and applies
each done job to the farm (beds moved, printer states). Called by triggers (AMQP, MQTT,
schedules, REST), the farm routes and the task service.
"""

import asyncio
import re
from datetime import datetime
from typing import Any

import structlog

from corral.control.arm import ArmDispatcher
from corral.control.tasks import Executor, moved_event
from corral.errors import CorralError, Invalid
from corral.model.farm import utilization
from corral.model.farmfile import ID_PATTERN, FarmSpec
from corral.model.views import BedView, PrinterView, RackView, TaskView, UsageView
from corral.store.farm import ReadyOutcome
from corral.store.tables import utcnow
from corral.store.tasks import Event

log = structlog.get_logger("corral.farm")
ARM_KINDS = ("take", "replace", "homing")


class FarmService:
    def __init__(self, dispatch: ArmDispatcher) -> None:
        """The farm around its arm's dispatcher, whose store, tasks, bus and settings it
        shares (they are handed to the dispatcher once)."""
        self.dispatch = dispatch
        self.store, self.tasks, self.bus = dispatch.store, dispatch.tasks, dispatch.bus
        self.settings, self.arm = dispatch.settings, dispatch.arm
        self._ready_lock = asyncio.Lock()
        # the layout and printers as stored
        self.printers, self.printer = self.store.printers, self.store.printer
        self.racks, self.beds = self.store.racks, self.store.beds

    def executor(self) -> Executor:
        # A job with the arm ends when the arm says so (or by the in-flight rule), not by a
        # cancel.
        return Executor(ARM_KINDS, self._check_task, self.dispatch.wake, self._task_ended, False)

    # ------------------------------------------------------------------ triggers
    async def ready(self, body: bytes, source: str, redelivered: bool = False) -> str | None:
        """A printer finished (the seed's plain-text printer id). Bad input is an event and
        nothing else; tasks are stored before this returns (then the message is acked)."""
        printer = body.decode("utf-8", errors="replace").strip()
        if not re.fullmatch(ID_PATTERN, printer):
            await self.bus.emit(
                "farm.ready.rejected",
                "farm",
                f"ready message rejected: {printer[:80]!r} is not a printer id",
                {"body": printer[:200]},
            )
            return f"{printer[:80]!r} is not a printer id"
        received = utcnow()

        def note(outcome: ReadyOutcome) -> list[Event]:
            """The events of the tasks created, stored with them."""
            added: Event = (
                "printer.added",
                f"printer/{printer}",
                f"printer {printer} added from its ready message (farm_accept_unknown)",
                {},
            )
            return [
                *([added] if outcome.added else []),
                (
                    "printer.finished",
                    f"printer/{printer}",
                    f"printer {printer} finished a print",
                    {"received": received.isoformat()},
                ),
                *(("farm.bed.unavailable", f"printer/{printer}", n, {}) for n in outcome.notes),
                *self.tasks.queued_events(outcome.tasks),
            ]

        # One ready at a time: no duplicate, no bed twice. With the arm free and nothing
        # else open, its take is claimed in the same transaction and sent from here.
        async with self._ready_lock, self.dispatch.turn() as free:
            outcome = await self.store.record_ready(
                printer,
                self.arm,
                self.settings.farm_job_timeout_seconds,
                source,
                self.settings.farm_default_bed_type if self.settings.farm_accept_unknown else None,
                note,
                moved_event if free else None,
            )
            if outcome.claim is not None and outcome.claim.task is not None:
                self.bus.published(outcome.events)
                await self.dispatch.send_claimed(outcome.claim.task, outcome.claim.job)
        if outcome.outcome == "unknown_printer":
            await self.bus.emit(
                "farm.ready.rejected",
                f"printer/{printer}",
                f"ready message rejected: no printer {printer!r}",
                {"body": printer},
            )
            return f"no printer {printer!r}"
        if outcome.outcome == "duplicate":
            ids = ", ".join(str(t.id) for t in outcome.tasks)
            await self.bus.emit(
                "farm.ready.duplicate",
                f"printer/{printer}",
                f"printer {printer} is ready again but its tasks ({ids}) are still open: ignored",
            )
            return None
        self.dispatch.wake()  # the tasks and their events are stored: the job may go
        if outcome.claim is None:
            self.bus.published(outcome.events)
        return None

    async def homing(self, body: bytes, source: str, redelivered: bool = False) -> str | None:
        if redelivered and any(t.kind == "homing" for t in await self.tasks.open_for(self.arm)):
            await self.bus.emit(
                "farm.homing.duplicate",
                f"arm/{self.arm}",
                "redelivered homing ignored: one is open",
            )
            return None
        await self.tasks.create(
            "homing", self.arm, {}, 0, self.settings.farm_job_timeout_seconds, source
        )
        return None

    async def _check_task(self, kind: str, params: dict[str, Any]) -> None:
        if kind == "homing":
            if params:
                raise Invalid("homing takes no params", {"field": "params"})
            return
        printer = params.get("printer_id")
        if isinstance(printer, int) and not isinstance(printer, bool):
            printer = params["printer_id"] = str(printer)  # the seed's jobs name it a number
        if not isinstance(printer, str):
            raise Invalid(
                f"{kind} needs params.printer_id (a string or a number)", {"field": "params"}
            )
        await self.store.printer(printer)  # NotFound names it
        extra = set(params) - {"printer_id"}
        if extra:
            raise Invalid(f"unknown params: {', '.join(sorted(extra))}", {"field": "params"})

    async def _task_ended(self, task: TaskView) -> None:
        await self.store.release(task)
        if task.kind == "take":  # no take, no replace: the printer still holds its bed
            for other in await self.tasks.open_for(self.arm):
                same = other.params.get("printer_id") == task.params.get("printer_id")
                if other.kind == "replace" and other.state == "queued" and same:
                    await self.tasks.move(other.id, "cancelled", f"its take {task.id} {task.state}")
        self.dispatch.ended(task)

    # ------------------------------------------------------------------ farm records
    async def put_printer(
        self, id: str, door: str, bed_type: str, position: float, bed: str | None, keep_bed: bool
    ) -> tuple[PrinterView, bool]:
        view, created = await self.store.put_printer(id, door, bed_type, position, bed, keep_bed)
        verb = "added" if created else "updated"
        await self.bus.emit(f"printer.{verb}", f"printer/{id}", f"printer {id} {verb}")
        return view, created

    async def set_printer_state(self, id: str, state: str) -> PrinterView:
        view, changed = await self.store.set_printer_state(id, state)
        if changed:
            await self.bus.emit("printer.state", f"printer/{id}", f"printer {id} is {state}")
        return view

    async def put_rack(self, id: str, position: float, slots: int) -> RackView:
        view, created = await self.store.put_rack(id, position, slots)
        verb = "added" if created else "updated"
        await self.bus.emit(f"rack.{verb}", f"rack/{id}", f"rack {id} {verb}")
        return view

    async def put_bed(
        self, id: str, type: str, state: str, rack: str | None, slot: int | None
    ) -> BedView:
        view, created = await self.store.put_bed(id, type, state, rack, slot)
        verb = "added" if created else "updated"
        where = f"rack {rack} slot {slot}" if rack else (view.printer or "nowhere")
        await self.bus.emit(
            f"bed.{verb}", f"bed/{id}", f"bed {id} ({type}, {state}) {verb}: {where}"
        )
        return view

    async def usage(self, printer: str, start: datetime, end: datetime) -> UsageView:
        if end <= start:
            raise Invalid("'to' must be after 'from'", {"field": "to"})
        changes = await self.store.history(printer, start, end)
        found = utilization(changes, start, end, utcnow())
        total = found.busy_s + found.idle_s
        return UsageView(
            printer=printer,
            start=start,
            end=end,
            busy_s=round(found.busy_s, 3),
            idle_s=round(found.idle_s, 3),
            utilization=round(found.busy_s / total, 4) if total else 0.0,
            by_state={k: round(v, 3) for k, v in sorted(found.by_state.items())},
        )

    async def apply(self, spec: FarmSpec, prune: bool) -> dict[str, str]:
        """Make the farm's records match a farm file (idempotent): what happened to each
        record, by "printer 14", "bed 801", "rack A". Places and bed states are set only
        for new records; `prune` removes records the file does not list (kept, with the
        reason, when they are in use)."""
        racks = {r.id: r for r in await self.store.racks()}
        beds = {b.id: b for b in await self.store.beds()}
        printers = {p.id: p for p in await self.store.printers()}
        for bed in spec.beds:
            if bed.rack is not None and bed.rack not in racks | {r.id: r for r in spec.racks}:
                raise Invalid(f"bed {bed.id}: no rack {bed.rack!r}", {"bed": bed.id})
        known = set(beds) | {b.id for b in spec.beds}
        for printer in spec.printers:
            if printer.bed is not None and printer.bed not in known:
                raise Invalid(
                    f"printer {printer.id}: no bed {printer.bed!r}", {"printer": printer.id}
                )
        outcomes: dict[str, str] = {}
        for rack in spec.racks:
            was = racks.get(rack.id)
            if was is None or (was.position, was.slots) != (rack.position, rack.slots):
                await self.put_rack(rack.id, rack.position, rack.slots)
            outcomes[f"rack {rack.id}"] = _outcome(
                was, (was.position, was.slots) if was else None, (rack.position, rack.slots)
            )
        for bed in spec.beds:
            had = beds.get(bed.id)
            if had is None:
                await self.put_bed(bed.id, bed.type, bed.state, bed.rack, bed.slot)
            elif had.type != bed.type:
                await self.put_bed(bed.id, bed.type, had.state, None, None)  # it stays put
            outcomes[f"bed {bed.id}"] = _outcome(had, had.type if had else None, bed.type)
        for printer in spec.printers:
            old = printers.get(printer.id)
            now = (printer.door, printer.bed_type, printer.position)
            before = (old.door, old.bed_type, old.position) if old else None
            if old is None or before != now:
                keep = old is not None or printer.bed is None
                await self.put_printer(printer.id, *now, printer.bed, keep)
            outcomes[f"printer {printer.id}"] = _outcome(old, before, now)
        if prune:
            listed = {
                "printer": {p.id for p in spec.printers},
                "bed": {b.id for b in spec.beds},
                "rack": {r.id for r in spec.racks},
            }
            stored = {"printer": list(printers), "bed": list(beds), "rack": list(racks)}
            for kind in ("printer", "bed", "rack"):
                for id in stored[kind]:
                    if id in listed[kind]:
                        continue
                    try:
                        await self.remove(kind, id)
                        outcomes[f"{kind} {id}"] = "removed"
                    except CorralError as exc:
                        outcomes[f"{kind} {id}"] = f"kept: {exc.message}"
        return outcomes

    async def remove(self, kind: str, id: str) -> None:
        if kind == "printer":
            await self.store.remove_printer(id)
        elif kind == "rack":
            await self.store.remove_rack(id)
        else:
            await self.store.remove_bed(id)
        await self.bus.emit(f"{kind}.removed", f"{kind}/{id}", f"{kind} {id} removed")


def _outcome(was: object, before: object, now: object) -> str:
    if was is None:
        return "created"
    return "unchanged" if before == now else "updated"
