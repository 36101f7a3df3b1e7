"""An ssh:// host: corral reaches the local engine through a real sshd on loopback.

The engine keeps listening only on its unix socket; an `ssh -L` tunnel carries the API.
"""

import json
import os
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.server import ADMIN, ServeProcess, ThreadServer, corral_command
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


def test_two_servers_with_the_same_ssh_host(
    local_engine: str, sshd: LoopbackSshd, tmp_path: Path
) -> None:
    """Each corral process has its own tunnels: removing the host from one leaves the
    other's working, and each process's tunnel folder is gone after it stops."""
    env = {"CORRAL_BOOTSTRAP_TOKEN": ADMIN, "CORRAL_LOCAL_DOCKER_URL": "",
           "CORRAL_HOST_TIMEOUT_SECONDS": "5", "PATH": os.environ["PATH"]}  # fmt: skip
    first = ServeProcess(tmp_path / "one", env).start()
    second = ServeProcess(tmp_path / "two", env).start()
    folders = Path(tempfile.gettempdir()) / f"corral-ssh-{os.getuid()}"
    pids = [str(serve.proc.pid) for serve in (first, second) if serve.proc is not None]
    try:
        for serve in (first, second):
            added = serve.cli("host", "add", "robot", sshd.url, "--json", token=ADMIN)
            assert added.returncode == 0, added.stderr
            assert json.loads(added.stdout)["reachable"] is True, added.stdout
        assert set(pids) <= {p.name.split("-")[0] for p in folders.iterdir()}
        mode = stat.S_IMODE(folders.stat().st_mode)
        assert mode == 0o700

        removed = first.cli("host", "rm", "robot", token=ADMIN)
        assert removed.returncode == 0, removed.stderr
        for _ in range(3):  # the other keeps its own tunnel, check after check
            again = second.cli("--json", "host", "refresh", "robot", token=ADMIN)
            assert json.loads(again.stdout)["reachable"] is True, again.stdout
        listed = second.cli("ps", token=ADMIN)
        assert listed.returncode == 0, listed.stderr
    finally:
        first.stop()
        second.stop()
    left = {p.name.split("-")[0] for p in folders.iterdir()} if folders.exists() else set()
    assert len(pids) == 2
    assert not set(pids) & left


def test_ssh_failures_in_plain_words(local_engine: str, sshd: LoopbackSshd, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home", bootstrap_token=ADMIN, local_docker_url="", host_timeout_seconds=5
    )
    with ThreadServer(settings) as server, server.client() as api:
        socket = {"socket": "/nonexistent/docker.sock"}
        wrong = api.post("/hosts", json={"name": "nosock", "url": sshd.url, "ssh": socket})
        assert wrong.status_code == 201, wrong.text
        assert wrong.json()["reachable"] is False
        assert wrong.json()["last_error"] == (
            "there is no Docker socket at /nonexistent/docker.sock on root@127.0.0.1 "
            "(set the host's ssh socket)"
        )
        assert wrong.json()["ssh"] == {"identity": None, "socket": "/nonexistent/docker.sock"}
        # An identity file of the host's own (here the same key the user's config names).
        key = {"identity": str(sshd.folder / "client_key")}
        chosen = api.post("/hosts", json={"name": "keyed", "url": sshd.url, "ssh": key})
        assert chosen.json()["reachable"] is True, chosen.json()["last_error"]
        on_tcp = api.post(
            "/hosts", json={"name": "x", "url": "tcp://127.0.0.1:9", "ssh": {"socket": "/a"}}
        )
        assert on_tcp.status_code == 422
        assert "ssh applies only to ssh://" in on_tcp.json()["error"]["message"]


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home", bootstrap_token=ADMIN, local_docker_url="", host_timeout_seconds=5
    )


def _own_sshd(folder: Path, monkeypatch: pytest.MonkeyPatch, **options: bool) -> LoopbackSshd:
    running = LoopbackSshd(folder, **options).__enter__()
    monkeypatch.setenv("PATH", f"{running.bin_dir}:{Path('/usr/bin')}:/bin:/usr/local/bin")
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # no agent to fall back on
    return running


