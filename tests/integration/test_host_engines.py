"""Hosts are engines, not URLs: the local engine under a second name is refused (by URL and
by engine ID), a duplicate that turns up later is kept unreachable, labels of a host change
in place, and a `local` the user removed stays removed across restarts.

Runs against the real local dockerd, reached through its socket and through a symlink to it.
"""

import time
from pathlib import Path
from typing import Any

import httpx
from tests.support.server import ADMIN, ThreadServer

from corral.config import Settings


def _settings(home: Path, local_engine: str) -> Settings:
    return Settings(home=home, bootstrap_token=ADMIN, local_docker_url=local_engine)


def _hosts(api: httpx.Client) -> dict[str, Any]:
    return {h["name"]: h for h in api.get("/hosts").json()}


def test_one_engine_is_one_host(local_engine: str, tmp_path: Path) -> None:
    socket = local_engine.removeprefix("unix://")
    with ThreadServer(_settings(tmp_path, local_engine)) as server, server.client() as api:
        assert set(_hosts(api)) == {"local"}
        # A hosts file naming the local socket again (the Go1 README's old `edge`).
        again = api.put(
            "/hosts",
            json={"hosts": [
                {"name": "edge", "url": local_engine, "labels": {"role": "edge"}},
                {"name": "spare", "url": "unix:///nonexistent/docker.sock"},
            ]},
        )  # fmt: skip
        assert again.status_code == 409, again.text
        message = again.json()["error"]["message"]
        assert "same Docker engine as host local (engine ID" in message
        assert "corral host label local" in message
        assert set(_hosts(api)) == {"local"}  # nothing of the file was applied

        # Another URL, the same engine: told apart by the engine ID.
        link = tmp_path / "docker.sock"
        link.symlink_to(socket)
        other = api.post("/hosts", json={"name": "edge", "url": f"unix://{link}"})
        assert other.status_code == 409, other.text
        assert "engine ID" in other.json()["error"]["message"]

        # Added while its socket did not exist; once it answers it is the local engine again:
        # kept unreachable with the reason, and local keeps working.
        later = tmp_path / "later.sock"
        added = api.post("/hosts", json={"name": "later", "url": f"unix://{later}"})
        assert added.status_code == 201, added.text
        later.symlink_to(socket)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            twin = api.post("/hosts/later/refresh").json()
            if "same Docker engine as host local" in twin["last_error"]:
                break
            time.sleep(0.2)
        assert twin["reachable"] is False, twin
        assert "same Docker engine as host local" in twin["last_error"]
        assert api.post("/hosts/local/refresh").json()["reachable"] is True


def test_labels_change_in_place(local_engine: str, tmp_path: Path) -> None:
    with ThreadServer(_settings(tmp_path, local_engine)) as server, server.client() as api:
        changed = api.patch("/hosts/local/labels", json={"role": "edge", "zone": "a"})
        assert changed.status_code == 200, changed.text
        assert changed.json()["labels"] == {"role": "edge", "zone": "a"}
        assert changed.json()["url"] == local_engine
        dropped = api.patch("/hosts/local/labels", json={"zone": None})
        assert dropped.json()["labels"] == {"role": "edge"}
        bad = api.patch("/hosts/local/labels", json={"bad key!": "x"})
        assert bad.status_code == 422, bad.text
        assert "bad key!" in bad.json()["error"]["message"]
        assert api.patch("/hosts/nope/labels", json={"a": "b"}).status_code == 404
        many = {f"k{i}": "v" for i in range(40)}
        assert api.patch("/hosts/local/labels", json=many).status_code == 200
        more = {f"m{i}": "v" for i in range(40)}
        too_many = api.patch("/hosts/local/labels", json=more)
        assert too_many.status_code == 422, too_many.text
        assert "at most 64" in too_many.json()["error"]["message"]
        assert api.get("/hosts/local").status_code == 200
        events = api.get("/events", params={"resource": "host/local"}).json()
        assert any(e["message"] == "host local labels now role=edge" for e in events)


def test_a_removed_local_stays_removed(local_engine: str, tmp_path: Path) -> None:
    with ThreadServer(_settings(tmp_path, local_engine)) as server, server.client() as api:
        assert "local" in _hosts(api)
        assert api.delete("/hosts/local").status_code == 204
    with ThreadServer(_settings(tmp_path, local_engine)) as server, server.client() as api:
        assert _hosts(api) == {}  # not registered again at start
        back = api.post("/hosts", json={"name": "local", "url": local_engine})
        assert back.status_code == 201, back.text
    with ThreadServer(_settings(tmp_path, local_engine)) as server, server.client() as api:
        assert set(_hosts(api)) == {"local"}


def test_plain_tcp_off_this_machine_needs_insecure(local_engine: str, tmp_path: Path) -> None:
    robot = "tcp://10.231.0.2:2375"  # the test bed's robot engine; not contacted when refused
    with ThreadServer(_settings(tmp_path, local_engine)) as server, server.client() as api:
        refused = api.post("/hosts", json={"name": "robot", "url": robot})
        assert refused.status_code == 422, refused.text
        message = refused.json()["error"]["message"]
        assert "plain tcp:// to 10.231.0.2 is not encrypted" in message
        assert "ssh:// or tcp:// with TLS" in message
        assert "--insecure" in message
        every = api.put("/hosts", json={"hosts": [{"name": "any", "url": "tcp://0.0.0.0:2375"}]})
        assert every.status_code == 422, every.text
        tls = {"ca": "/x/ca.pem", "cert": "/x/c.pem", "key": "/x/k.pem", "verify": False}
        unverified = api.post("/hosts", json={"name": "t", "url": robot, "tls": tls})
        assert "verify: false" in unverified.json()["error"]["message"]
        loopback = api.post("/hosts", json={"name": "loop", "url": "tcp://127.0.0.1:9"})
        assert loopback.status_code == 201, loopback.text
        accepted = api.post("/hosts", json={"name": "robot", "url": robot, "insecure": True})
        assert accepted.status_code == 201, accepted.text
        assert accepted.json()["insecure"] is True
    with ThreadServer(_settings(tmp_path, local_engine)) as server, server.client() as api:
        warnings = api.get("/events", params={"kind": "host.insecure"}).json()
        assert [e["resource"] for e in warnings] == ["host/robot"]
        assert "accepted with insecure" in warnings[0]["message"]
        assert warnings[0]["data"]["level"] == "warning"

    # engine_networks set later applies to the hosts already registered.
    narrow = _settings(tmp_path, local_engine).model_copy(
        update={"engine_networks": ["127.0.0.0/8"]}
    )
    with ThreadServer(narrow) as server, server.client() as api:
        view = api.post("/hosts/robot/refresh").json()
        assert view["reachable"] is False
        assert view["last_error"].startswith(
            "refused: engine URL tcp://10.231.0.2:2375 points outside the allowed engine networks"
        )
        assert api.post("/hosts/local/refresh").json()["reachable"] is True
        warnings = api.get("/events", params={"kind": "host.insecure"}).json()
        assert len(warnings) == 2  # one per start
