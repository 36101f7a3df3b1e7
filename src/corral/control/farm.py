"""The print farm: printers that finish, beds to swap, and the robot arm that does it.

A `ready` message (a printer id) becomes a take and a replace task in one transaction;
the arm dispatcher sends one job at a time on MQTT when the arm reports itself available,
follows its status to done, and applies the job to the farm (beds moved, printer states).
Called by triggers (AMQP, MQTT, schedules, REST), the farm routes and the task service.
"""

import asyncio
import contextlib
import json
import time
from datetime import datetime
from typing import Any

import structlog

from corral.brokers.mqtt import MqttLink
from corral.config import Settings
from corral.control.tasks import Executor, TaskService
from corral.errors import CorralError, Invalid
from corral.events import EventBus
from corral.metrics import Metrics
from corral.model.farm import utilization
from corral.model.views import BedView, PrinterView, RackView, TaskView, UsageView
from corral.store.farm import FarmStore
from corral.store.tables import utcnow

log = structlog.get_logger("corral.farm")
ARM_KINDS = ("take", "replace", "homing")
ARM_STATES = ("available", "busy", "error")
MAX_ID = 63


class FarmService:
    def __init__(
        self,
        store: FarmStore,
        tasks: TaskService,
        bus: EventBus,
        metrics: Metrics,
        settings: Settings,
    ) -> None:
        self.store = store
        self.tasks = tasks
        self.bus = bus
        self.metrics = metrics
        self.settings = settings
        self.arm = settings.farm_arm
        self.mqtt: MqttLink | None = None
        self._wake = asyncio.Event()
        self._ready_lock = asyncio.Lock()
        # What the arm said last, and the job it has (one at a time).
        self.status = "unknown"
        self.status_at = 0.0  # monotonic time of its last status message
        self.in_flight: int | None = None
        self.sent_at = 0.0
        self.seen_busy = False
        self.reconnected = False  # the MQTT link came back since the job was sent
        self.recovered = False  # the job was in flight when corral started

    def executor(self) -> Executor:
        # A job with the arm ends when the arm says so (or falls silent), not by a cancel.
        return Executor(ARM_KINDS, self._check_task, self.wake, self._task_ended, False)

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------------ triggers
    async def ready(self, body: bytes, source: str, redelivered: bool = False) -> str | None:
        """A printer finished (the seed's plain-text printer id). Bad input is an event and
        nothing else; tasks are stored before this returns (then the message is acked)."""
        printer = body.decode("utf-8", errors="replace").strip()
        if not printer or len(printer) > MAX_ID or not printer.isprintable():
            await self.bus.emit(
                "farm.ready.rejected",
                "farm",
                f"ready message rejected: {printer[:80]!r} is not a printer id",
                {"body": printer[:200]},
            )
            return f"{printer[:80]!r} is not a printer id"
        received = utcnow()
        async with self._ready_lock:  # one ready at a time: no duplicate, no bed twice
            outcome = await self.store.record_ready(
                printer, self.arm, self.settings.farm_job_timeout_seconds, source
            )
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
        finished = f"printer {printer} finished a print"
        await self.bus.emit_many(
            [
                (
                    "printer.finished",
                    f"printer/{printer}",
                    finished,
                    {"received": received.isoformat()},
                ),
                *(("farm.bed.unavailable", f"printer/{printer}", n, None) for n in outcome.notes),
                *self.tasks.queued_events(outcome.tasks),
            ]
        )
        self.wake()
        return None

    async def homing(self, body: bytes, source: str, redelivered: bool = False) -> str | None:
        if redelivered and any(
            t.kind == "homing" for t in await self.tasks.store.open_for(self.arm)
        ):
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
        if not isinstance(printer, str):
            raise Invalid(f"{kind} needs params.printer_id (a string)", {"field": "params"})
        await self.store.printer(printer)  # NotFound names it
        extra = set(params) - {"printer_id"}
        if extra:
            raise Invalid(f"unknown params: {', '.join(sorted(extra))}", {"field": "params"})

    async def _task_ended(self, task: TaskView) -> None:
        await self.store.release(task)
        if task.kind == "take":  # no take, no replace: the printer still holds its bed
            for other in await self.tasks.store.open_for(self.arm):
                same = other.params.get("printer_id") == task.params.get("printer_id")
                if other.kind == "replace" and other.state == "queued" and same:
                    await self.tasks.move(other.id, "cancelled", f"its take {task.id} {task.state}")
        if task.id == self.in_flight:
            self.in_flight = None
        self.wake()

    # ------------------------------------------------------------------ the arm
    async def on_status(self, topic: str, payload: bytes) -> None:
        try:
            data = json.loads(payload)
            status = data["status"] if isinstance(data, dict) else None
        except (ValueError, KeyError, UnicodeDecodeError):
            status = None
        if status not in ARM_STATES:
            await self.bus.emit(
                "farm.status.rejected",
                f"arm/{self.arm}",
                f"status message on {topic} rejected: {payload[:120]!r} is not "
                '{"status": "available" | "busy" | "error"}',
            )
            return
        previous, self.status, self.status_at = self.status, status, time.monotonic()
        if status != previous:
            await self.bus.emit("arm.status", f"arm/{self.arm}", f"{self.arm} is {status}")
        await self._follow(status)
        self.wake()

    async def _follow(self, status: str) -> None:
        """What the status means for the job in flight."""
        task_id = self.in_flight
        if task_id is None:
            return
        if status == "busy":
            self.seen_busy = True
            await self.tasks.move(task_id, "running")
        elif status == "error":
            await self.tasks.move(task_id, "failed", f"{self.arm} reported an error")
            self.in_flight = None
        elif status == "available" and (self.seen_busy or self.recovered):
            task = await self.tasks.store.get(task_id)
            if task.sent_at is not None:
                await self._done(task_id)
        elif status == "available" and self.reconnected:
            # The link dropped after the job was sent and the arm never said busy: it may
            # not have the job. Send it again (at least once).
            self.reconnected = False
            task = await self.tasks.store.get(task_id)
            await self._send(task, dict(task.params.get("job") or {}))

    async def _done(self, task_id: int) -> None:
        task = await self.tasks.store.get(task_id)
        if task.state == "assigned":
            await self.tasks.move(task_id, "running")
        # The farm's effects first: done again after a crash here, they change nothing more.
        notes = await self.store.finish(task)
        moved = await self.tasks.move(task_id, "done")
        self.in_flight = None
        if moved is not None:
            for note in notes:
                await self.bus.emit(
                    "farm.bed.moved", f"printer/{task.params.get('printer_id')}", note
                )

    def link_up(self) -> None:
        """Called when the MQTT link (re)connects."""
        if self.in_flight is not None:
            self.reconnected = True
        self.wake()

    async def run_arm(self, stop: asyncio.Event) -> None:
        """Send the next job whenever the arm is free; fail a job whose arm falls silent."""
        recovered = False
        while not stop.is_set():
            self._wake.clear()
            try:
                if not recovered:
                    await self._recover()
                    recovered = True
                await self._tick()
            except CorralError as exc:
                log.info("arm dispatch postponed", error=exc.message)
            except Exception:
                log.exception("arm dispatch failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)

    async def _recover(self) -> None:
        for task in await self.tasks.store.open_for(self.arm):
            if task.state in ("assigned", "running"):
                # Only a job that went out can have been done while corral was down.
                self.in_flight, self.recovered = task.id, task.sent_at is not None
                self.sent_at = time.monotonic()
                self.seen_busy = task.state == "running"
                log.info("job in flight at start", task=task.id, state=task.state)
                return

    async def _tick(self) -> None:
        if self.in_flight is not None:
            task = await self.tasks.store.get(self.in_flight)
            if task.state not in ("assigned", "running"):
                self.in_flight = None  # cancelled meanwhile
                return
            if task.sent_at is None:  # assigned, but the send did not happen
                await self._send(task, dict(task.params.get("job") or {}))
                return
            silent = time.monotonic() - max(self.sent_at, self.status_at)
            if silent > task.timeout_s:
                await self.tasks.move(
                    task.id,
                    "failed",
                    f"{self.arm} said nothing for {silent:.0f} s (timeout {task.timeout_s:g} s)",
                )
                self.in_flight = None
            return
        if self.status != "available" or self.mqtt is None or not self.mqtt.connected:
            return
        queue = await self.tasks.store.open_for(self.arm)
        stray = next((t for t in queue if t.state in ("assigned", "running")), None)
        if stray is not None:  # open in the store but not followed: follow it again
            self.in_flight, self.recovered = stray.id, stray.sent_at is not None
            self.sent_at = time.monotonic()
            return
        for task in queue:
            if task.state != "queued":
                continue
            job, why = await self.store.job_for(task.id, self.arm)
            if why is not None:
                if task.reason != why:
                    await self.tasks.store.update(task.id, reason=why)
                continue
            fresh = await self.tasks.store.get(task.id)  # job_for may have reserved a bed
            moved = await self.tasks.move(
                task.id, "assigned", params={**job_params(fresh), "job": job}
            )
            if moved is None:
                continue
            self.in_flight = moved.id
            await self._send(moved, job)
            return

    async def _send(self, task: TaskView, job: dict[str, Any]) -> None:
        assert self.mqtt is not None
        current = await self.tasks.store.get(task.id)
        if current.state not in ("assigned", "running"):
            self.in_flight = None  # cancelled between choosing it and sending it
            return
        first = current.sent_at is None
        self.seen_busy = self.recovered = self.reconnected = False
        self.status = "sent"  # until the arm speaks again, it is not known to be free
        await self.mqtt.publish(self.settings.farm_job_topic, json.dumps(job).encode())
        self.sent_at = time.monotonic()
        await self.tasks.store.update(task.id, sent_at=utcnow())
        await self.bus.emit(
            "task.sent",
            f"task/{task.id}",
            f"task {task.id} {task.kind} sent to {self.arm}: {json.dumps(job)}",
            {"job": job},
        )
        if task.kind == "take" and first:
            self.metrics.job_latency_seconds.observe((utcnow() - task.created_at).total_seconds())

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

    async def remove(self, kind: str, id: str) -> None:
        if kind == "printer":
            await self.store.remove_printer(id)
        elif kind == "rack":
            await self.store.remove_rack(id)
        else:
            await self.store.remove_bed(id)
        await self.bus.emit(f"{kind}.removed", f"{kind}/{id}", f"{kind} {id} removed")


def job_params(task: TaskView) -> dict[str, Any]:
    return {k: v for k, v in task.params.items() if k != "job"}
