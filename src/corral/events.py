"""The event bus: every state change is stored, counted and pushed to live subscribers.

Producers call `emit`; the API's stream and the CLI's `events -f` read `subscribe`. Engine
events (control/engine_events.py) are `signal`s: only the services watching them see them.
"""

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from corral.metrics import Metrics
from corral.model.events import EventFilter
from corral.model.views import EventView

log = structlog.get_logger("corral.events")


class Subscription:
    """A live feed of new events; `lagged` is set when the reader fell too far behind."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[EventView] = asyncio.Queue(maxsize=size)
        self.lagged = asyncio.Event()

    def offer(self, event: EventView) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagged.set()


class EventLog(Protocol):
    """Where the bus stores events (store/events.py `EventStore`, given by core.py)."""

    async def append(
        self, kind: str, resource: str, message: str, data: dict[str, Any]
    ) -> EventView: ...

    async def append_many(
        self, events: list[tuple[str, str, str, dict[str, Any]]]
    ) -> list[EventView]: ...

    async def query(
        self, where: EventFilter, limit: int = 100, newest_first: bool = False
    ) -> list[EventView]: ...


class EventBus:
    def __init__(self, store: EventLog, metrics: Metrics, queue_size: int = 1000) -> None:
        self.store = store
        self.metrics = metrics
        self.queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self._watchers: list[tuple[str, Callable[[EventView], None]]] = []

    def watch(self, prefix: str, callback: Callable[[EventView], None]) -> None:
        """Call `callback` at once for every event whose kind starts with `prefix`, emitted
        here or relayed from another replica (for caches that an event makes stale)."""
        self._watchers.append((prefix, callback))

    def signal(
        self, kind: str, resource: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """An observation of the world outside (an engine's container died, started), not a
        state change of corral's: passed at once to the watchers of its kind, neither
        stored, counted nor streamed (what the watchers make of it is, as events)."""
        event = EventView(
            id=0,
            time=datetime.now(UTC),
            kind=kind,
            resource=resource,
            message=message,
            data=data or {},
        )
        for prefix, callback in self._watchers:
            if kind.startswith(prefix):
                callback(event)

    async def emit(
        self, kind: str, resource: str, message: str, data: dict[str, Any] | None = None
    ) -> EventView:
        event = await self.store.append(kind, resource, message, data or {})
        self._publish(event)
        return event

    async def emit_many(
        self, events: Sequence[tuple[str, str, str, dict[str, Any] | None]]
    ) -> list[EventView]:
        """Several events stored in one transaction (a hot path's worth), then published."""
        stored = await self.store.append_many([(k, r, m, d or {}) for k, r, m, d in events])
        for event in stored:
            self._publish(event)
        return stored

    async def query(
        self, where: EventFilter, limit: int = 100, newest_first: bool = False
    ) -> list[EventView]:
        """Stored events that match `where`, oldest first unless `newest_first`."""
        return await self.store.query(where, limit, newest_first)

    def published(self, events: list[EventView]) -> None:
        """Events a store wrote within its own transaction, once it committed."""
        for event in events:
            self._publish(event)

    def _publish(self, event: EventView) -> None:
        self.metrics.events.labels(event.kind).inc()
        log.info(event.message, kind=event.kind, resource=event.resource, event_id=event.id)
        self.relay(event)

    def relay(self, event: EventView) -> None:
        """Pass an event to the watchers and live subscribers (another replica's too)."""
        for prefix, callback in self._watchers:
            if event.kind.startswith(prefix):
                callback(event)
        for sub in list(self._subscribers):
            sub.offer(event)

    def wanted(self) -> tuple[str, ...] | None:
        """The kinds of another replica's events this replica needs now: None for every kind
        (a live subscriber is connected), else only the watchers' prefixes."""
        if self._subscribers:
            return None
        return tuple(prefix for prefix, _ in self._watchers)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        sub = Subscription(self.queue_size)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)
