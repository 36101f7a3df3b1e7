"""Streaming answers: plain text (container output) for the stack and session routes, and
the headers of every server-sent event stream (events, the fleet's live stream).

The first chunk of a text stream is read before the answer starts, so a missing container
is still a clean 4xx rather than a stream that breaks off.
"""

from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

# nothing between corral and the reader keeps or holds back a frame
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
# a route's OpenAPI answer for a server-sent event stream
EVENT_STREAM: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


def event_stream(frames: AsyncIterator[Any]) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)


async def text_stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    first = await anext(chunks, b"")

    async def body() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(body(), media_type="text/plain")
