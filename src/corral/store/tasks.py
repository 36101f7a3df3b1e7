"""Stored tasks: created, listed, moved forward through their states.

Shared by the print farm and the robot fleet; the executors (the farm's arm dispatcher)
are the only writers of assigned/running/done. Moves are leader-only writes: each proves
the leadership term (a replica that lost the lead moves nothing).
"""

from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import Integer, Select, Table, Update, bindparam, select, update
from sqlalchemy.orm import Session

from corral.errors import NotFound
from corral.model.views import OPEN_TASK_STATES, EventView, TaskState, TaskView
from corral.store.database import Database
from corral.store.events import EventStore
from corral.store.tables import TaskRow, utcnow

Event = tuple[str, str, str, dict[str, Any]]  # kind, resource, message, data
Note = Callable[[TaskView], Event]  # a moved task's event

TRANSITIONS: dict[str, set[str]] = {
    "queued": {"assigned", "failed", "cancelled"},
    "assigned": {"running", "done", "failed", "cancelled"},
    "running": {"done", "failed", "cancelled"},
}
_STATES: dict[str, TaskState] = {
    "queued": "queued",
    "assigned": "assigned",
    "running": "running",
    "done": "done",
    "failed": "failed",
    "cancelled": "cancelled",
}


TASKS = cast(Table, TaskRow.__table__)
# The hot paths' statements, built once (SQLAlchemy Core: no ORM objects loaded or flushed,
# and a statement built once is compiled once).
_EXISTS = select(TASKS.c.id).where(TASKS.c.id == bindparam("b_id"))
_MOVES: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Update] = {}
_OPEN: dict[tuple[bool, bool, bool], Select[Any]] = {}


