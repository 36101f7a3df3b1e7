"""The REST API served by a real uvicorn on loopback, with the local Docker engine.

Checks auth and roles, the error shape on bad input, events, metrics and the offline docs.
"""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.server import ADMIN, ThreadServer

from corral.config import Settings

ENGINES = ["127.0.0.0/8", "10.231.0.0/24"]


@pytest.fixture(scope="module")
def server(local_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    home = tmp_path_factory.mktemp("api")
    settings = Settings(
        home=home,
        bootstrap_token=ADMIN,
        local_docker_url=local_engine,
        engine_networks=ENGINES,
        max_body_bytes=64 * 1024,
    )
    with ThreadServer(settings) as running:
        yield running


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "detail"}
    error: dict[str, object] = body["error"]
    return error


def test_local_engine_is_registered_with_its_resources(server: ThreadServer) -> None:
    with server.client() as api:
        local = api.get("/hosts/local").json()
    assert local["reachable"] is True
    assert local["facts"]["cpus"] >= 1
    assert local["facts"]["memory_bytes"] > 0
    assert local["facts"]["engine_version"]


def test_tokens_and_roles(server: ThreadServer) -> None:
    with server.client() as admin:
        viewer = admin.post("/tokens", json={"name": "watcher", "role": "viewer"}).json()
        operator = admin.post("/tokens", json={"name": "ops", "role": "operator"}).json()
        robot = admin.post("/tokens", json={"name": "go1", "role": "robot"}).json()
        listed = admin.get("/tokens").json()
    assert all("token" not in t and "token_hash" not in t for t in listed)
    assert {"watcher", "ops", "go1"} <= {t["name"] for t in listed}

    with server.client(None) as anonymous:
        assert "missing token" in str(_error(anonymous.get("/hosts"), 401)["message"])
    with server.client("crl_not_a_token") as stranger:
        assert "invalid" in str(_error(stranger.get("/hosts"), 401)["message"])
    with server.client(viewer["token"]) as api:
        assert api.get("/hosts").status_code == 200
        denied = _error(api.post("/hosts", json={"name": "x", "url": "tcp://127.0.0.1:9"}), 403)
        assert "viewer" in str(denied["message"])
        _error(api.get("/tokens"), 403)
    with server.client(operator["token"]) as api:
        assert api.put("/hosts/op-made", json={"url": "tcp://127.0.0.1:9"}).status_code == 201
        assert api.delete("/hosts/op-made").status_code == 204
        _error(api.post("/tokens", json={"name": "sneaky", "role": "admin"}), 403)
    with server.client(robot["token"]) as api:
        _error(api.get("/hosts"), 403)

    with server.client() as admin:
        revoked = admin.delete(f"/tokens/{viewer['info']['id']}").json()
        assert revoked["active"] is False
        _error(admin.delete("/tokens/999999"), 404)
    with server.client(viewer["token"]) as api:
        _error(api.get("/hosts"), 401)


def test_bad_input_gets_a_clear_4xx(server: ThreadServer) -> None:
    with server.client() as api:
        assert "ghost" in str(_error(api.get("/hosts/ghost"), 404)["message"])
        _error(api.delete("/hosts/ghost"), 404)
        _error(api.post("/hosts/ghost/refresh"), 404)
        bad_url = _error(api.post("/hosts", json={"name": "r", "url": "tcp://10.231.0.2"}), 422)
        assert "body: url" in str(bad_url["message"])
        assert "needs a port" in str(bad_url["message"])
        outside = _error(api.post("/hosts", json={"name": "r", "url": "tcp://192.0.2.9:2375"}), 403)
        assert "allowed engine networks" in str(outside["message"])
        missing = _error(api.post("/hosts", json={"url": "tcp://127.0.0.1:9"}), 422)
        assert "name" in str(missing["message"])
        _error(
            api.post("/hosts", content=b"{not json", headers={"content-type": "application/json"}),
            422,
        )
        api.post("/hosts", json={"name": "dup", "url": "tcp://127.0.0.1:9"})
        conflict = _error(api.post("/hosts", json={"name": "dup", "url": "tcp://127.0.0.1:9"}), 409)
        assert "already exists" in str(conflict["message"])
        huge = {"name": "big", "url": "tcp://127.0.0.1:9", "labels": {"k": "v" * 100_000}}
        assert "larger than" in str(_error(api.post("/hosts", json=huge), 413)["message"])
        _error(api.get("/events", params={"since": "2026-01-01T00:00:00"}), 422)
        _error(api.patch("/hosts/dup"), 405)
        _error(api.get("/no-such-thing"), 404)
        twice = {"hosts": [{"name": "a", "url": "tcp://127.0.0.1:9"}] * 2}
        _error(api.put("/hosts", json=twice), 422)
        api.delete("/hosts/dup")


