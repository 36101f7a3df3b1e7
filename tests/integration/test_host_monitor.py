"""Two real engines: the robot engine in its own network namespace goes away and comes back.

corral must notice within 5 s, record an event each way, and keep the host's resources.
"""

import time
from collections.abc import Iterator

import pytest
from tests.support.engines import ROBOT_URL, RobotEngine
from tests.support.server import ADMIN, ThreadServer

from corral.config import Settings


@pytest.fixture
def server(local_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    settings = Settings(
        home=tmp_path_factory.mktemp("monitor"),
        bootstrap_token=ADMIN,
        local_docker_url=local_engine,
        engine_networks=["127.0.0.0/8", "10.231.0.0/24"],
        host_refresh_seconds=1.0,
        host_timeout_seconds=2.0,
    )
    with ThreadServer(settings) as running:
        yield running


def _wait_for(check: object, timeout: float) -> None:
    """Until `check()`; `timeout` only bounds a hang (how fast is for bench/, not tests)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout} s")


def test_robot_engine_goes_and_comes_back(server: ThreadServer, robot_engine: RobotEngine) -> None:
    with server.client() as api:
        added = api.post(
            "/hosts",
            json={"name": "robot", "url": ROBOT_URL, "labels": {"role": "robot"}, "insecure": True},
        )
        assert added.status_code == 201, added.text
        robot = added.json()
        assert robot["reachable"] is True
        assert robot["facts"]["cpus"] >= 1
        assert robot["facts"]["memory_bytes"] > 0
        hosts = {h["name"]: h for h in api.get("/hosts").json()}
        assert hosts.keys() == {"local", "robot"}
        assert all(h["reachable"] for h in hosts.values())

        def reachable() -> bool:
            return bool(api.get("/hosts/robot").json()["reachable"])

        robot_engine.stop()
        try:
            _wait_for(lambda: not reachable(), timeout=60.0)
            down = api.get("/events", params={"resource": "host/robot", "kind": "host.unreachable"})
            assert len(down.json()) == 1, down.text
            assert "unreachable" in down.json()[0]["message"]
            still = api.get("/hosts/robot").json()
            assert still["facts"]["cpus"] >= 1, "last known resources are kept"
            assert still["last_error"]
        finally:
            robot_engine.start()
        _wait_for(reachable, timeout=60.0)
        kinds = [e["kind"] for e in api.get("/events", params={"resource": "host/robot"}).json()]
        assert kinds == ["host.added", "host.reachable", "host.unreachable", "host.reachable"]
        text = api.get("/metrics").text
        assert 'corral_host_reachable{host="robot"} 1.0' in text
