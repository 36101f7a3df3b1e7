"""A method a path does not take is 405 with an `Allow` header naming every method the
path does take (not only the first route's), against a real corral."""

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


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/tokens", {"GET", "HEAD", "POST"}),
        ("PATCH", "/fleet/robots", {"GET", "HEAD", "POST"}),
        ("PUT", "/fleet/robots/r1", {"DELETE", "GET", "HEAD"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
    ],
)
def test_405_names_every_allowed_method(
    server: ThreadServer, method: str, path: str, allowed: set[str]
) -> None:
    with server.client() as api:
        answer = api.request(method, path)
        assert answer.status_code == 405
        assert set(answer.headers["allow"].split(", ")) == allowed
        assert answer.json()["error"]["code"] == "method_not_allowed"
