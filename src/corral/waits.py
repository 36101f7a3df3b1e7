"""Waits for background loops: a pause on a period that a stop or a wake-up cuts short.

Used by the loops that check something every few seconds but act at once when told.
"""

import asyncio


async def pause(seconds: float, *events: asyncio.Event) -> None:
    """Sleep up to `seconds`, or until any of `events` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
