"""Sessions on the real local engine: the edgeECHO pipeline end to end, failures, expiry,
the queue, concurrency limits and bad input.

What a user checks: the data arrived (the emulators' own counts), the session's state and
history, and that nothing the session made is left on the engine afterwards.
"""

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.edgeecho import build_emulators, summary
from tests.support.engines import LOCAL_URL, engine_container_ids
from tests.support.server import ADMIN, ThreadServer

from corral.config import Settings

CRASH = """
x-corral-template:
  name: crash
  parameters:
    code: {type: int, default: 3, min: 0, max: 255}
services:
  first:
    image: local/busybox:1
    command: ["sh", "-c", "sleep 0.5; exit ${code}"]
  second:
    image: local/busybox:1
    command: ["sleep", "60"]
    stop_grace_period: 1s
"""
SLEEPER_WITH_CPUS = """
x-corral-template:
  name: sleeper
  parameters:
    seconds: {type: int, default: 60, min: 0, max: 3600}
  resources: {cpus: CPUS}
services:
  nap:
    image: local/busybox:1
    command: ["sleep", "${seconds}"]
    stop_grace_period: 1s
"""
# A sleeper that reserves a tenth of a CPU: fits on any engine.
SLEEPER = SLEEPER_WITH_CPUS.replace("CPUS", "0.1")


@pytest.fixture(scope="module")
def example() -> Path:
    return build_emulators()


@pytest.fixture
def server(local_engine: str, example: Path, tmp_path: Path) -> Iterator[ThreadServer]:
    settings = Settings(
        home=tmp_path,
        bootstrap_token=ADMIN,
        local_docker_url=local_engine,
        templates_dir=example,
        session_grace_seconds=0.5,
        session_check_seconds=0.2,
    )
    with ThreadServer(settings) as running:
        yield running


def _wait(api: httpx.Client, session: str, done: str = "cleaned", limit: float = 60) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        view = api.get(f"/sessions/{session}").json()
        if (done == "cleaned" and view["cleaned_at"]) or view["state"] == done:
            return view
        time.sleep(0.2)
    raise AssertionError(f"session {session} never reached {done}: {view}")


