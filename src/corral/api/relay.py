"""On a follower replica, a robot's WebSocket is relayed to the leader (which holds the
fleet in memory): messages pass both ways as they are, and when either side ends, so does the other.

Used by the leader forward; a robot never needs to know which replica leads.
"""

import asyncio
import contextlib
import json
from collections.abc import Callable

import structlog
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

log = structlog.get_logger("corral.api.relay")
SKIP_HEADERS = {"host", "connection", "upgrade", "content-length"}
LEADER_GONE = 1012  # "service restart": the robot reconnects, and finds the new leader


def leader_request(
    leader: str, replica: str, scope: Scope, skip: Callable[[str], bool]
) -> tuple[str, list[tuple[str, str]]]:
    """The leader's URL for this request (same path and query) and the request's headers
    but those `skip` names (lower case), marked as forwarded by `replica`."""
    headers = [
        (name, value.decode("latin-1"))
        for name, value in ((k.decode("latin-1"), v) for k, v in scope["headers"])
        if not skip(name.lower())
    ]
    headers.append(("X-Forwarded-By", replica))
    query = scope.get("query_string", b"").decode("latin-1")
    return leader.rstrip("/") + scope["path"] + (f"?{query}" if query else ""), headers


def _not_relayed(name: str) -> bool:
    return name in SKIP_HEADERS or name.startswith("sec-websocket-")


async def relay(leader: str, replica: str, scope: Scope, receive: Receive, send: Send) -> None:
    """Relay one WebSocket to `leader` (an http(s) URL); `replica` names this one."""
    if (await receive())["type"] != "websocket.connect":
        return
    url, headers = leader_request(leader, replica, scope, _not_relayed)
    url = "ws" + url.removeprefix("http")
    try:
        upstream = await connect(url, additional_headers=headers, open_timeout=5)
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        log.info("robot socket not relayed: no answer", leader=leader, error=str(exc))
        await send({"type": "websocket.accept"})
        refusal = {
            "type": "error",
            "code": "leader_unreachable",
            "message": f"this corral replica follows, and the leader at {leader} did not "
            f"answer: {exc}; try again",
        }
        await send({"type": "websocket.send", "text": json.dumps(refusal)})
        await send({"type": "websocket.close", "code": 4503})
        return
    await send({"type": "websocket.accept"})
    log.info("robot socket relayed to the leader", leader=leader, path=scope["path"])
    async with upstream:
        to_leader = asyncio.create_task(_up(upstream, receive))
        to_robot = asyncio.create_task(_down(upstream, send))
        done, pending = await asyncio.wait(
            {to_leader, to_robot}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if to_robot in done:  # the leader ended it: tell the robot how
        code = upstream.close_code if upstream.close_code not in (None, 1006) else LEADER_GONE
        log.info("the leader ended a relayed robot socket", leader=leader, close=code)
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code})


async def _up(upstream: ClientConnection, receive: Receive) -> None:
    """The robot's messages to the leader, until the robot goes."""
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await upstream.send(message["text"])
        elif message.get("bytes") is not None:
            await upstream.send(message["bytes"])


async def _down(upstream: ClientConnection, send: Send) -> None:
    """The leader's messages to the robot, until the leader closes or goes."""
    with contextlib.suppress(ConnectionClosed):
        async for message in upstream:
            if isinstance(message, str):
                await send({"type": "websocket.send", "text": message})
            else:
                await send({"type": "websocket.send", "bytes": message})
