"""The follower's forward while an election is under way: a request waits for the lead to
settle instead of getting 503 at once (fake replicas; the real ones are in
tests/integration/test_replicas.py)."""

import asyncio
from typing import Any, cast

import pytest

from corral.api import forward
from corral.api.forward import LeaderForward
from corral.core import Core


class FakeReplicas:
    shared = True

    def __init__(self) -> None:
        self.leading = asyncio.Event()
        self.url = "http://127.0.0.1:1"
        self.id = "me"
        self.crowned = False

    async def leader_url(self) -> str | None:
        return self.url if self.crowned else None


class FakeCore:
    def __init__(self) -> None:
        self.replicas = FakeReplicas()


async def _post(middleware: LeaderForward) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/templates", "headers": []}
    await middleware(scope, receive, send)
    return sent


def _middleware(core: FakeCore, served: list[str]) -> LeaderForward:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        served.append(scope["path"])
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return LeaderForward(app, cast(Core, core))


async def test_a_request_during_the_election_waits_for_this_replica_to_lead() -> None:
    core, served = FakeCore(), []
    middleware = _middleware(core, served)

    async def elected() -> None:
        await asyncio.sleep(0.2)
        core.replicas.crowned = True  # crowned in the database, still reading the fleet
        await asyncio.sleep(0.2)
        core.replicas.leading.set()

    election = asyncio.create_task(elected())
    sent = await _post(middleware)
    await election
    assert served == ["/templates"]
    assert sent[0]["status"] == 201


async def test_with_no_leader_for_long_the_answer_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "ELECTION_WAIT_SECONDS", 0.3)
    core, served = FakeCore(), []
    sent = await _post(_middleware(core, served))
    assert served == []
    assert sent[0]["status"] == 503
