"""A private PostgreSQL cluster for fault tests: initdb into a temp dir, on a free loopback
port, started, restarted and stopped by the test (never the machine's shared one on 5432).

The server runs as the `postgres` user (PostgreSQL refuses root), trust auth on 127.0.0.1.
"""

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.support.processes import free_port

RUN_AS = "postgres"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"no {name} under /usr/lib/postgresql/*/bin (apt install postgresql)")
    return found[-1]


class PrivatePostgres:
    """`with PrivatePostgres() as pg:` a running cluster; `pg.url` for corral."""

    def __init__(self) -> None:
        # its own temp dir: pytest's are root-only, and the server runs as `postgres`
        self.root = Path(tempfile.mkdtemp(prefix="corral-pg-"))
        self.dir = self.root / "pgdata"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            ["runuser", "-u", RUN_AS, "--", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(_bin("pg_ctl"), "-D", str(self.dir), "-l", str(self.log), "-o", options, *args)

    def start(self) -> "PrivatePostgres":
        self.dir.mkdir(parents=True)
        self.log.touch()
        shutil.chown(self.dir, RUN_AS, RUN_AS)
        shutil.chown(self.log, RUN_AS, RUN_AS)
        os.chmod(self.root, 0o755)  # noqa: S103 - the postgres user must enter it
        self._run(_bin("initdb"), "-D", str(self.dir), "-U", "postgres", "-A", "trust")
        self._ctl("-w", "start")
        return self

    def restart(self) -> None:
        """Stop fast (every connection cut) and start again, on the same port and data."""
        self._ctl("-w", "-m", "fast", "restart")

    def stop(self) -> None:
        """Stop the server and delete its files."""
        if (self.dir / "postmaster.pid").exists():
            self._ctl("-w", "-m", "fast", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PrivatePostgres":
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()
