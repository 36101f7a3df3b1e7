"""A robot's raw WebSocket for protocol tests (docs/fleet-protocol.md): opened on /fleet/ws
with a robot token, and read until a message of one type. Imports nothing of corral.
"""

import asyncio
import json
from typing import Any

import websockets


async def connect_robot(url: str, token: str) -> Any:
    """A socket on `url`'s /fleet/ws (http:// given) with `token` as its bearer."""
    return await websockets.connect(
        url.replace("http://", "ws://") + "/fleet/ws",
        additional_headers={"Authorization": f"Bearer {token}"},
    )


async def expect(ws: Any, kind: str, within: float = 30.0) -> dict[str, Any]:
    """The next message of type `kind` (those before it are skipped); each message must
    come within `within` seconds."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), within))
        if message["type"] == kind:
            return dict(message)
