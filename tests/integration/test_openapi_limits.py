"""The API description says what the server enforces, for the limits schemathesis found
undocumented: a command's kind (an enum) and a token's name (a pattern). Each documented
value is accepted and a value outside it refused, against a real corral."""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.server import ADMIN, ThreadServer

from corral.config import Settings


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    settings = Settings(home=tmp_path, bootstrap_token=ADMIN, local_docker_url="")
    with ThreadServer(settings) as running:
        yield running


def _schema(api: Any, name: str) -> dict[str, Any]:
    found: dict[str, Any] = api.get("/openapi.json").json()["components"]["schemas"][name]
    return found


def test_a_commands_kind_is_the_documented_enum(server: ThreadServer) -> None:
    with server.client() as api:
        assert api.post("/fleet/robots", json={"name": "r1"}).status_code == 201
        kinds = _schema(api, "CommandRequest")["properties"]["kind"]["enum"]
        assert kinds == ["stop", "resume", "estop", "custom"]
        for kind in kinds:
            answer = api.post("/fleet/robots/r1/commands", json={"kind": kind})
            assert answer.status_code == 201, answer.text
            assert api.post("/fleet/broadcast", json={"kind": kind}).status_code == 200
        assert api.post("/fleet/robots/r1/commands", json={"kind": "launch"}).status_code == 422


def test_a_tokens_name_is_the_documented_pattern(server: ThreadServer) -> None:
    with server.client() as api:
        pattern = _schema(api, "TokenRequest")["properties"]["name"]["pattern"]
        for name, fits in (("ci-bot", True), ("a.b_c-9", True), ("Ci", False), ("-x", False)):
            assert bool(re.search(pattern, name)) is fits
            answer = api.post("/tokens", json={"name": name, "role": "viewer"})
            assert answer.status_code == (201 if fits else 422), answer.text