def test_each_host_its_own_identity_file(
    local_engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No key in the ssh config, no agent, none of the user's default keys authorized: the
    host connects with the identity file it is given, and only with the right one."""
    sshd = _own_sshd(tmp_path / "ssh", monkeypatch, config_key=False)
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    try:
        with ThreadServer(_settings(tmp_path)) as server, server.client() as api:
            bare = api.post("/hosts", json={"name": "bare", "url": sshd.url}).json()
            assert bare["reachable"] is False
            assert bare["last_error"].startswith(
                "ssh to root@127.0.0.1 failed: the ssh server of root@127.0.0.1 refused every "
                "key offered (Permission denied "
                "(publickey)): give the host its key (`corral host add … --ssh-identity KEY`"
            ), bare["last_error"]

            wrong = {"identity": str(other)}
            refused = api.post("/hosts", json={"name": "wrong", "url": sshd.url, "ssh": wrong})
            assert refused.json()["reachable"] is False
            assert refused.json()["last_error"] == (
                "ssh to root@127.0.0.1 failed: the ssh server of root@127.0.0.1 refused the "
                f"host's identity file {other} "
                f"(Permission denied (publickey)): add its public key ({other}.pub) to that "
                "user's authorized_keys there, or give the host the key that is"
            )
            missing = {"identity": str(tmp_path / "no_such_key")}
            lost = api.post("/hosts", json={"name": "lost", "url": sshd.url, "ssh": missing})
            assert lost.json()["last_error"] == (
                f"the host's ssh identity file {tmp_path / 'no_such_key'} cannot be read by user "
                "root, who runs corral serve (missing, or not readable by that user)"
            )

            right = {"identity": str(sshd.folder / "client_key")}
            keyed = api.post("/hosts", json={"name": "keyed", "url": sshd.url, "ssh": right})
            assert keyed.json()["reachable"] is True, keyed.json()["last_error"]
            assert keyed.json()["facts"]["engine_version"]
            # One engine is one host: with keyed gone, the host that had no key is given it,
            # in a hosts file.
            assert api.delete("/hosts/keyed").status_code == 204
            hosts = tmp_path / "hosts.yml"
            hosts.write_text(
                f"hosts:\n  bare:\n    url: {sshd.url}\n"
                f"    ssh: {{identity: {sshd.folder / 'client_key'}}}\n"
            )
            applied = subprocess.run(
                [*corral_command(), "host", "apply", str(hosts)],
                env={**os.environ, "CORRAL_URL": server.url, "CORRAL_TOKEN": ADMIN},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert applied.returncode == 0, applied.stderr
            mended = api.get("/hosts/bare").json()
            assert mended["reachable"] is True, mended["last_error"]
            assert mended["ssh"]["identity"] == str(sshd.folder / "client_key")
    finally:
        sshd.__exit__()


def test_unknown_host_key_in_plain_words(
    local_engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host key not in the serving user's known_hosts: the message names that file and
    that user, and the command it gives makes the host reachable."""
    sshd = _own_sshd(tmp_path / "ssh", monkeypatch, known_hosts=True)
    known = sshd.known_hosts
    assert known is not None
    try:
        with ThreadServer(_settings(tmp_path)) as server, server.client() as api:
            host = api.post("/hosts", json={"name": "fresh", "url": sshd.url}).json()
            assert host["reachable"] is False
            said = host["last_error"]
            assert said == (
                "ssh to root@127.0.0.1 failed: the ssh host key of root@127.0.0.1 "
                f"(port {sshd.port}) is not in {known} (the "
                "known_hosts of user root, who runs corral serve, not of the CLI's user): as "
                "root, check the key's fingerprint and add it, with "
                f"`ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known}` or by running "
                f"`ssh -p {sshd.port} root@127.0.0.1 true` once and accepting it"
            ), said
            command = said.split("`")[1]  # as a user would: the command it gives
            subprocess.run(["sh", "-c", command], check=True, capture_output=True, timeout=30)
            assert known.read_text().strip(), "ssh-keyscan added the key"
            again = api.post("/hosts/fresh/refresh").json()
            assert again["reachable"] is True, again["last_error"]
    finally:
        sshd.__exit__()
