"""An ssh:// host: corral reaches the local engine through a real sshd on loopback.

The engine keeps listening only on its unix socket; an `ssh -L` tunnel carries the API.
"""

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.server import ADMIN, ThreadServer
from tests.support.ssh import LoopbackSshd

from corral.config import Settings


@pytest.fixture
def sshd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackSshd]:
    with LoopbackSshd(tmp_path / "ssh") as running:
        monkeypatch.setenv("PATH", f"{running.bin_dir}:{Path('/usr/bin')}:/bin:/usr/local/bin")
        yield running


def test_ssh_host(local_engine: str, sshd: LoopbackSshd, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        bootstrap_token=ADMIN,
        local_docker_url="",
        engine_networks=["127.0.0.0/8"],
        host_timeout_seconds=5.0,
    )
    with ThreadServer(settings) as server, server.client() as api:
        added = api.post("/hosts", json={"name": "over-ssh", "url": sshd.url})
        assert added.status_code == 201, added.text
        host = added.json()
        assert host["reachable"] is True, host["last_error"]
        assert host["facts"]["cpus"] >= 1
        assert host["facts"]["engine_version"]

        wrong_user = sshd.url.replace("root@", "nobody@")
        denied = api.post("/hosts", json={"name": "ssh-denied", "url": wrong_user}).json()
        assert denied["reachable"] is False
        assert "Permission denied" in denied["last_error"]
        # Removing the host stops its tunnel: no ssh process is left behind.
        assert api.delete("/hosts/over-ssh").status_code == 204
        deadline = time.monotonic() + 5
        while _tunnels(sshd.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _tunnels(sshd.port) == []


def _tunnels(port: int) -> list[str]:
    found = subprocess.run(
        ["pgrep", "-af", f"ssh -N .* -p {port} "], capture_output=True, text=True
    )
    return found.stdout.splitlines()