def _left_on_engine(session: str) -> tuple[list[str], list[str]]:
    containers = engine_container_ids(LOCAL_URL, f"corral.session={session}")
    networks = subprocess.run(
        ["docker", "network", "ls", "-q", "--filter", f"label=corral.session={session}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return containers, networks


@pytest.mark.parametrize("plain", [False, True], ids=["segmented", "plain"])
def test_edgeecho_pipeline_delivers_every_message(server: ThreadServer, plain: bool) -> None:
    # The emulators read `plain_stream == 'True'` as the seed's do: a plain session only
    # completes when the template renders the bool as Python does (`render: python`).
    with server.client() as api:
        answer = api.post(
            "/templates/edgeecho/sessions",
            json={"params": {"count": 1000, "plain_stream": plain}},
            timeout=300,
        )
        assert answer.status_code == 201, answer.text
        session = answer.json()
        assert session["state"] in ("running", "completed"), session
        services = {c["service"]: c for c in session["containers"]}
        assert set(services) == (
            {"probe", "stream"} if plain else {"probe", "stream", "segmentation"}
        )
        assert all(len(c["container_id"]) == 64 for c in services.values())
        assert session["network"] == f"ses-{session['id'].lower()}"
        if not plain:  # a plain stream may be done before corral reads its published port
            [endpoint] = session["endpoints"]
            assert (endpoint["service"], endpoint["port"], endpoint["address"]) == (
                "stream", 12346, "127.0.0.1",
            )  # fmt: skip
            assert endpoint["host_port"] > 0

        done = _wait(api, session["id"])
        assert done["state"] == "completed", done
        for c in done["containers"]:
            assert (c["state"], c["exit_code"]) == ("removed", 0), c
            assert c["started_at"]
            assert c["finished_at"]
        # The kept output says what arrived where the data ends up.
        receiver = "stream" if plain else "segmentation"
        log = api.get(f"/sessions/{session['id']}/services/{receiver}/logs").text
        assert summary(log) == {"role": receiver, "data_messages": 1000, "terminate": True}
        probe = api.get(f"/sessions/{session['id']}/services/probe/logs").text
        assert summary(probe)["data_messages"] == 1000
        # Readiness: each container started only after what it depends on.
        started = {c["service"]: c["started_at"] for c in done["containers"]}
        assert started["probe"] < started["stream"]
        if not plain:
            assert started["stream"] < started["segmentation"]
        assert _left_on_engine(session["id"]) == ([], [])
        kinds = [e["kind"] for e in api.get(
            "/events", params={"resource": f"session/{session['id']}"}).json()]  # fmt: skip
        for kind in ("session.pending", "session.starting", "session.running",
                     "session.completed", "session.cleaned"):  # fmt: skip
            assert kind in kinds


def test_a_crashing_container_fails_the_session_and_is_cleaned(server: ThreadServer) -> None:
    with server.client() as api:
        assert api.post("/templates", json={"file": CRASH}).status_code == 201
        session = api.post("/templates/crash/sessions", json={"params": {"code": 3}}).json()
        done = _wait(api, session["id"])
        assert done["state"] == "failed"
        assert "first exited with code 3" in done["reason"]
        codes = {c["service"]: c["exit_code"] for c in done["containers"]}
        assert codes["first"] == 3
        assert codes["second"] != 0  # stopped by corral when the session failed
        assert _left_on_engine(session["id"]) == ([], [])


def test_expiry_and_cancel(server: ThreadServer) -> None:
    with server.client() as api:
        assert api.post("/templates", json={"file": SLEEPER}).status_code == 201
        short = api.post("/templates/sleeper/sessions", json={"ttl": 1}).json()
        # The ttl runs from the request: on a loaded machine it may end before the answer.
        assert short["state"] in ("running", "expired")
        done = _wait(api, short["id"])
        assert done["state"] == "expired"
        assert "ttl" in done["reason"]
        assert _left_on_engine(short["id"]) == ([], [])

        held = api.post("/templates/sleeper/sessions", json={}).json()
        assert held["state"] == "running"
        ended = api.delete(f"/sessions/{held['id']}").json()
        assert ended["state"] == "cancelled"
        assert ended["cleaned_at"]
        assert _left_on_engine(held["id"]) == ([], [])
        again = api.delete(f"/sessions/{held['id']}")  # idempotent
        assert again.status_code == 200
        assert again.json()["state"] == "cancelled"


def _engine(api: httpx.Client) -> dict[str, Any]:
    """The facts of the test's one engine, as corral measured them (its CPUs, memory)."""
    [host] = api.get("/hosts").json()
    facts: dict[str, Any] = host["facts"]
    return facts


def test_no_room_is_429_or_a_queue(server: ThreadServer) -> None:
    """The sleeper reserves every CPU of the engine: a second one waits or is refused."""
    with server.client() as api:
        sleeper = SLEEPER_WITH_CPUS.replace("CPUS", str(_engine(api)["cpus"]))
        assert api.post("/templates", json={"file": sleeper}).status_code == 201
        first = api.post("/templates/sleeper/sessions", json={"params": {"seconds": 2}}).json()
        assert first["state"] == "running"
        refused = api.post("/templates/sleeper/sessions", json={"params": {"seconds": 1}})
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "no_room"
        assert "CPUs free" in error["message"]
        queued = api.post(
            "/templates/sleeper/sessions", json={"params": {"seconds": 1}, "queue": True}
        )
        assert queued.status_code == 202
        assert queued.json()["state"] == "pending"
        assert queued.json()["reason"].startswith("queued")
        later = _wait(api, queued.json()["id"], limit=90)
        assert later["state"] == "completed"
        assert _wait(api, first["id"])["state"] == "completed"
        assert api.get(f"/sessions/{first['id']}").json()["ended_at"] <= later["running_at"]


def test_twenty_concurrent_requests(server: ThreadServer) -> None:
    """Each request gets a session or a clean 429; afterwards the engine holds nothing."""
    with server.client() as api:  # build the images once, outside the rush
        warm = api.post("/templates/edgeecho/sessions", json={"params": {"count": 1}}, timeout=300)
        assert warm.status_code == 201, warm.text
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def ask() -> None:
        with server.client() as api:
            got = api.post(
                "/templates/edgeecho/sessions", json={"params": {"count": 200}}, timeout=120
            )
        with lock:
            answers.append(got)

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {201, 429}, [a.text for a in answers if a.status_code not in (201, 429)]
    made = [a.json()["id"] for a in answers if a.status_code == 201]
    # The template reserves 0.25 CPU and 64 MiB per session: as many as the engine holds
    # (one fewer while the warm-up session may still be held), at most the 20 asked.
    with server.client() as api:
        facts = _engine(api)
    room = min(int(facts["cpus"] / 0.25 + 1e-9), facts["memory_bytes"] // (64 << 20))
    assert min(20, room - 1) <= len(made) <= min(20, room), (codes, facts)
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.json()["error"]["code"] == "no_room"
    with server.client() as api:
        for session in [warm.json()["id"], *made]:
            done = _wait(api, session, limit=120)
            assert done["state"] == "completed", done
            assert _left_on_engine(session) == ([], [])


def test_bad_requests_name_the_problem(server: ThreadServer) -> None:
    with server.client() as api:
        wrong_type = api.post("/templates/edgeecho/sessions", json={"params": {"count": "many"}})
        assert wrong_type.status_code == 422
        assert "count" in wrong_type.json()["error"]["message"]
        assert wrong_type.json()["error"]["detail"]["parameters"] == ["count"]
        too_big = api.post("/templates/edgeecho/sessions", json={"params": {"count": 10**9}})
        assert too_big.status_code == 422
        assert "maximum" in too_big.json()["error"]["message"]
        unknown = api.post("/templates/edgeecho/sessions", json={"params": {"colour": "red"}})
        assert unknown.status_code == 422
        assert "colour" in unknown.json()["error"]["message"]
        bool_as_text = api.post(
            "/templates/edgeecho/sessions", json={"params": {"plain_stream": "yes"}}
        )
        assert bool_as_text.status_code == 422
        assert "plain_stream" in bool_as_text.text
        missing = api.post("/templates/nothing/sessions", json={})
        assert missing.status_code == 404
        assert "nothing" in missing.json()["error"]["message"]
        bad_ttl = api.post("/templates/edgeecho/sessions", json={"ttl": -1})
        assert bad_ttl.status_code == 422
        assert "ttl" in bad_ttl.text
        bad_file = api.post(
            "/templates",
            json={"file": "x-corral-template:\n  name: t\nservices:\n  a:\n    image: ${nope}\n"},
        )
        assert bad_file.status_code == 422
        assert "line 5" in bad_file.json()["error"]["message"]
        assert "nope" in bad_file.json()["error"]["message"]
        assert api.get("/sessions/0123456789ABCDEF").status_code == 404
        assert api.get("/sessions/not-an-id").status_code == 422
        assert api.get("/sessions").status_code == 200


def test_leftovers_of_cleaned_sessions_are_swept_and_strangers_kept(
    server: ThreadServer,
) -> None:
    """A container that lands after its session was cleaned (a create in flight during a
    cancel) is removed; one labelled with a session this corral does not know is not."""
    with server.client() as api:
        assert api.post("/templates", json={"file": SLEEPER}).status_code == 201
        session = api.post("/templates/sleeper/sessions", json={}).json()
        assert api.delete(f"/sessions/{session['id']}").json()["cleaned_at"]
    late, stranger = (
        subprocess.run(
            ["docker", "run", "-d", "--label", "corral.owned=true", "--label",
             f"corral.session={owner}", "local/busybox:1", "sleep", "600"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        for owner in (session["id"], "FFFFFFFFFFFFFFFF")
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while late in engine_container_ids(LOCAL_URL, f"corral.session={session['id']}"):
            assert time.monotonic() < deadline, "the late container was never swept"
            time.sleep(0.5)
        assert stranger in engine_container_ids(LOCAL_URL, "corral.session=FFFFFFFFFFFFFFFF")
    finally:
        subprocess.run(["docker", "rm", "-f", late, stranger], capture_output=True, check=False)


def test_sessions_on_postgresql(local_engine: str, tmp_path: Path, pg_url: str) -> None:
    """Templates, sessions, their history and a crash, with PostgreSQL as the store."""
    settings = Settings(
        home=tmp_path,
        bootstrap_token=ADMIN,
        local_docker_url=local_engine,
        database_url=pg_url,
        session_grace_seconds=0.5,
        session_check_seconds=0.2,
    )
    with ThreadServer(settings) as running, running.client() as api:
        assert api.post("/templates", json={"file": CRASH}).status_code == 201
        session = api.post("/templates/crash/sessions", json={"params": {"code": 4}}).json()
        done = _wait(api, session["id"])
        assert done["state"] == "failed"
        assert {c["service"]: c["exit_code"] for c in done["containers"]}["first"] == 4
        assert _left_on_engine(session["id"]) == ([], [])
        listed = api.get("/sessions", params={"template": "crash"}).json()
        assert [s["id"] for s in listed] == [session["id"]]


def _subnet(network: str) -> str:
    return subprocess.run(
        ["docker", "network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", network],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_forty_sessions_at_once_outgrow_dockers_default_pools(
    local_engine: str, tmp_path: Path
) -> None:
    """Docker's default address pools end after about 30 bridge networks; each session
    network has its own block of corral's pool, so 40 sessions run at once."""
    settings = Settings(
        home=tmp_path, bootstrap_token=ADMIN, local_docker_url=local_engine,
        session_grace_seconds=0.2, session_check_seconds=0.2, sessions_per_host=100,
    )  # fmt: skip
    with ThreadServer(settings) as server, server.client() as api:
        nap = SLEEPER_WITH_CPUS.replace("CPUS", "0.001")
        assert api.post("/templates", json={"file": nap}).status_code == 201
        answers: list[httpx.Response] = []

        def ask() -> None:
            with server.client() as mine:
                got = mine.post(
                    "/templates/sleeper/sessions", json={"params": {"seconds": 30}}, timeout=120
                )
            answers.append(got)

        threads = [threading.Thread(target=ask) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [a.status_code for a in answers] == [201] * 40, [a.text for a in answers]
        views = [a.json() for a in answers]
        assert {v["state"] for v in views} == {"running"}
        subnets = {_subnet(v["network"]) for v in views}
        assert len(subnets) == 40, subnets
        assert all(s.startswith("10.213.") for s in subnets), subnets

        def remove(session: str) -> None:
            with server.client() as mine:
                answers.append(mine.delete(f"/sessions/{session}", timeout=60))

        answers.clear()
        threads = [threading.Thread(target=remove, args=(v["id"],)) for v in views]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(a.json()["cleaned_at"] for a in answers), [a.text for a in answers]
        for v in views:
            assert _left_on_engine(v["id"]) == ([], [])


def test_a_used_up_subnet_pool_is_a_429_naming_it(local_engine: str, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, bootstrap_token=ADMIN, local_docker_url=local_engine,
        session_grace_seconds=0.2, session_check_seconds=0.2,
        session_subnets="10.213.254.0/27", session_subnet_prefix=28,
    )  # fmt: skip
    with ThreadServer(settings) as server, server.client() as api:
        assert api.post("/templates", json={"file": SLEEPER}).status_code == 201
        ask = {"params": {"seconds": 30}}
        first = api.post("/templates/sleeper/sessions", json=ask).json()
        second = api.post("/templates/sleeper/sessions", json=ask).json()
        assert (first["state"], second["state"]) == ("running", "running")
        assert {_subnet(first["network"]), _subnet(second["network"])} == {
            "10.213.254.0/28", "10.213.254.16/28",
        }  # fmt: skip
        refused = api.post("/templates/sleeper/sessions", json=ask)
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["code"] == "no_room"
        assert "session_subnets=10.213.254.0/27" in error["message"], error
        assert api.delete(f"/sessions/{first['id']}", timeout=60).json()["cleaned_at"]
        third = api.post("/templates/sleeper/sessions", json=ask).json()
        assert third["state"] == "running"
        assert _subnet(third["network"]) == "10.213.254.0/28"  # the freed block
        for session in (second, third):
            assert api.delete(f"/sessions/{session['id']}", timeout=60).json()["cleaned_at"]
