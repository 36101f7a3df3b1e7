"""Tasks: the one work-item model for robots and machines (the print farm's arm now, the
robot fleet next). REST and triggers create them; each target's executor runs them.

States move forward only: queued -> assigned -> running -> done | failed | cancelled; a
retry is a new task.
"""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from corral.errors import Conflict, NotFound
from corral.events import EventBus
from corral.model.views import OPEN_TASK_STATES, TaskView
from corral.store.tasks import Event, TaskStore, new_task


@dataclass(frozen=True)
class Executor:
    """Who runs a target's tasks: which kinds it takes, and how to check their params."""

    kinds: tuple[str, ...]
    check: Callable[[str, dict[str, Any]], Awaitable[None]]
    wake: Callable[[], None]
    on_end: Callable[[TaskView], Awaitable[None]]
    cancel_in_flight: bool = True  # whether assigned/running tasks may be cancelled


class TaskService:
    def __init__(self, store: TaskStore, bus: EventBus) -> None:
        self.store = store
        self.bus = bus
        self.executors: dict[str, Executor] = {}
        # reads, and changes that are no move, are the store's own
        self.get, self.find, self.open_for = store.get, store.find, store.open_for
        self.queue = store.queue  # a dispatcher's round: the task out and the next queued
        self.update = store.update

    def register(self, target: str, executor: Executor) -> None:
        self.executors[target] = executor

    async def create(
        self,
        kind: str,
        target: str,
        params: dict[str, Any],
        priority: int = 0,
        timeout_s: float = 600.0,
        source: str = "rest",
    ) -> TaskView:
        executor = self.executors.get(target)
        if executor is None:
            known = ", ".join(sorted(self.executors)) or "none (enable the farm)"
            raise NotFound(
                f"no executor for target {target!r}; known: {known}", {"field": "target"}
            )
        if kind not in executor.kinds:
            raise Conflict(
                f"{target} does not take {kind!r} tasks; it takes {', '.join(executor.kinds)}",
                {"field": "kind"},
            )
        await executor.check(kind, params)
        [task] = await self.store.add([new_task(kind, target, params, priority, timeout_s, source)])
        await self.announce([task])
        executor.wake()
        return task

    def queued_events(self, tasks: list[TaskView]) -> list[Event]:
        return [
            (
                "task.queued",
                f"task/{task.id}",
                f"task {task.id} {task.kind} for {task.target} queued ({task.source})"
                + _about(task),
                {"kind": task.kind, "target": task.target, "params": task.params},
            )
            for task in tasks
        ]

    async def announce(self, tasks: list[TaskView]) -> None:
        await self.bus.emit_many(self.queued_events(tasks))

    async def move(
        self,
        id: int,
        state: str,
        reason: str = "",
        before: Sequence[Event] = (),
        only_from: Sequence[str] | None = None,
        **values: Any,
    ) -> TaskView | None:
        """Move a task forward with its event (after `before`, stored in the same
        transaction either way); None when it was not a step forward (from `only_from`)."""
        task, stored = await self.store.advance(
            id, state, reason, moved_event, before, only_from, **values
        )
        self.bus.published(stored)
        if task is not None and state in ("failed", "cancelled"):
            executor = self.executors.get(task.target)
            if executor is not None:
                await executor.on_end(task)
        return task

    async def cancel(self, id: int) -> TaskView:
        task = await self.store.get(id)
        if task.state not in OPEN_TASK_STATES:
            raise Conflict(f"task {id} is {task.state}; only open tasks can be cancelled")
        executor = self.executors.get(task.target)
        in_flight = executor is not None and not executor.cancel_in_flight
        if task.state != "queued" and in_flight:
            raise Conflict(_ends_with_target(task))
        # Only from queued where the target cannot cancel in flight: it may have been sent
        # since the read above.
        moved = await self.move(
            id, "cancelled", "cancelled by request", only_from=("queued",) if in_flight else None
        )
        if moved is None:
            latest = await self.store.get(id)
            if latest.state in OPEN_TASK_STATES:
                raise Conflict(_ends_with_target(latest))
            raise Conflict(f"task {id} became {latest.state} meanwhile")
        if executor is not None:
            executor.wake()
        return moved

    async def retry(self, id: int) -> TaskView:
        task = await self.store.get(id)
        if task.state not in ("failed", "cancelled"):
            raise Conflict(f"task {id} is {task.state}; only failed or cancelled ones are retried")
        params = {k: v for k, v in task.params.items() if k not in ("job", "bed_id")}
        return await self.create(
            task.kind, task.target, params, task.priority, task.timeout_s, f"retry of task {id}"
        )


def _ends_with_target(task: TaskView) -> str:
    return (
        f"task {task.id} is {task.state} with {task.target}; it ends when {task.target} "
        "reports (or falls silent past its timeout)"
    )


def moved_event(task: TaskView) -> Event:
    """The event of a task that moved to its (new) state, stored with the move."""
    state, reason = task.state, task.reason
    return (
        f"task.{state}",
        f"task/{task.id}",
        f"task {task.id} {task.kind} {state}" + _about(task) + (f": {reason}" if reason else ""),
        {"kind": task.kind, "target": task.target, "reason": reason},
    )


def _about(task: TaskView) -> str:
    printer = task.params.get("printer_id")
    return f" (printer {printer})" if printer else ""
