"""The arm dispatcher: sends the robot arm one job at a time on MQTT, follows its status to
the job's end by the in-flight rule (model/arm.py), and says what it is waiting for.

Run by the leader (core); the farm service (control/farm.py) hands it the arm's tasks.
Every send is preceded by one store write that claims the task: for a first send, one
transaction builds the job and makes the queued -> assigned move that marks it sent (with
its event); for a resend, the sent mark. A dispatcher whose claim does not go through
sends nothing; the claim proves the leadership term, and the lease is checked again right
before the publish, so a replica that lost the lead sends nothing.

A replica whose lead ends with a job out goes on listening to the arm for it (WITNESS_S)
and records what it hears as `farm.job.witnessed` (it alone saw the send, so it alone can
tell the arm's answer to it); the next leader, which adopts that job, acts on the record.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import structlog

from corral.brokers.mqtt import MqttLink, NotSent
from corral.config import Settings
from corral.control.tasks import TaskService, moved_event
from corral.errors import CorralError
from corral.events import EventBus
from corral.metrics import Metrics
from corral.model.arm import Flight, Outcome, after_silence, after_word
from corral.model.events import EventFilter
from corral.model.views import TaskView
from corral.store.farm import FarmStore
from corral.store.leadership import StaleTerm
from corral.store.tables import utcnow
from corral.store.tasks import Event
from corral.waits import pause

log = structlog.get_logger("corral.farm")
ARM_STATES = ("available", "busy", "error")
PRESUMED = "presumed available"
PAGE = 10  # queued tasks read at a time, in the order they are served
WITNESS_S = 1.0  # how long a replica whose lead ended listens for its job's first answer
WITNESSED = "farm.job.witnessed"
VERDICTS = ("running", "done", "failed", "resend", "unconfirmed")
PENDING_S = 0.25  # how long an event waits for the dispatcher's next write to carry it


class ArmDispatcher:
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
        self._lock = asyncio.Lock()  # one decision at a time: a status, a tick
        self.word = "unknown"  # the arm's last live status, or PRESUMED
        self.word_since = 0.0  # monotonic time of that word
        self.flight: Flight | None = None
        self._witness_read = 0  # the last witness event read for an adopted flight
        # Events that record what already happened (the arm's word, a job's publish): stored
        # with the dispatcher's next write (the arm's busy follows a send within
        # milliseconds), or on their own after PENDING_S.
        self._pending: list[Event] = []
        self._pending_since = 0.0

    def wake(self) -> None:
        self._wake.set()

    @property
    def timeout(self) -> float:
        return self.settings.farm_job_timeout_seconds

    # ------------------------------------------------------------------ what the arm says
    async def on_status(self, topic: str, payload: bytes, retained: bool) -> None:
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
        if retained:  # said some time ago, to whoever subscribes: proof of nothing now
            log.info("retained arm status ignored", status=status)
            return
        async with self._lock:
            previous, self.word, self.word_since = self.word, status, time.monotonic()
            if status != previous:
                self._note(("arm.status", f"arm/{self.arm}", f"{self.arm} is {status}", {}))
            flight = self.flight
            if flight is not None and flight.sent:
                await self._apply(flight, after_word(flight, status), status)
        self.wake()

    def link_up(self) -> None:
        """The MQTT link (re)connected: words said meanwhile are lost."""
        flight = self.flight
        if flight is not None and flight.sent:
            flight.gap, flight.quiet_since = True, time.monotonic()
        self.wake()

    def ended(self, task: TaskView) -> None:
        """A task of the arm failed or was cancelled (called within its move)."""
        if self.flight is not None and self.flight.task == task.id:
            self.flight = None
        self.wake()

    # ------------------------------------------------------------------ the rule's verdicts
    async def _apply(
        self, flight: Flight, outcome: Outcome, said: str, why: str | None = None
    ) -> None:
        """Act on a verdict of the in-flight rule (or of the sender's witness, with its
        `why`). A replica that no longer leads records it for the next leader instead."""
        if outcome == "wait" or (outcome == "running" and flight.busy):
            return
        if why is None:
            why = self._reason(flight, outcome, said)
        if said == "silence":
            self.word, self.word_since = PRESUMED, time.monotonic()
        if outcome == "running":
            flight.busy, flight.quiet_since = True, time.monotonic()
        elif outcome == "resend":
            flight.sent = False  # the next tick sends it again
        elif self.flight is flight:
            self.flight = None
        if not self._leads():
            await self._witness(flight, outcome, why)
            return
        try:
            await self._record(flight.task, outcome, why)
        except StaleTerm:
            await self._witness(flight, outcome, why)

    def _note(self, event: Event) -> None:
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(event)

    async def _flush(self) -> None:
        """The events waiting for a write, stored on their own."""
        events, self._pending = self._pending, []
        if events:
            await self.bus.emit_many(events)

    async def _record(self, task_id: int, outcome: Outcome, why: str) -> None:
        """A verdict in the store, by this leader (with the events waiting for a write)."""
        if outcome in ("running", "done", "failed"):
            before, self._pending = self._pending, []
            try:
                if outcome == "done":
                    await self._done(task_id, why, before)
                else:
                    reason = why if outcome == "failed" else ""
                    await self.tasks.move(task_id, outcome, reason, before)
            except BaseException:
                self._pending[:0] = before  # not stored: they wait for the next write
                raise
            return
        await self._flush()
        if outcome == "resend":
            self.wake()
            await self.bus.emit(
                "farm.job.resend", f"task/{task_id}", f"task {task_id}: {why}; sending it again"
            )
        elif outcome == "unconfirmed":
            await self.bus.emit("farm.job.unconfirmed", f"task/{task_id}", f"task {task_id}: {why}")
            await self.tasks.move(task_id, "failed", why)

    def _reason(self, flight: Flight, outcome: Outcome, said: str) -> str:
        if outcome == "done":
            return "" if said == "available" and flight.busy else self._presumption(flight, said)
        if outcome == "failed":
            return f"{self.arm} reported an error" if said == "error" else self._presumption(flight)
        if outcome in ("resend", "unconfirmed"):
            return self._presumption(flight, said)
        return ""

    def _leads(self) -> bool:
        """Whether this replica may still act (its term held, its lease not lapsed)."""
        try:
            self.store.db.term.confirm()
        except StaleTerm:
            return False
        return True

    # ------------------------------------------------------------------ across a handover
    async def _witness(self, flight: Flight, outcome: Outcome, why: str) -> None:
        """What this replica, whose lead is over, learned of a job it sent: stored for the
        next leader (which adopted the job and reads it), never acted on here."""
        if outcome != "running" and self.flight is flight:
            self.flight = None  # ended here, as far as this replica can tell
        if flight.adopted:
            return  # it did not send it: its hearing of it has a gap, as the next one's
        heard = {
            "running": f"{self.arm} took it (busy)",
            "done": why or f"{self.arm} said busy, then available",
            "failed": why,
            "resend": why,
            "unconfirmed": why,
        }[outcome]
        log.info("job outcome witnessed for the next leader", task=flight.task, outcome=outcome)
        with contextlib.suppress(Exception):  # the store may be out of reach too
            await self._flush()
            await self.bus.emit(
                WITNESSED,
                f"task/{flight.task}",
                f"task {flight.task} (send {flight.attempt}), heard by the replica that sent "
                f"it after its lead ended: {heard} -> {outcome}",
                {"attempt": flight.attempt, "outcome": outcome, "why": heard},
            )

    async def _hear_out(self) -> None:
        """The lead just ended: a job this replica sent that the arm has not answered yet
        is listened to for up to WITNESS_S (a DHR arm says busy at once), and a job it
        claimed but never published is recorded as such, for the next leader."""
        deadline = time.monotonic() + WITNESS_S
        while True:
            async with self._lock:  # a status being handled ends first
                flight = self.flight
                if flight is None or flight.busy or flight.adopted:
                    return
                if not flight.sent:
                    self.flight = None
                    await self._witness(
                        flight, "resend", "it never went out: the lead ended before its publish"
                    )
                    return
            if time.monotonic() >= deadline or not self._link_up():
                return
            self._wake.clear()
            await pause(min(0.05, deadline - time.monotonic()), self._wake)

    async def _heard_by_sender(self, flight: Flight) -> None:
        """An adopted job: what the replica that sent it recorded after its lead ended,
        acted on as if heard here (the sender saw the send; this replica did not)."""
        where = EventFilter(WITNESSED, f"task/{flight.task}", after_id=self._witness_read)
        for event in await self.bus.query(where, limit=20):
            self._witness_read = event.id
            outcome = event.data.get("outcome")
            if event.data.get("attempt") != flight.attempt or outcome not in VERDICTS:
                continue
            why = f"{event.data.get('why')} (heard by the replica that sent it)"
            await self._apply(flight, outcome, "witness", why)
            if self.flight is not flight or not flight.sent:
                return

    def _presumption(self, flight: Flight, said: str = "silence") -> str:
        if said == "available":
            return (
                f"{self.arm} became available after a gap that hid its busy: done"
                if flight.gap
                else f"{self.arm} said available without taking the job (it was not free)"
            )
        quiet = f"{self.arm} said nothing for {flight.timeout:g} s"
        if flight.busy and flight.gap:
            return f"{quiet} after busy and a gap that hid its available: presumed done"
        if flight.busy:
            return f"{quiet} after busy: it is stuck"
        if flight.gap:
            return (
                f"unconfirmed: sent, then a gap before {self.arm} answered; it may have done "
                "the job unseen or never got it (check the printer, then retry)"
            )
        return f"{quiet} after the send: it never got the job"

    async def _done(self, task_id: int, how: str, before: list[Event]) -> None:
        def moved(task: TaskView, note: str) -> Event:
            return ("farm.bed.moved", f"printer/{task.params.get('printer_id')}", note, {})

        # The move and the farm's effects in one transaction: done once, or not at all.
        _, stored = await self.store.done(task_id, how, moved_event, moved, before)
        self.bus.published(stored)

    # ------------------------------------------------------------------ the loop
    async def run(self, stop: asyncio.Event, heard_out: asyncio.Event | None = None) -> None:
        """Send the next job whenever the arm is free; end each job by the rule. Once
        `stop` is set, a job still out is heard out (`_hear_out`), then `heard_out` is set:
        the arm's MQTT link may close."""
        self.flight, self.word = None, "unknown"  # a new term: open tasks are adopted
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    async with self._lock:
                        await self._tick()
                except CorralError as exc:
                    log.info("arm dispatch postponed", error=exc.message)
                except Exception:
                    log.exception("arm dispatch failed")
                await pause(PENDING_S if self._pending else 0.5, self._wake, stop)
            await self._hear_out()
            with contextlib.suppress(Exception):  # the store may be out of reach
                await self._flush()
        finally:
            if heard_out is not None:
                heard_out.set()

    def _link_up(self) -> bool:
        return self.mqtt is not None and self.mqtt.connected

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[bool]:
        """Hold the dispatcher (no status, no tick meanwhile); whether it is free to send a
        job now: the link up, nothing in flight, the arm not busy or in error by its word.
        A ready message claims its take under it when the arm has nothing else."""
        async with self._lock:
            busy = self.word in ("busy", "error") and time.monotonic() - self.word_since < (
                self.timeout
            )
            yield self._link_up() and self.flight is None and not busy

    async def send_claimed(self, task: TaskView, job: dict[str, Any]) -> None:
        """Publish a first job claimed within `turn` (by a ready message's transaction)."""
        try:
            await self._send(task, job, first=True)
        except CorralError as exc:  # the term is over: the next leader adopts it
            log.info("arm dispatch postponed", error=exc.message)

    async def _tick(self) -> None:
        now = time.monotonic()
        if self._pending and now - self._pending_since > PENDING_S:
            await self._flush()
        if not self._link_up():
            return  # nothing can be heard or sent: no verdict either
        flight = self.flight
        if flight is not None and flight.sent:
            # Out with the arm: it ends by the arm's word, by this rule, or by `ended` (a
            # failure or a cancel elsewhere); only an adopted job's sender is read meanwhile.
            if flight.adopted:
                await self._heard_by_sender(flight)
            if self.flight is flight and flight.sent and now - flight.quiet_since > flight.timeout:
                await self._apply(flight, after_silence(flight), "silence")
            return
        if flight is not None:  # to send again: its job, unless it ended meanwhile
            task = await self.tasks.get(flight.task)
            if task.state in ("assigned", "running"):
                await self._send(task, dict(task.params.get("job") or {}), first=False)
            else:
                self.flight = None
            return
        if self.word in ("busy", "error") and now - self.word_since < self.timeout:
            return  # it said so itself, with no job of ours: wait for its available
        stray, page = await self.tasks.queue(self.arm, PAGE)
        if stray is not None:
            # Out before this dispatcher ran (a restart, a takeover): its words may be lost.
            self.flight = adopted = Flight(
                stray.id,
                now,
                busy=stray.state == "running",
                gap=stray.sent_at is not None,
                sent=stray.sent_at is not None,
                timeout=stray.timeout_s,
                attempt=stray.attempts,
                adopted=True,
            )
            self._witness_read = 0
            log.info("job in flight adopted", task=stray.id, state=stray.state)
            if adopted.sent:
                await self._heard_by_sender(adopted)
            return
        seen = 0
        while page:
            seen += len(page)
            for task in page:
                claim = await self.store.claim(task.id, self.arm, moved_event)
                if claim.why is not None:  # a replace with no clean bed free: the next one
                    if task.reason != claim.why:
                        await self.tasks.update(task.id, reason=claim.why)
                    continue
                self.bus.published(claim.events)
                if claim.task is not None:
                    await self._send(claim.task, claim.job, first=True)
                return  # sent, or lost the race for it: never on to the next task
            page = await self.tasks.open_for(self.arm, ("queued",), PAGE, seen)

    async def _claim(self, task: TaskView) -> TaskView | None:
        """The store write before a resend (only of this dispatcher's own flight): the
        assigned task marked sent again. None: not ours to send. (A first send's claim is
        the store's `claim`: the conditional queued -> assigned move, recorded as sent
        before it can be answered.)"""
        if task.state != "assigned":
            return None
        return await self.tasks.update(task.id, sent_at=utcnow(), attempts=task.attempts + 1)

    async def _send(self, task: TaskView, job: dict[str, Any], first: bool) -> None:
        assert self.mqtt is not None
        if not first:
            claimed = await self._claim(task)
            if claimed is None:
                self.flight = None
                return
            task = claimed
        # Recorded before it goes out: an answer that comes back at once is matched.
        flight = self.flight = Flight(
            task.id, time.monotonic(), timeout=task.timeout_s, attempt=task.attempts
        )
        if not self._leads():  # the claim proved the term; the lease must still hold
            flight.sent = False  # never sent: `_hear_out` records it for the next leader
            log.info("job not sent: the lead ended after its claim", task=task.id)
            return
        try:
            await self.mqtt.publish(self.settings.farm_job_topic, json.dumps(job).encode())
        except NotSent:
            flight.sent = False  # nothing went out: sent when the link is back
            return
        except CorralError as exc:  # it may have reached the broker: words may be lost
            flight.gap = True
            log.info("job publish unconfirmed", task=task.id, error=exc.message)
        if task.kind == "take" and first:
            self.metrics.job_latency_seconds.observe((utcnow() - task.created_at).total_seconds())
        # A record of a publish that happened (the claim is the send's record): stored with
        # the next write, usually the arm's busy.
        self._note(
            (
                "task.sent",
                f"task/{task.id}",
                f"task {task.id} {task.kind} sent to {self.arm} (attempt {task.attempts}): "
                f"{json.dumps(job)}",
                {"job": job, "attempt": task.attempts},
            )
        )

    # ------------------------------------------------------------------ what it waits for
    def status(self) -> str:
        if self.flight is not None:
            return "busy" if self.flight.busy else "sent"
        return self.word

    def waiting(self, queued: int) -> tuple[datetime | None, str | None]:
        """Since when and for what the dispatcher waits, or (None, None) when it does not:
        a job out with the arm, the arm busy or in error, the MQTT link down."""
        now = time.monotonic()

        def wall(mono: float) -> datetime:
            return utcnow() - timedelta(seconds=max(0.0, now - mono))

        if self.mqtt is not None and not self.mqtt.connected and (queued or self.flight):
            since = self.mqtt.since or utcnow()
            return since, f"waiting for the MQTT broker {self.mqtt.name} since {_iso(since)}"
        flight = self.flight
        if flight is not None:
            since = wall(flight.quiet_since)
            doing = "working on it (busy)" if flight.busy else "sent, no answer yet"
            if not flight.sent:
                doing = "not sent yet"
            verdict = wall(flight.quiet_since + flight.timeout)
            return since, (
                f"waiting for the arm since {_iso(since)}: task {flight.task} {doing}"
                + (", words may have been lost (gap)" if flight.gap else "")
                + f"; the in-flight rule decides at {_iso(verdict)} if it stays silent"
            )
        if queued and self.word in ("busy", "error"):
            since = wall(self.word_since)
            return since, (
                f"waiting for the arm since {_iso(since)}: it said {self.word}; presumed "
                f"available at {_iso(wall(self.word_since + self.timeout))}"
            )
        return None, None


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")
