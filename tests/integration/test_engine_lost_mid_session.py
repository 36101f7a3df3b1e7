"""An engine stopped in the middle of a session, against a real corral and a private
dockerd (tests/support/private_engine.py): what the operator sees while it is gone, and
that, once it is back, the session ends by itself and leaves nothing on the engine."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.private_engine import PrivateEngine
from tests.support.server import ADMIN, ThreadServer, wait_until

from corral.config import Settings

SLEEPER = """
x-corral-template:
  name: sleeper
  parameters:
    seconds: {type: int, default: 60, min: 0, max: 3600}
services:
  nap:
    image: local/busybox:1
    command: ["sleep", "${seconds}"]
    stop_grace_period: 1s
"""


@pytest.fixture
def engine() -> Iterator[PrivateEngine]:
    with PrivateEngine() as running:
        yield running


def _session(api: httpx.Client, id: str) -> dict[str, Any]:
    found: dict[str, Any] = api.get(f"/sessions/{id}").json()
    return found


def test_a_session_whose_engine_stops_ends_and_is_cleaned(
    engine: PrivateEngine, tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path,
        bootstrap_token=ADMIN,
        local_docker_url=engine.url,
        mdns_enabled=False,
        session_grace_seconds=0.5,
        session_check_seconds=0.2,
    )
    with ThreadServer(settings) as server, server.client() as api:
        assert api.post("/templates", json={"file": SLEEPER}).status_code == 201
        session = api.post("/templates/sleeper/sessions", json={"params": {"seconds": 600}})
        assert session.status_code == 201, session.text
        id = session.json()["id"]
        assert session.json()["state"] == "running"
        assert engine.docker("ps", "-q", "--filter", f"label=corral.session={id}").split()

        engine.stop()  # its containers stop with it
        wait_until(lambda: not api.get("/hosts").json()[0]["reachable"], "engine unreachable")
        assert _session(api, id)["cleaned_at"] is None, "nothing cleaned while it is away"

        engine.start()
        wait_until(lambda: _session(api, id)["cleaned_at"] is not None, "session cleaned", 120)
        done = _session(api, id)
        assert done["state"] == "failed"
        assert done["reason"] == "nap exited with code 137", "it says what happened"
        mine = f"label=corral.session={id}"
        assert engine.docker("ps", "-aq", "--filter", mine).split() == [], "no container left"
        assert engine.docker("network", "ls", "-q", "--filter", mine).split() == []
        assert api.get("/hosts").json()[0]["reachable"], "the engine is back in use"
