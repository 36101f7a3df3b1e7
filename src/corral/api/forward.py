"""On a follower replica, requests that change state (and reads of what only the leader
holds in memory: the fleet, the arm, broker links) are passed to the leader and its
answer returned as is, so every replica serves the whole API with one writer. A robot's
own channel (its WebSocket, its HTTP reports and polls) is served where it lands: the
fleet passes on to the leader only what needs it (fleet/peers.py).

Installed by create_app; a no-op on SQLite and on the leader.
"""

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.api.errors import error_response
from corral.core import Core

READ_METHODS = {"GET", "HEAD", "OPTIONS"}
ELECTION_WAIT_SECONDS = 5.0  # a request that finds no leader waits this long for one
# a passed-on event stream silent this long is ended (corral's streams speak every 10 s
# at most), so a leader gone without closing its connection does not hold its readers
STREAM_SILENCE_SECONDS = 30.0
LEADER_READS = ("/fleet", "/farm/arm", "/brokers")
LOCAL = ("/healthz", "/metrics", "/events", "/ui", "/docs", "/openapi.json", "/whoami")
HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}
# a robot's own channel: served by the replica it reached
ROBOT_CHANNEL = re.compile(r"^/fleet/robots/[^/]+/(telemetry|checkpoint|commands|acks|nonce)$")


def needs_leader(method: str, path: str) -> bool:
    if path.startswith(LOCAL) or ROBOT_CHANNEL.match(path):
        return False
    return method not in READ_METHODS or path.startswith(LEADER_READS)


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


class LeaderForward:
    def __init__(self, app: ASGIApp, core: Core) -> None:
        self.app = app
        self.core = core
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        replicas = self.core.replicas
        if (
            not replicas.shared
            or replicas.leading.is_set()
            or scope["type"] != "http"
            or not needs_leader(scope["method"], scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        leader = await self._leader()
        if leader is None or leader == replicas.url:
            if replicas.leading.is_set():
                await self.app(scope, receive, send)
                return
            response = error_response(
                503,
                "no_leader",
                "no replica leads right now (an election takes a few seconds); try again",
                headers={"Retry-After": "2"},
            )
            await response(scope, receive, send)
            return
        await self._forward(leader, scope, receive, send)

    async def _leader(self) -> str | None:
        """The leader's URL; while an election is under way (no leader known, or this
        replica crowned and still reading what the last leader left), wait a few seconds
        for it rather than refuse at once."""
        replicas = self.core.replicas
        deadline = time.monotonic() + ELECTION_WAIT_SECONDS
        while True:
            leader = await replicas.leader_url()
            settled = leader is not None and leader != replicas.url
            if settled or replicas.leading.is_set() or time.monotonic() > deadline:
                return leader
            await asyncio.sleep(0.1)

    async def _forward(self, leader: str, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message: Message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        url, headers = leader_request(
            leader, self.core.replicas.id, scope, lambda name: name in HOP_HEADERS
        )
        if self.client is None:
            self.client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=5.0))
        request = self.client.build_request(scope["method"], url, content=body, headers=headers)
        answer: httpx.Response | None = None
        try:
            answer = await self.client.send(request, stream=True)
            out: list[Any] = [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in answer.headers.items()
                if k.lower() not in HOP_HEADERS and k.lower() != "content-encoding"
            ]
            if answer.headers.get("content-type", "").startswith("text/event-stream"):
                await self._pass_stream(answer, out, receive, send)  # ends on HTTP errors
                return
            content = await answer.aread()
        except httpx.HTTPError as exc:
            response = error_response(
                503, "leader_unreachable", f"the leader at {leader} did not answer: {exc}"
            )
            await response(scope, receive, send)
            return
        finally:
            if answer is not None:
                await answer.aclose()
        out.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": answer.status_code, "headers": out})
        await send({"type": "http.response.body", "body": content})

    @staticmethod
    async def _pass_stream(
        answer: httpx.Response, headers: list[Any], receive: Receive, send: Send
    ) -> None:
        """The leader's event stream, passed on as it comes until either end leaves (the
        client hanging up closes the leader's stream; the leader's end, or its loss, ends
        the client's, whose reconnect finds the next leader)."""
        await send(
            {"type": "http.response.start", "status": answer.status_code, "headers": headers}
        )

        async def pump() -> None:
            chunks = answer.aiter_bytes()  # decoded, as the header is dropped
            with contextlib.suppress(httpx.HTTPError, TimeoutError, StopAsyncIteration):
                while True:  # a leader cut off without a word is given up after a silence
                    chunk = await asyncio.wait_for(anext(chunks), STREAM_SILENCE_SECONDS)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async def hang_up() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(hang_up())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(OSError, RuntimeError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
