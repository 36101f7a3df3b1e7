"""A private sshd on loopback for ssh:// host tests, and an `ssh` that knows its key.

corral's driver runs the system `ssh` client; the wrapper put first on PATH only adds
`-F` with this sshd's key and port settings, like a user's ~/.ssh/config would.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.server import free_port


class LoopbackSshd:
    """`config_key`: the wrapper's config names the authorized key (as a user's
    ~/.ssh/config would); `known_hosts`: host keys are checked against an empty
    `known_hosts` file in `folder` (as for a host never connected to) instead of not at all."""

    def __init__(self, folder: Path, config_key: bool = True, known_hosts: bool = False) -> None:
        self.folder = folder
        self.config_key = config_key
        self.known_hosts = folder / "known_hosts" if known_hosts else None
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.bin_dir = folder / "bin"

    def __enter__(self) -> "LoopbackSshd":
        f = self.folder
        f.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        for key in ("host_key", "client_key"):
            if not (f / key).exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(f / key)],
                    check=True,
                    timeout=30,
                )
        (f / "authorized_keys").write_text((f / "client_key.pub").read_text())
        (f / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1:{self.port}\n"
            f"HostKey {f / 'host_key'}\n"
            f"PidFile {f / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {f / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        )
        key = f"  IdentityFile {f / 'client_key'}\n  IdentitiesOnly yes\n"
        checks = "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
        if self.known_hosts is not None:
            self.known_hosts.write_text("")
            checks = f"  UserKnownHostsFile {self.known_hosts}\n"
        (f / "ssh_config").write_text(
            "Host 127.0.0.1\n"
            + (key if self.config_key else "")
            + checks
            + "  LogLevel ERROR\n  BatchMode yes\n"
        )
        self.bin_dir.mkdir(exist_ok=True)
        wrapper = self.bin_dir / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {f / "ssh_config"} "$@"\n')
        wrapper.chmod(0o755)
        with (f / "sshd.log").open("wb") as log:
            self.proc = subprocess.Popen(
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(f / "sshd_config")],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"sshd did not start: {(f / 'sshd.log').read_text()}")

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def url(self) -> str:
        return f"ssh://root@127.0.0.1:{self.port}"
