"""Plain-text streaming answers (container output) for the stack and session routes.

The first chunk is read before the answer starts, so a missing container is still a clean
4xx rather than a stream that breaks off.
"""

from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse


async def text_stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    first = await anext(chunks, b"")

    async def body() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(body(), media_type="text/plain")
