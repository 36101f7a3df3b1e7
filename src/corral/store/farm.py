"""Stored farm: printers, racks, beds, printer state history, and the farm's task writes
that must happen in one transaction with them (a ready message, a job's effects).

Used by the farm service and the farm routes. The dispatcher's writes (a ready message, a
bed reserved, a job's effects, a printer's state) are leader-only: each proves the
leadership term.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    bindparam,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from corral.errors import Conflict, NotFound
from corral.model.farm import Rack, job_message, racks_nearest
from corral.model.views import (
    OPEN_TASK_STATES,
    BedView,
    EventView,
    PrinterView,
    RackView,
    TaskView,
)
from corral.store.database import Database
from corral.store.events import EventStore
from corral.store.tables import BedRow, PrinterRow, PrinterStateRow, RackRow, TaskRow, utcnow
from corral.store.tasks import TASKS, Event, Note, advance, open_rows, task_view

FARM_KINDS = ("take", "replace")

# The farm's task writes (a ready, a claim, a job's end) run on every message: SQLAlchemy
# Core statements built once, no ORM objects loaded or flushed.
PRINTERS, BEDS = cast(Table, PrinterRow.__table__), cast(Table, BedRow.__table__)
RACKS, STATES = cast(Table, RackRow.__table__), cast(Table, PrinterStateRow.__table__)
_PRINTER_COLUMNS = (
    PRINTERS.c.id,
    PRINTERS.c.state,
    PRINTERS.c.door,
    PRINTERS.c.bed_type,
    PRINTERS.c.bed,
    PRINTERS.c.position,
)
_PRINTER = select(*_PRINTER_COLUMNS).where(PRINTERS.c.id == bindparam("b_printer"))
_PRINTER_LOCKED = _PRINTER.with_for_update()
_AT_PRINTER = (
    TASKS.c.state.in_(OPEN_TASK_STATES),
    TASKS.c.target == bindparam("b_arm"),
    TASKS.c.kind.in_(FARM_KINDS),
    TASKS.c.params["printer_id"].as_string() == bindparam("b_printer"),
)
# Whether the printer has open farm tasks (a duplicate ready), and the arm any open task.
_OPEN_AT_AND_ANY = select(
    exists().where(*_AT_PRINTER),
    exists().where(TASKS.c.state.in_(OPEN_TASK_STATES), TASKS.c.target == bindparam("b_arm")),
)
_OPEN_AT = select(TASKS).where(*_AT_PRINTER).order_by(TASKS.c.priority.desc(), TASKS.c.id)
_INSERT_TASKS = insert(TASKS).returning(*TASKS.c, sort_by_parameter_order=True)
_TASK_LOCKED = select(TASKS).where(TASKS.c.id == bindparam("b_task")).with_for_update()
_RACKS = select(RACKS.c.id, RACKS.c.position, RACKS.c.slots)
_FREE_BED = (
    select(BEDS.c.id)
    .where(
        BEDS.c.type == bindparam("b_type"),
        BEDS.c.state == "clean",
        BEDS.c.rack == bindparam("b_rack"),
        BEDS.c.reserved_for.is_(None),
        BEDS.c.printer.is_(None),
        BEDS.c.id.not_in(bindparam("b_tried", expanding=True)),
    )
    .order_by(BEDS.c.slot, BEDS.c.id)
    .limit(1)
)
# Reserve only if still free: two reservations can never hold one bed.
_RESERVE = (
    update(BEDS)
    .where(BEDS.c.id == bindparam("b_bed"), BEDS.c.reserved_for.is_(None), BEDS.c.printer.is_(None))
    .values(reserved_for=bindparam("b_printer"))
)
_FITS = select(BEDS.c.id).where(BEDS.c.type == bindparam("b_type")).limit(1)
_STATE = (
    update(PRINTERS)
    .where(PRINTERS.c.id == bindparam("b_printer"))
    .values(state=bindparam("b_state"), updated_at=bindparam("b_time"))
)
_HISTORY = insert(STATES).values(
    printer=bindparam("b_printer"), state=bindparam("b_state"), time=bindparam("b_time")
)
_TAKE_OUT = (
    update(BEDS)
    .where(BEDS.c.id == bindparam("b_bed"))
    .values(printer=None, state="with_part")
    .returning(BEDS.c.id)
)
_LOAD = (
    update(BEDS)
    .where(BEDS.c.id == bindparam("b_bed"))
    .values(printer=bindparam("b_printer"), rack=None, slot=None, reserved_for=None)
    .returning(BEDS.c.id)
)
_OUT_OF = (
    update(BEDS)
    .where(BEDS.c.id == bindparam("b_bed"), BEDS.c.printer == bindparam("b_printer"))
    .values(printer=None)
)
_PRINTER_BED = (
    update(PRINTERS).where(PRINTERS.c.id == bindparam("b_printer")).values(bed=bindparam("b_bed"))
)


@dataclass
class ReadyOutcome:
    """What a ready message did: created tasks, or why none."""

    outcome: str  # created | duplicate | unknown_printer
    tasks: list[TaskView] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    added: bool = False  # the printer was unknown and is now added
    events: list[EventView] = field(default_factory=list)  # stored with the tasks
    claim: "Claim | None" = None  # the take, claimed in the same transaction


@dataclass
class Claim:
    """A first send's claim: the task moved to assigned and marked sent, with its job; or
    why it cannot go now (`task` None)."""

    task: TaskView | None
    job: dict[str, Any]
    why: str | None = None
    events: list[EventView] = field(default_factory=list)  # stored with the claim


def printer_view(row: PrinterRow) -> PrinterView:
    return PrinterView.model_validate(
        {k: getattr(row, k) for k in ("id", "state", "door", "bed_type", "bed", "position")}
        | {"updated_at": row.updated_at}
    )


def bed_view(row: BedRow) -> BedView:
    return BedView.model_validate(
        {k: getattr(row, k) for k in ("id", "type", "state", "printer", "rack", "slot")}
        | {"reserved_for": row.reserved_for}
    )


def _set_state(s: AsyncSession | Session, row: PrinterRow, state: str) -> bool:
    if row.state == state:
        return False
    row.state, row.updated_at = state, utcnow()
    s.add(PrinterStateRow(printer=row.id, state=state, time=row.updated_at))
    return True


def _open_at(s: Session, printer: str, *where: ColumnElement[bool]) -> Sequence[TaskRow]:
    """Open tasks at `printer` (its id in their params) that match `where`, in the order
    they are served; read by the printer id, not by reading every open task."""
    query = select(TaskRow).where(
        TaskRow.state.in_(OPEN_TASK_STATES),
        TaskRow.params["printer_id"].as_string() == printer,
        *where,
    )
    return s.scalars(query.order_by(TaskRow.priority.desc(), TaskRow.id)).all()


class FarmStore:
    def __init__(self, db: Database, events: EventStore | None = None) -> None:
        self.db = db
        self.events = events  # None: the notes' events are not stored (tools, tests)

    def _stage(self, s: Session, events: list[Event]) -> list[EventView]:
        return self.events.stage_sync(s, events) if self.events is not None and events else []

    # ------------------------------------------------------------------ printers
    async def put_printer(
        self, id: str, door: str, bed_type: str, position: float, bed: str | None, keep_bed: bool
    ) -> tuple[PrinterView, bool]:
        """Create or change a printer; `keep_bed` leaves the bed in it as it is."""
        async with self.db.session() as s:
            current = await s.get(PrinterRow, id)
            if keep_bed:
                bed = current.bed if current is not None else None
            elif bed is not None:
                await self._place_bed(s, bed, id)
            row = current
            created = row is None
            if row is None:
                row = PrinterRow(id=id, state="idle", updated_at=utcnow())
                s.add(PrinterStateRow(printer=id, state="idle", time=row.updated_at))
            row.door, row.bed_type, row.position, row.bed = door, bed_type, position, bed
            s.add(row)
            await s.flush()
            return printer_view(row), created

    async def _place_bed(self, s: AsyncSession, bed: str, printer: str) -> None:
        found = await s.get(BedRow, bed)
        if found is None:
            raise NotFound(f"bed {bed!r} not found", {"bed": bed})
        if found.printer not in (None, printer):
            raise Conflict(f"bed {bed} is in printer {found.printer}")
        if found.reserved_for not in (None, printer):
            raise Conflict(f"bed {bed} is reserved for printer {found.reserved_for}")
        found.printer, found.rack, found.slot = printer, None, None

    async def printers(self) -> list[PrinterView]:
        async with self.db.session() as s:
            rows = (await s.scalars(select(PrinterRow).order_by(PrinterRow.id))).all()
            return [printer_view(r) for r in rows]

    async def printer(self, id: str) -> PrinterView:
        async with self.db.session() as s:
            row = await s.get(PrinterRow, id)
            if row is None:
                raise NotFound(f"printer {id!r} not found", {"printer": id})
            return printer_view(row)

    async def set_printer_state(self, id: str, state: str) -> tuple[PrinterView, bool]:

        def work(s: Session) -> tuple[PrinterView, bool]:
            row = s.get(PrinterRow, id, with_for_update=True)
            if row is None:
                raise NotFound(f"printer {id!r} not found", {"printer": id})
            changed = _set_state(s, row, state)
            return printer_view(row), changed

        return await self.db.run(work)

    async def remove_printer(self, id: str) -> None:
        async with self.db.session() as s:
            row = await s.get(PrinterRow, id)
            if row is None:
                raise NotFound(f"printer {id!r} not found", {"printer": id})
            busy = await s.run_sync(_open_at, id)
            if busy:
                raise Conflict(f"printer {id} has open tasks: {', '.join(str(t.id) for t in busy)}")
            await s.delete(row)

    async def history(
        self, id: str, since: datetime, until: datetime
    ) -> list[tuple[datetime, str]]:
        """The state changes within [since, until), led by the last one before `since`
        (the state the interval starts in)."""
        async with self.db.session() as s:
            if await s.get(PrinterRow, id) is None:
                raise NotFound(f"printer {id!r} not found", {"printer": id})
            columns = select(PrinterStateRow.time, PrinterStateRow.state).where(
                PrinterStateRow.printer == id
            )
            before = await s.execute(
                columns.where(PrinterStateRow.time < since)
                .order_by(PrinterStateRow.time.desc(), PrinterStateRow.id.desc())
                .limit(1)
            )
            within = await s.execute(
                columns.where(PrinterStateRow.time >= since, PrinterStateRow.time < until).order_by(
                    PrinterStateRow.time, PrinterStateRow.id
                )
            )
            return [(t, st) for t, st in [*before.all(), *within.all()]]

    # ------------------------------------------------------------------ racks and beds
    async def put_rack(self, id: str, position: float, slots: int) -> tuple[RackView, bool]:
        async with self.db.session() as s:
            row = await s.get(RackRow, id)
            created = row is None
            if row is None:
                row = RackRow(id=id)
                s.add(row)
            highest = await s.scalar(select(func.max(BedRow.slot)).where(BedRow.rack == id))
            if highest is not None and highest > slots:
                raise Conflict(f"rack {id} holds a bed in slot {highest}; it needs that many slots")
            row.position, row.slots = position, slots
            return RackView(id=id, position=position, slots=slots), created

    async def racks(self) -> list[RackView]:
        async with self.db.session() as s:
            rows = (await s.scalars(select(RackRow).order_by(RackRow.id))).all()
            return [RackView(id=r.id, position=r.position, slots=r.slots) for r in rows]

    async def put_bed(
        self, id: str, type: str, state: str, rack: str | None, slot: int | None
    ) -> tuple[BedView, bool]:
        async with self.db.session() as s:
            if rack is not None:
                holder = await s.get(RackRow, rack)
                if holder is None:
                    raise NotFound(f"rack {rack!r} not found", {"rack": rack})
                if slot is None or not 1 <= slot <= holder.slots:
                    raise Conflict(
                        f"rack {rack} has slots 1 to {holder.slots}; give one as slot (got {slot})",
                        {"field": "slot"},
                    )
                taken = await s.scalar(
                    select(BedRow).where(BedRow.rack == rack, BedRow.slot == slot, BedRow.id != id)
                )
                if taken is not None:
                    raise Conflict(f"slot {slot} of rack {rack} holds bed {taken.id}")
            row = await s.get(BedRow, id)
            created = row is None
            if row is None:
                row = BedRow(id=id)
                s.add(row)
            row.type, row.state = type, state
            if rack is not None:
                row.rack, row.slot, row.printer = rack, slot, None
            await s.flush()
            return bed_view(row), created

    async def beds(self) -> list[BedView]:
        async with self.db.session() as s:
            rows = (await s.scalars(select(BedRow).order_by(BedRow.id))).all()
            return [bed_view(r) for r in rows]

    async def remove_rack(self, id: str) -> None:
        async with self.db.session() as s:
            row = await s.get(RackRow, id)
            if row is None:
                raise NotFound(f"rack {id!r} not found", {"rack": id})
            held = (await s.scalars(select(BedRow.id).where(BedRow.rack == id))).all()
            if held:
                raise Conflict(f"rack {id} still holds beds {', '.join(held)}")
            await s.delete(row)

    async def remove_bed(self, id: str) -> None:
        async with self.db.session() as s:
            row = await s.get(BedRow, id)
            if row is None:
                raise NotFound(f"bed {id!r} not found", {"bed": id})
            if row.reserved_for:
                raise Conflict(f"bed {id} is reserved for printer {row.reserved_for}")
            if row.printer:
                holder = await s.get(PrinterRow, row.printer)
                if holder is not None and holder.bed == id:
                    holder.bed = None
            await s.delete(row)

    # ------------------------------------------------------------------ the farm's task writes
    # Each is one synchronous function run by `Database.run` in one transaction that
    # proves the term: on SQLite one thread hand-off for the whole write, not one per
    # statement.
    async def record_ready(
        self,
        printer: str,
        arm: str,
        timeout_s: float,
        source: str,
        add_as: str | None = None,
        note: Callable[[ReadyOutcome], list[Event]] | None = None,
        send: Note | None = None,
    ) -> ReadyOutcome:
        """A printer finished: in one transaction, its take and replace tasks (with the
        nearest clean bed reserved), its state, and the events `note` says of the tasks
        created; nothing when it already has them. An unknown printer is added (door
        printer<id>, bed type `add_as`) when `add_as` is given, refused otherwise.

        With `send` (the arm's dispatcher is free and waits for this), when the arm has no
        other open task the take is also claimed here, as the dispatcher's `claim` would:
        the queued -> assigned move that records it as sent, and its event (`send` of the
        moved task). The outcome's `claim` holds it, to be published."""

        def work(s: Session) -> ReadyOutcome:
            return self._ready(s, printer, arm, timeout_s, source, add_as, note, send)

        return await self.db.run(work)

    def _ready(
        self,
        s: Session,
        printer: str,
        arm: str,
        timeout_s: float,
        source: str,
        add_as: str | None,
        note: Callable[[ReadyOutcome], list[Event]] | None,
        send: Note | None,
    ) -> ReadyOutcome:
        c = s.connection()
        row = c.execute(_PRINTER_LOCKED, {"b_printer": printer}).first()
        added = row is None and add_as is not None
        if row is None and add_as is not None:
            now = utcnow()
            values = {
                "id": printer,
                "state": "idle",
                "door": f"printer{printer}",
                "bed_type": add_as,
                "position": 0.0,
                "bed": None,
                "updated_at": now,
            }
            c.execute(insert(PRINTERS), values)
            c.execute(_HISTORY, {"b_printer": printer, "b_state": "idle", "b_time": now})
            row = c.execute(_PRINTER, {"b_printer": printer}).first()
        if row is None:
            return ReadyOutcome("unknown_printer")
        pending, busy = c.execute(_OPEN_AT_AND_ANY, {"b_arm": arm, "b_printer": printer}).one()
        if pending:
            found = c.execute(_OPEN_AT, {"b_arm": arm, "b_printer": printer})
            return ReadyOutcome("duplicate", [task_view(t) for t in found])
        alone = send is not None and not busy
        notes: list[str] = []
        now = utcnow()
        tasks = [_new("take", arm, {"printer_id": printer}, timeout_s, source, now)]
        bed = _reserve(c, row)
        if bed is None and c.execute(_FITS, {"b_type": row.bed_type}).first() is None:
            notes.append(  # asked only when none is free
                f"printer {printer} takes bed type {row.bed_type!r}, which no bed has: "
                "no replace job"
            )
        else:
            params: dict[str, Any] = {"printer_id": printer, "bed_id": bed}
            if bed is None:
                notes.append(f"no clean {row.bed_type} bed free now: chosen when it is due")
            tasks.append(_new("replace", arm, params, timeout_s, source, now))
        _set_state_core(c, row, "finished", now)
        views = [task_view(r) for r in c.execute(_INSERT_TASKS, tasks)]
        outcome = ReadyOutcome("created", views, notes, added)
        events = note(outcome) if note is not None else []
        if send is not None and alone:  # nothing before it: the take goes now
            take = views[0]
            job = job_message("take", printer, row.bed, row.door, len(views) > 1)
            values = {"params": {**take.params, "job": job}, "sent_at": utcnow()}
            moved = advance(s, take.id, "assigned", "", values)
            if moved is not None:
                outcome.claim = Claim(moved, job)
                events.append(send(moved))
        outcome.events = self._stage(s, events)
        return outcome

    async def claim(self, task: int, arm: str, note: Note) -> Claim:
        """A first send's store write, in one transaction: the job message built (a replace
        with no bed yet reserves one), the conditional queued -> assigned move that records
        it as sent (one claimer wins), and the move's event (`note`). Claim(None, {}, why)
        when it cannot be sent now; no task and no why when it is no longer queued (another
        claimer won it, or it ended)."""
        return await self.db.run(lambda s: self._claim(s, task, arm, note))

    def _claim(self, s: Session, task: int, arm: str, note: Note) -> Claim:
        c = s.connection()
        row = c.execute(_TASK_LOCKED, {"b_task": task}).first()
        if row is None:
            raise NotFound(f"task {task} not found")
        if row.state != "queued":  # moved since the queue was read: another claimer won
            return Claim(None, {})
        params = dict(row.params)
        if row.kind == "homing":
            message = job_message("homing", None, None, None, False)
        else:
            printer = c.execute(_PRINTER, {"b_printer": str(params.get("printer_id"))}).first()
            if printer is None:
                return Claim(None, {}, f"printer {params.get('printer_id')} no longer exists")
            if row.kind == "take":
                bed = printer.bed
            else:
                bed = params.get("bed_id") or _reserve(c, printer)
                if bed is None:
                    return Claim(None, {}, f"no clean {printer.bed_type} bed is free")
                params["bed_id"] = bed
            queue = open_rows(s, arm, ("queued",), 2)
            after = [t for t in queue if t.id != row.id]
            same = bool(after) and after[0].params.get("printer_id") == printer.id
            message = job_message(row.kind, printer.id, bed, printer.door, same)
        params.pop("job", None)
        values = {"params": {**params, "job": message}, "sent_at": utcnow()}
        moved = advance(s, task, "assigned", "", values)
        if moved is None:
            return Claim(None, message)
        return Claim(moved, message, None, self._stage(s, [note(moved)]))

    async def done(
        self,
        task: int,
        reason: str,
        note: Note,
        moved: Callable[[TaskView, str], Event],
        before: Sequence[Event] = (),
    ) -> tuple[TaskView | None, list[EventView]]:
        """A job the arm did, in one transaction: the task moved to done (through running
        when it was assigned), the job's effects on the farm (beds moved, the printer
        idle), and the events: `before` (what led to it), `note` of each move, `moved` of
        each bed that moved. None when the task had ended meanwhile (nothing changes but
        `before`)."""
        return await self.db.run(lambda s: self._done(s, task, reason, note, moved, before))

    def _done(
        self,
        s: Session,
        task: int,
        reason: str,
        note: Note,
        moved: Callable[[TaskView, str], Event],
        before: Sequence[Event],
    ) -> tuple[TaskView | None, list[EventView]]:
        events: list[Event] = [*before]
        row = s.connection().execute(_TASK_LOCKED, {"b_task": task}).first()
        finished = None
        if row is not None and row.state in ("assigned", "running"):
            if row.state == "assigned":
                running = advance(s, task, "running", "", {})
                if running is not None:
                    events.append(note(running))
            finished = advance(s, task, "done", reason, {})
            if finished is not None:
                events.append(note(finished))
                events += [moved(finished, n) for n in _apply(s.connection(), finished)]
        return finished, self._stage(s, events)

    async def release(self, task: TaskView) -> None:
        """A replace that will not run gives its bed back."""
        bed_id = task.params.get("bed_id")
        if task.kind != "replace" or not bed_id:
            return

        def work(s: Session) -> None:
            bed = s.get(BedRow, str(bed_id))
            if bed is not None and bed.reserved_for == task.params.get("printer_id"):
                bed.reserved_for = None

        await self.db.run(work)


def _new(
    kind: str, arm: str, params: dict[str, Any], timeout_s: float, source: str, now: datetime
) -> dict[str, Any]:
    """A queued task's row, as `new_task` makes it (for one INSERT of several)."""
    return {
        "kind": kind,
        "target": arm,
        "params": params,
        "priority": 0,
        "state": "queued",
        "reason": "",
        "timeout_s": timeout_s,
        "source": source,
        "attempts": 0,
        "created_at": now,
        "assigned_at": None,
        "sent_at": None,
        "started_at": None,
        "finished_at": None,
    }


def _set_state_core(c: Connection, printer: Any, state: str, now: datetime) -> bool:
    """`_set_state` for a printer read as a Core row (of `_PRINTER`): its state and its
    history."""
    if printer.state == state:
        return False
    values = {"b_printer": printer.id, "b_state": state, "b_time": now}
    c.execute(_STATE, values)
    c.execute(_HISTORY, values)
    return True


def _reserve(c: Connection, printer: Any) -> str | None:
    """Reserve the nearest free bed for `printer` (a row of `_PRINTER`): racks nearest
    first, and in each the first fitting bed by slot, read through the beds' index
    (ix_beds_free)."""
    racks = [Rack(r.id, r.position, r.slots) for r in c.execute(_RACKS)]
    for rack in racks_nearest(printer.position, racks):
        tried: list[str] = []
        while True:
            where = {"b_type": printer.bed_type, "b_rack": rack.id, "b_tried": tried}
            chosen = c.execute(_FREE_BED, where).scalar()
            if chosen is None:
                break
            done = c.execute(_RESERVE, {"b_bed": chosen, "b_printer": printer.id})
            if done.rowcount == 1:
                return str(chosen)
            tried.append(chosen)
    return None


def _apply(c: Connection, task: TaskView) -> list[str]:
    """A done job's effects on the farm; what changed, for events."""
    notes: list[str] = []
    printer_id = str(task.params.get("printer_id") or "")
    printer = c.execute(_PRINTER_LOCKED, {"b_printer": printer_id}).first()
    if printer is None or task.kind not in ("take", "replace"):
        return notes
    now = utcnow()
    if task.kind == "take":
        if printer.bed and c.execute(_TAKE_OUT, {"b_bed": printer.bed}).first() is not None:
            notes.append(f"bed {printer.bed} taken out of {printer.id} with its part")
        if printer.bed is not None:
            c.execute(_PRINTER_BED, {"b_printer": printer.id, "b_bed": None})
        _set_state_core(c, printer, "idle", now)
        return notes
    bed_id = task.params.get("bed_id")
    loaded = None
    if bed_id:
        loaded = c.execute(_LOAD, {"b_bed": str(bed_id), "b_printer": printer.id}).scalar()
    if loaded is not None:
        if printer.bed not in (None, loaded):  # it cannot be in there with the new one
            c.execute(_OUT_OF, {"b_bed": printer.bed, "b_printer": printer.id})
        if printer.bed != loaded:
            c.execute(_PRINTER_BED, {"b_printer": printer.id, "b_bed": loaded})
        notes.append(f"bed {loaded} loaded into {printer.id}")
    _set_state_core(c, printer, "idle", now)
    return notes
