"""The event bus: every state change is stored, counted and pushed to live subscribers.

Producers call `emit`; the API's stream and the CLI's `events -f` read `subscribe`.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog

from corral.metrics import Metrics
from corral.model.views import EventView
from corral.store.events import EventStore

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


class EventBus:
    def __init__(self, store: EventStore, metrics: Metrics, queue_size: int = 1000) -> None:
        self.store = store
        self.metrics = metrics
        self.queue_size = queue_size
        self._subscribers: set[Subscription] = set()

    async def emit(
        self, kind: str, resource: str, message: str, data: dict[str, Any] | None = None
    ) -> EventView:
        event = await self.store.append(kind, resource, message, data or {})
        self.metrics.events.labels(kind).inc()
        log.info(message, kind=kind, resource=resource, event_id=event.id)
        for sub in list(self._subscribers):
            sub.offer(event)
        return event

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        sub = Subscription(self.queue_size)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)