def task_view(row: Any) -> TaskView:
    """A task as the API shows it, from a stored row (an ORM TaskRow or a Core row)."""
    return TaskView(
        id=row.id,
        kind=row.kind,
        target=row.target,
        params=dict(row.params),
        priority=row.priority,
        state=_STATES.get(row.state, "failed"),
        reason=row.reason,
        timeout_s=row.timeout_s,
        source=row.source,
        attempts=row.attempts,
        created_at=row.created_at,
        assigned_at=row.assigned_at,
        sent_at=row.sent_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def new_task(
    kind: str,
    target: str,
    params: dict[str, Any],
    priority: int,
    timeout_s: float,
    source: str,
) -> TaskRow:
    return TaskRow(
        kind=kind,
        target=target,
        params=params,
        priority=priority,
        state="queued",
        reason="",
        timeout_s=timeout_s,
        source=source,
        attempts=0,
    )


class TaskStore:
    def __init__(self, db: Database, events: EventStore | None = None) -> None:
        self.db = db
        self.events = events  # None: a move's event is not stored with it

    async def add(self, rows: Sequence[TaskRow]) -> list[TaskView]:
        async with self.db.session() as s:
            s.add_all(rows)
            await s.flush()
            return [task_view(r) for r in rows]

    async def get(self, id: int) -> TaskView:
        async with self.db.session() as s:
            row = await s.get(TaskRow, id)
            if row is None:
                raise NotFound(f"task {id} not found", {"task": id})
            return task_view(row)

    async def find(
        self,
        state: str | None = None,
        target: str | None = None,
        kind: str | None = None,
        limit: int = 200,
    ) -> list[TaskView]:
        async with self.db.session() as s:
            query = select(TaskRow)
            if state is not None:
                query = query.where(TaskRow.state == state)
            if target is not None:
                query = query.where(TaskRow.target == target)
            if kind is not None:
                query = query.where(TaskRow.kind == kind)
            rows = (await s.scalars(query.order_by(TaskRow.id.desc()).limit(limit))).all()
            return [task_view(r) for r in rows]

    async def open_for(
        self,
        target: str,
        states: Sequence[str] = OPEN_TASK_STATES,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[TaskView]:
        """Open tasks of a target (or those in `states`) in the order they are served;
        `limit` of them from `offset` on."""
        async with self.db.session() as s:
            return await s.run_sync(open_rows, target, states, limit, offset)

    async def queue(self, target: str, page: int) -> tuple[TaskView | None, list[TaskView]]:
        """In one read: a task of `target` out (assigned or running), if any, and its
        first `page` queued tasks in the order they are served (a dispatcher's round)."""

        def work(s: Session) -> tuple[TaskView | None, list[TaskView]]:
            out = open_rows(s, target, ("assigned", "running"), 1)
            queued = open_rows(s, target, ("queued",), page)
            return (out[0] if out else None), queued

        return await self.db.run(work, fenced=False)

    async def transition(
        self, id: int, state: str, reason: str = "", **values: Any
    ) -> TaskView | None:
        """Move a task forward (one conditional UPDATE, so racing moves cannot both win);
        None when that is not a step forward from where it is."""
        task, _ = await self.advance(id, state, reason, None, **values)
        return task

    async def advance(
        self,
        id: int,
        state: str,
        reason: str,
        note: Note | None,
        before: Sequence[Event] = (),
        only_from: Sequence[str] | None = None,
        **values: Any,
    ) -> tuple[TaskView | None, list[EventView]]:
        """`transition`, and the move's event (`note` of the moved task) stored in the same
        transaction, after `before` (what led to it, stored even when the move does not
        happen); the events, to publish once committed. `only_from`: the states it may
        leave (default: every state it is a step forward from)."""

        def work(s: Session) -> tuple[TaskView | None, list[EventView]]:
            return self.advance_in(s, id, state, reason, note, values, before, only_from)

        return await self.db.run(work)

    def advance_in(
        self,
        s: Session,
        id: int,
        state: str,
        reason: str,
        note: Note | None,
        values: dict[str, Any],
        before: Sequence[Event] = (),
        only_from: Sequence[str] | None = None,
    ) -> tuple[TaskView | None, list[EventView]]:
        """`advance` within the caller's synchronous transaction; `before`: events stored
        ahead of the move's (what led to it), also when the move does not happen."""
        task = advance(s, id, state, reason, values, only_from)
        events = [*before, *([note(task)] if task is not None and note is not None else [])]
        if self.events is None or not events:
            return task, []
        return task, self.events.stage_sync(s, events)

    async def update(self, id: int, **values: Any) -> TaskView:
        """Set a task's fields (no move); the task as it is now."""

        def work(s: Session) -> TaskView:
            row = s.get(TaskRow, id, with_for_update=True)
            if row is None:
                raise NotFound(f"task {id} not found", {"task": id})
            for key, value in values.items():
                setattr(row, key, value)
            return task_view(row)

        return await self.db.run(work)


def advance(
    s: Session,
    id: int,
    state: str,
    reason: str,
    values: dict[str, Any],
    only_from: Sequence[str] | None = None,
) -> TaskView | None:
    """Move a task forward within the caller's transaction (one conditional UPDATE);
    None when that is not a step forward from where it is."""
    now = utcnow()
    changes: dict[str, Any] = {"state": state, "reason": reason, **values}
    if state == "assigned":
        changes["assigned_at"] = now
    elif state == "running":
        changes["started_at"] = now
    elif state in ("done", "failed", "cancelled"):
        changes["finished_at"] = now
    sources = tuple(sorted(s for s, targets in TRANSITIONS.items() if state in targets))
    if only_from is not None:
        sources = tuple(source for source in sources if source in only_from)
    connection = s.connection()
    moved = connection.execute(
        _move(state, sources, tuple(sorted(changes))),
        {"b_id": id, **{f"set_{k}": v for k, v in changes.items()}},
    ).first()
    if moved is not None:
        return task_view(moved)
    if connection.execute(_EXISTS, {"b_id": id}).first() is None:
        raise NotFound(f"task {id} not found", {"task": id})
    return None


def _move(state: str, sources: tuple[str, ...], keys: tuple[str, ...]) -> Update:
    """The conditional UPDATE of one kind of move (built once per kind): the task, if it
    is in one of `sources`, gets the values `set_<key>`; the moved row returned."""
    found = _MOVES.get((state, sources, keys))
    if found is None:
        values: dict[str, Any] = {k: bindparam(f"set_{k}") for k in keys}
        if state == "assigned":
            values["attempts"] = TASKS.c.attempts + 1
        found = _MOVES[(state, sources, keys)] = (
            update(TASKS)
            .where(TASKS.c.id == bindparam("b_id"), TASKS.c.state.in_(sources))
            .values(values)
            .returning(*TASKS.c)
        )
    return found


def open_rows(
    s: Session,
    target: str | None,
    states: Sequence[str] = OPEN_TASK_STATES,
    limit: int | None = None,
    offset: int = 0,
) -> list[TaskView]:
    """Open tasks (of one target, or all; or those in `states`) in the order they are
    served; `limit` of them from `offset` on."""
    shape = (target is not None, limit is not None, offset > 0)
    query = _OPEN.get(shape)
    if query is None:
        query = select(TASKS).where(TASKS.c.state.in_(bindparam("b_states", expanding=True)))
        if target is not None:
            query = query.where(TASKS.c.target == bindparam("b_target"))
        query = query.order_by(TASKS.c.priority.desc(), TASKS.c.id)
        if limit is not None:
            query = query.limit(bindparam("b_limit", type_=Integer))
        if offset:
            query = query.offset(bindparam("b_offset", type_=Integer))
        _OPEN[shape] = query
    params: dict[str, Any] = {"b_states": list(states)}
    if target is not None:
        params["b_target"] = target
    if limit is not None:
        params["b_limit"] = limit
    if offset:
        params["b_offset"] = offset
    return [task_view(r) for r in s.connection().execute(query, params)]
