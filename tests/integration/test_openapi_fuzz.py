"""Schemathesis over the live API's /openapi.json: no generated request may get a 5xx.

Runs as the admin, so every endpoint is exercised past authentication.
"""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.server import ADMIN, ThreadServer

from corral.config import Settings


@pytest.fixture
def server(local_engine: str, tmp_path: Path) -> Iterator[ThreadServer]:
    settings = Settings(
        home=tmp_path,
        bootstrap_token=ADMIN,
        local_docker_url=local_engine,
        # Generated URLs may only reach loopback: nothing else is ever contacted.
        engine_networks=["127.0.0.0/8", "localhost"],
        host_timeout_seconds=1.0,
    )
    with ThreadServer(settings) as running:
        yield running


def test_no_generated_request_gets_a_5xx(server: ThreadServer, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--header",
            f"Authorization: Bearer {ADMIN}",
            "--max-examples",
            "40",
            "--exclude-path",
            "/events/stream",
            "--seed",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-6000:]
    assert "not_a_server_error" in report
