"""Event routes: query the stored history, or follow new events live over SSE.

The stream replays what the reader missed (`Last-Event-ID` or `after_id`), then goes live.
"""

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from corral.api.deps import CoreDep, Reader
from corral.api.streams import EVENT_STREAM, event_stream
from corral.core import Core
from corral.errors import Invalid
from corral.model.events import EventFilter
from corral.model.fields import Time
from corral.model.views import EventView

router = APIRouter(prefix="/events", tags=["events"])

KindQ = Annotated[
    str | None, Query(max_length=64, description="Exact kind, or a prefix ending in '*'.")
]
ResourceQ = Annotated[
    str | None, Query(max_length=200, description="Exact resource, or a prefix ending in '*'.")
]
SinceQ = Annotated[Time | None, Query(description="RFC 3339 time with a zone, inclusive.")]
AfterQ = Annotated[int | None, Query(ge=0, le=2**53, description="Only events with a larger id.")]
HEARTBEAT_SECONDS = 15.0
BACKFILL_PAGE = 500


def _filter(
    kind: str | None,
    resource: str | None,
    since: datetime | None,
    until: datetime | None,
    after_id: int | None,
) -> EventFilter:
    return EventFilter(kind, resource, since, until, after_id)


@router.get("", summary="Query events")
async def list_events(
    core: CoreDep,
    _: Reader,
    kind: KindQ = None,
    resource: ResourceQ = None,
    since: SinceQ = None,
    until: SinceQ = None,
    after_id: AfterQ = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    newest_first: bool = False,
) -> list[EventView]:
    where = _filter(kind, resource, since, until, after_id)
    return await core.bus.query(where, limit, newest_first)


@router.get(
    "/stream",
    summary="Follow events (server-sent events)",
    response_class=StreamingResponse,
    responses=EVENT_STREAM,
)
async def stream_events(
    core: CoreDep,
    _: Reader,
    kind: KindQ = None,
    resource: ResourceQ = None,
    after_id: AfterQ = None,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    start = after_id
    if last_event_id is not None:
        if not last_event_id.isdigit():
            raise Invalid("Last-Event-ID must be an event id", {"field": "Last-Event-ID"})
        start = int(last_event_id)
    where = _filter(kind, resource, None, None, None)
    return event_stream(_follow(core, where, start))


def _frame(event: EventView) -> str:
    return f"id: {event.id}\nevent: {event.kind}\ndata: {event.model_dump_json()}\n\n"


async def _follow(core: Core, where: EventFilter, after_id: int | None) -> AsyncIterator[str]:
    """Replay from `after_id` (if given), then stream live; catch up from the store on lag."""
    async with core.bus.subscribe() as sub:
        yield ": connected\n\n"
        if after_id is None:
            newest = await core.bus.query(EventFilter(), limit=1, newest_first=True)
            last = newest[0].id if newest else 0
        else:
            last = after_id
        backfill = after_id is not None
        while not core.stopping.is_set():
            if backfill or sub.lagged.is_set():
                sub.lagged.clear()
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                page = await core.bus.query(_after(where, last), limit=BACKFILL_PAGE)
                for event in page:
                    yield _frame(event)
                    last = event.id
                backfill = len(page) == BACKFILL_PAGE
                continue
            try:
                event = await asyncio.wait_for(sub.queue.get(), timeout=HEARTBEAT_SECONDS)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if event.id > last:
                last = event.id
                if where.matches(event):
                    yield _frame(event)


def _after(where: EventFilter, last: int) -> EventFilter:
    return EventFilter(where.kind, where.resource, where.since, where.until, last)