def test_apply_is_idempotent_and_prunes(server: ThreadServer) -> None:
    body = {"hosts": [{"name": "p1", "url": "tcp://127.0.0.1:9"}], "prune": False}
    with server.client() as api:
        assert api.put("/hosts", json=body).json()["outcomes"] == {"p1": "created"}
        assert api.put("/hosts", json=body).json()["outcomes"] == {"p1": "unchanged"}
        keep = [{"name": "local", "url": server.settings.local_docker_url}]
        pruned = api.put("/hosts", json={"hosts": keep, "prune": True}).json()["outcomes"]
        assert pruned["p1"] == "removed"
        assert pruned["local"] == "unchanged"
        assert [h["name"] for h in api.get("/hosts").json()] == ["local"]


def test_events_query_and_live_stream(server: ThreadServer) -> None:
    with server.client() as api:
        latest = api.get("/events", params={"limit": 1, "newest_first": True}).json()[0]["id"]
        with api.stream("GET", "/events/stream", params={"kind": "host.*"}) as stream:
            lines = stream.iter_lines()
            assert next(lines) == ": connected"
            api.post("/hosts", json={"name": "streamed", "url": "tcp://127.0.0.1:9"})
            seen = []
            for line in lines:
                if line.startswith("event: "):
                    seen.append(line.removeprefix("event: "))
                if seen == ["host.added", "host.unreachable"]:
                    break
        # Replay from an id: what was missed comes first, in order.
        # (host events only: another test's stack on this server may raise events meanwhile)
        with api.stream(
            "GET",
            "/events/stream",
            params={"kind": "host.*"},
            headers={"Last-Event-ID": str(latest)},
        ) as stream:
            replay = [ln for ln in _take(stream.iter_lines(), 2, "event: ")]
        assert replay == ["event: host.added", "event: host.unreachable"]
        queried = api.get("/events", params={"resource": "host/streamed"}).json()
        assert [e["kind"] for e in queried] == ["host.added", "host.unreachable"]
        api.delete("/hosts/streamed")


def _take(lines: Iterator[str], count: int, prefix: str) -> list[str]:
    found: list[str] = []
    for line in lines:
        if line.startswith(prefix):
            found.append(line)
            if len(found) == count:
                break
    return found


def test_metrics_and_docs_work_offline(server: ThreadServer) -> None:
    with server.client() as api:
        api.get("/hosts")
        text = api.get("/metrics").text
        assert 'corral_http_requests_total{method="GET",route="/hosts",status="200"}' in text
        assert 'corral_host_reachable{host="local"} 1.0' in text
        assert "corral_events_total" in text
        docs = api.get("/docs").text
        assert "/docs-assets/swagger-ui-bundle.js" in docs
        assert "cdn" not in docs.lower()
        assert api.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
        assert api.get("/redoc").status_code == 200
        assert api.get("/openapi.json").json()["info"]["title"] == "corral"
        page = api.get("/ui/")
        assert page.status_code == 200
        assert "<title>corral</title>" in page.text
        for asset in ("/ui/corral.js", "/ui/corral.css"):
            body = api.get(asset).text
            assert "http://" not in body, asset
            assert "https://" not in body, asset
    with server.client(None) as anonymous:
        _error(anonymous.get("/metrics"), 401)
        assert anonymous.get("/healthz").json() == {"status": "ok"}


def test_settings_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "corral.yaml"
    config.write_text("port: 9999\nengine_networks: [127.0.0.0/8]\n")
    monkeypatch.setenv("CORRAL_CONFIG", str(config))
    monkeypatch.setenv("CORRAL_HOST_REFRESH_SECONDS", "5")
    settings = Settings()
    assert settings.port == 9999
    assert settings.engine_networks == ["127.0.0.0/8"]
    assert settings.host_refresh_seconds == 5
    monkeypatch.setenv("CORRAL_ENGINE_NETWORKS", "10.231.0.0/24, 127.0.0.0/8")
    assert Settings().engine_networks == ["10.231.0.0/24", "127.0.0.0/8"]
