"""An ssh:// engine reached through one `ssh -L` tunnel per host to the remote Docker socket.

Used by the Docker Engine driver: the system ssh client (keys and ~/.ssh/config as the
user set them) forwards a local unix socket; corral owns that ssh process and stops it.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from corral.errors import Unreachable
from corral.model.hosts import EngineAddress

REMOTE_SOCKET = "/var/run/docker.sock"


def _socket_dir() -> Path:
    folder = Path(tempfile.gettempdir()) / f"corral-ssh-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


class SshTunnel:
    def __init__(self, name: str, address: EngineAddress, timeout: float) -> None:
        self.address = address
        self.timeout = timeout
        digest = hashlib.sha256(f"{name}|{address}".encode()).hexdigest()[:12]
        self.local = _socket_dir() / f"{digest}.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def open(self) -> str:
        """Start the tunnel if it is not running; return the local engine URL."""
        if self.proc is not None and self.proc.poll() is None and self.local.exists():
            return f"unix://{self.local}"
        self.close()
        ssh = shutil.which("ssh")
        if ssh is None:
            raise Unreachable("ssh:// hosts need the `ssh` client on the corral server")
        target = (
            f"{self.address.user}@{self.address.host}" if self.address.user else self.address.host
        )
        seconds = max(1, round(self.timeout))
        options = [
            "BatchMode=yes",
            "ExitOnForwardFailure=yes",
            f"ConnectTimeout={seconds}",
            "ServerAliveInterval=5",
            "ServerAliveCountMax=2",
            "StreamLocalBindUnlink=yes",
        ]
        args = [ssh, "-N", "-T", *[a for o in options for a in ("-o", o)]]
        args += ["-L", f"{self.local}:{REMOTE_SOCKET}", "-p", str(self.address.port), "--", target]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + self.timeout + 1
        while time.monotonic() < deadline:
            if self.local.exists():
                return f"unix://{self.local}"
            if self.proc.poll() is not None:
                reason = self._reason()
                self.close()
                raise Unreachable(f"ssh to {target} failed: {reason}")
            time.sleep(0.05)
        self.close()
        raise Unreachable(f"ssh to {target}: no tunnel within {self.timeout:g} s")

    def _reason(self) -> str:
        if self.proc is None or self.proc.stderr is None:
            return "ssh is not running"
        lines = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"ssh exited with status {self.proc.returncode}"

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            self.proc = None
        self.local.unlink(missing_ok=True)
