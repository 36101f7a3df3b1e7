"""Schemathesis over the live API's /openapi.json: no generated request may get a 5xx.

Runs as the admin, so every endpoint is exercised past authentication.
"""

import re
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
        # No host at all: generated stacks are parsed, checked and stored, but nothing can
        # be placed, so no generated container ever reaches an engine.
        local_docker_url="",
        # Generated URLs may only reach loopback: nothing else is ever contacted.
        engine_networks=["127.0.0.0/8", "localhost"],
        device_networks=["127.0.0.0/8", "localhost"],
        host_timeout_seconds=1.0,
    )
    with ThreadServer(settings) as running:
        yield running


def _schemathesis(server: ThreadServer, cwd: Path, *selection: str) -> str:
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
            "--seed",
            "1",
            "--no-color",
            *selection,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-6000:]
    return report


def _no_failures(report: str) -> None:
    """Schemathesis's own summary line: `Test cases: N generated, N passed[, M failed]`."""
    summary = re.search(r"Test cases:\s*(.+)", report)
    assert summary is not None, report[-3000:]
    assert " passed" in summary.group(1), report[-3000:]
    assert "failed" not in summary.group(1), report[-6000:]
    assert "FAILURES" not in report, report[-6000:]


def test_no_generated_request_gets_a_5xx(server: ThreadServer, tmp_path: Path) -> None:
    # Revoking tokens would revoke the fuzzer's own; that operation runs last, alone.
    everything = _schemathesis(
        server,
        tmp_path,
        "--exclude-path",
        "/events/stream",
        "--exclude-operation-id",
        "revoke_token_tokens__token_id__delete",
    )
    _no_failures(everything)
    revoke = _schemathesis(
        server, tmp_path, "--include-operation-id", "revoke_token_tokens__token_id__delete"
    )
    _no_failures(revoke)
