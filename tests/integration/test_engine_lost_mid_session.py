"""An engine stopped or frozen in the middle of a session, against a real corral and a
private dockerd (tests/support/private_engine.py): what the operator sees while it is gone
(the session `unknown`, not `running`), and that, once it is back, the session is followed
again by itself: ended and cleaned when its container died with the engine, running on when
it survived, nothing left behind and nothing doubled."""

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.private_engine import PrivateEngine
from tests.support.server import ADMIN, ThreadServer, corral_command, wait_until

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
        away = _session(api, id)
        assert away["cleaned_at"] is None, "nothing cleaned while it is away"
        _shown_unknown(api, server, away)

        engine.start()
        wait_until(lambda: _session(api, id)["cleaned_at"] is not None, "session cleaned", 120)
        done = _session(api, id)
        assert done["state"] == "failed"
        assert done["reason"] == "nap exited with code 137", "it says what happened"
        mine = f"label=corral.session={id}"
        assert engine.docker("ps", "-aq", "--filter", mine).split() == [], "no container left"
        assert engine.docker("network", "ls", "-q", "--filter", mine).split() == []
        assert api.get("/hosts").json()[0]["reachable"], "the engine is back in use"


def _shown_unknown(api: httpx.Client, server: ThreadServer, away: dict[str, Any]) -> None:
    """While its host does not answer, a session is `unknown` (not `running`) and says why,
    in the API, its state filter and the CLI."""
    id = away["id"]
    assert away["state"] == "unknown", away
    assert away["reason"].startswith("its host local does not answer since "), away["reason"]
    assert away["reason"].endswith(
        "it was running, what became of it is found out when the host answers"
    ), away["reason"]
    assert [s["id"] for s in api.get("/sessions", params={"state": "unknown"}).json()] == [id]
    assert api.get("/sessions", params={"state": "running"}).json() == []
    shown = subprocess.run(
        [*corral_command(), "session", "show", id],
        env={**os.environ, "CORRAL_URL": server.url, "CORRAL_TOKEN": ADMIN},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"session {id} (sleeper): unknown: its host local does not answer" in shown.stdout
    wait_until(
        lambda: any(e["kind"] == "session.unknown" for e in _events(api, id)),
        "a session.unknown event",
    )


def _events(api: httpx.Client, id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.get(
        "/events", params={"resource": f"session/{id}", "limit": 100}
    ).json()
    return found


def test_a_session_whose_engine_freezes_runs_on_once_it_answers(
    engine: PrivateEngine, tmp_path: Path
) -> None:
    """dockerd frozen (SIGSTOP): the container keeps running, corral cannot tell. The
    session is `unknown` meanwhile, and `running` again with the same single container once
    dockerd answers; it then ends and is cleaned as any other."""
    settings = Settings(
        home=tmp_path,
        bootstrap_token=ADMIN,
        local_docker_url=engine.url,
        mdns_enabled=False,
        session_grace_seconds=0.5,
        session_check_seconds=0.2,
    )
    assert engine.proc is not None
    dockerd = engine.proc.pid
    with ThreadServer(settings) as server, server.client() as api:
        assert api.post("/templates", json={"file": SLEEPER}).status_code == 201
        made = api.post("/templates/sleeper/sessions", json={"params": {"seconds": 600}})
        assert made.status_code == 201, made.text
        id = made.json()["id"]
        mine = f"label=corral.session={id}"
        before = engine.docker("ps", "-aq", "--no-trunc", "--filter", mine).split()
        assert len(before) == 1

        os.kill(dockerd, signal.SIGSTOP)
        try:
            wait_until(lambda: not api.get("/hosts").json()[0]["reachable"], "engine frozen")
            _shown_unknown(api, server, _session(api, id))
        finally:
            os.kill(dockerd, signal.SIGCONT)

        wait_until(lambda: _session(api, id)["state"] == "running", "running again", 120)
        wait_until(
            lambda: any(e["kind"] == "session.found" for e in _events(api, id)),
            "a session.found event",
        )
        back = _session(api, id)
        assert back["reason"] == "", back
        assert back["cleaned_at"] is None
        assert [c["container_id"] for c in back["containers"]] == before
        assert engine.docker("ps", "-q", "--no-trunc", "--filter", mine).split() == before, (
            "the same container runs on, no second one"
        )
        kinds = [e["kind"] for e in _events(api, id)]
        assert "session.failed" not in kinds, kinds

        ended = api.delete(f"/sessions/{id}").json()
        assert ended["state"] == "cancelled"
        assert ended["cleaned_at"] is not None
        assert engine.docker("ps", "-aq", "--filter", mine).split() == [], "no container left"
        assert engine.docker("network", "ls", "-q", "--filter", mine).split() == []


def test_a_session_ended_while_its_engine_is_frozen_is_cleaned_once_it_answers(
    engine: PrivateEngine, tmp_path: Path
) -> None:
    """`session rm` while dockerd is frozen answers at once (ended, removal pending), and
    corral removes the container and network by itself once dockerd answers."""
    settings = Settings(
        home=tmp_path,
        bootstrap_token=ADMIN,
        local_docker_url=engine.url,
        mdns_enabled=False,
        session_grace_seconds=0.5,
        session_check_seconds=0.2,
    )
    assert engine.proc is not None
    dockerd = engine.proc.pid
    with ThreadServer(settings) as server, server.client() as api:
        assert api.post("/templates", json={"file": SLEEPER}).status_code == 201
        made = api.post("/templates/sleeper/sessions", json={"params": {"seconds": 600}})
        assert made.status_code == 201, made.text
        id = made.json()["id"]
        mine = f"label=corral.session={id}"

        os.kill(dockerd, signal.SIGSTOP)
        try:
            wait_until(lambda: not api.get("/hosts").json()[0]["reachable"], "engine frozen")
            ended = subprocess.run(
                [*corral_command(), "session", "rm", id],
                env={**os.environ, "CORRAL_URL": server.url, "CORRAL_TOKEN": ADMIN},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert ended.returncode == 0, ended.stderr
            assert ended.stdout.strip() == (
                f"session {id} cancelled, ended (removal pending: host unreachable)"
            )
        finally:
            os.kill(dockerd, signal.SIGCONT)

        wait_until(lambda: _session(api, id)["cleaned_at"] is not None, "session cleaned", 120)
        assert _session(api, id)["state"] == "cancelled"
        assert engine.docker("ps", "-aq", "--filter", mine).split() == [], "no container left"
        assert engine.docker("network", "ls", "-q", "--filter", mine).split() == []
