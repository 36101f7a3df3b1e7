"""A device that registers with an address no HTTP client could use (not a valid IDNA host
name) is refused with 422 naming it, and nothing of it is kept; against a real corral."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.server import ADMIN, ThreadServer

from corral.config import Settings


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    settings = Settings(
        home=tmp_path, bootstrap_token=ADMIN, local_docker_url="", mdns_enabled=False
    )
    with ThreadServer(settings) as running:
        yield running


@pytest.mark.parametrize(
    "host",
    [
        "a" * 64 + ".local",  # a label longer than 63
        "dev..local",  # an empty label
        "\u2603.local",  # a snowman: no IDNA 2008 name
        "xn--zz.local",  # a broken A-label
    ],
)
def test_a_host_that_is_not_a_valid_idna_name_is_refused(server: ThreadServer, host: str) -> None:
    with server.client() as api:
        answer = api.post(
            "/file/device/discovery/register", json={"name": "dev1", "host": host, "port": 5000}
        )
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert host[:20] in error["message"]
        assert "IDNA" in error["message"]
        assert api.get("/file/device").json() == []
