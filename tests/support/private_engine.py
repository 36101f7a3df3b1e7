"""A private dockerd for fault tests that stop an engine: its own data and exec roots in a
temp dir, its own network namespace, a unix socket; a child of the test, started and
stopped by it (never the machine's dockerd, nor the shared robot engine)."""

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.engines import build_busybox_image


class PrivateEngine:
    """`with PrivateEngine() as engine:` a running dockerd at `engine.url`."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="corral-engine-"))
        self.url = f"unix://{self.root}/docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "PrivateEngine":
        log = (self.root / "dockerd.log").open("ab")
        # In a network namespace of its own (unshare): its bridge, addresses and firewall
        # rules are its own. (On the host's, --bridge=none makes dockerd delete the
        # machine's docker0.) corral reaches it by its unix socket.
        self.proc = subprocess.Popen(
            [
                "unshare", "--net", "--",
                "dockerd",
                "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "docker.pid"),
                "-H", self.url,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private dockerd did not start: {self.root}/dockerd.log")
            time.sleep(0.2)
        build_busybox_image(self.url)
        return self

    def answers(self) -> bool:
        done = subprocess.run(
            ["docker", "-H", self.url, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return done.returncode == 0

    def docker(self, *args: str) -> str:
        done = subprocess.run(
            ["docker", "-H", self.url, *args], capture_output=True, text=True, timeout=60
        )
        return done.stdout

    def stop(self) -> None:
        """SIGTERM to its own PID (its containers stop with it), and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "PrivateEngine":
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
