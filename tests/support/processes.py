"""Small process helpers shared by the test bed: a free loopback port, a command that must
succeed, waiting for a server to answer, and stopping a child process by its PID (SIGKILL
when it lingers)."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_checked(argv: list[str], timeout: float, failed: str) -> str:
    """Run `argv` to its end; its output, or RuntimeError saying `failed` and its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{failed}: {done.stderr.strip()}")
    return done.stdout


def stop_process(proc: "subprocess.Popen[str]", sig: int = signal.SIGTERM) -> int:
    """Signal the process and wait for it; SIGKILL after 20 s. Its exit status."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait()


def wait_answering(
    url: str, timeout: float = 30.0, proc: "subprocess.Popen[str] | None" = None
) -> None:
    """Until GET `url` answers 200; RuntimeError after `timeout` or if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class ChildProcess:
    """A process the test bed started: its Popen while it runs, and its output file."""

    proc: "subprocess.Popen[str] | None" = None
    log: Path

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal its PID and wait for it; SIGKILL after 20 s. The exit status."""
        if self.proc is None:
            return 0
        code = stop_process(self.proc, sig)
        self.proc = None
        return code
