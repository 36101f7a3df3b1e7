"""The one dependency waiter of stacks and sessions: look at a dependency until it is
ready, has failed, or the deadline passes.

Called by the stack reconciler (control/stacks.py, before each wave of a pass) and the
session service (control/sessions.py, before each wave of a start); the judgement of what
an engine reports is model/readiness.py `judge`.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable

from corral.model.readiness import Verdict


async def until_decided(
    look: Callable[[], Awaitable[Verdict]], deadline: float, pause: float, longest: float
) -> Verdict:
    """Call `look` until it answers ready or failed, pausing `pause` seconds (doubling up to
    `longest`) between looks; once `deadline` (time.monotonic) has passed, the last
    `waiting` verdict is the answer."""
    while True:
        verdict = await look()
        if verdict.outcome != "waiting" or time.monotonic() > deadline:
            return verdict
        await asyncio.sleep(pause)
        pause = min(pause * 2, longest)
