"""The API cannot lock every client out: the last admin token that does not expire cannot
be revoked (409, pointing at `corral reset-admin-token`), against a real corral."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.server import ADMIN, ThreadServer

from corral.config import Settings


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    settings = Settings(home=tmp_path, bootstrap_token=ADMIN, local_docker_url="")
    with ThreadServer(settings) as running:
        yield running


def test_the_last_admin_token_cannot_be_revoked(server: ThreadServer) -> None:
    with server.client() as api:
        [first] = [t["id"] for t in api.get("/tokens").json() if t["role"] == "admin"]
        refused = api.delete(f"/tokens/{first}")
        assert refused.status_code == 409
        assert "corral reset-admin-token" in refused.json()["error"]["message"]
        assert api.get("/whoami").status_code == 200, "the token still works"

        # an admin token that expires does not count: it would lock everyone out later
        brief = api.post(
            "/tokens", json={"name": "brief", "role": "admin", "expires_in_seconds": 3600}
        )
        assert api.delete(f"/tokens/{first}").status_code == 409

        second = api.post("/tokens", json={"name": "second", "role": "admin"}).json()
        assert api.delete(f"/tokens/{first}").status_code == 200
        assert api.get("/whoami").status_code == 401, "the revoked one is refused"
        with server.client(second["token"]) as other:
            assert other.delete(f"/tokens/{second['info']['id']}").status_code == 409
            assert other.delete(f"/tokens/{brief.json()['info']['id']}").status_code == 200
            assert other.get("/whoami").json()["name"] == "second"
