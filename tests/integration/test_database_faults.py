"""The database falters while `corral serve` works on it, under a steady stream of writes
(commands to a robot): PostgreSQL restarted (a private cluster, tests/support/postgres.py;
the machine's shared one is never touched), and SQLite's file held locked by another
process for a while. corral recovers by itself (no restart of corral), every write it
confirmed is stored once, none twice, and what it refused said "retry" (503)."""

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from tests.support.postgres import PrivatePostgres
from tests.support.server import ADMIN, ServeProcess, wait_until

ENV = {
    "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
    "CORRAL_LOCAL_DOCKER_URL": "",
    "CORRAL_MDNS_ENABLED": "false",
}


class Writes:
    """Commands to robot r1, one after the other, from a thread, each answer filed."""

    def __init__(self, serve: ServeProcess) -> None:
        self.serve = serve
        self.admin = httpx.Client(
            base_url=serve.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60
        )
        robot = self.admin.post("/fleet/robots", json={"name": "r1"})
        assert robot.status_code == 201, robot.text
        self.robot_token = robot.json()["token"]
        self.confirmed: dict[int, int] = {}  # sequence number -> command id, answered 201
        self.refused: list[int] = []  # answered 503 or not at all
        self.unexpected: list[str] = []  # any other answer
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.sent += 1
            seq = self.sent
            body = {"kind": "custom", "payload": {"seq": seq}}
            try:
                answer = self.admin.post("/fleet/robots/r1/commands", json=body)
            except httpx.TransportError:
                self.refused.append(seq)
                continue
            if answer.status_code == 201:
                self.confirmed[seq] = answer.json()["id"]
                continue
            # "retry": the database is away, or corral's leadership with it while it takes
            # the lead again (never a 500, never a 4xx for this)
            code = answer.json()["error"]["code"] if answer.status_code == 503 else ""
            if code not in ("unavailable", "not_leader"):
                self.unexpected.append(f"{answer.status_code} {answer.text}")
            self.refused.append(seq)
            time.sleep(0.05)

    def __enter__(self) -> "Writes":
        self.thread.start()
        wait_until(lambda: len(self.confirmed) >= 20, "writes before the fault")
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        self.thread.join(60)

    def recovered(self) -> None:
        """Until 20 writes after this moment are confirmed, corral left alone."""
        after = self.sent
        wait_until(
            lambda: sum(1 for s in self.confirmed if s > after) >= 20,
            "writes confirmed again after the fault, corral untouched",
            limit=120,
        )

    def check(self) -> None:
        """Every confirmed command stored once, as the robot will get them; none twice."""
        assert self.unexpected == []
        assert self.serve.proc is not None
        assert self.serve.proc.poll() is None, "corral kept running"
        assert self.admin.get("/healthz").status_code == 200
        self.admin.close()
        stored = httpx.get(
            f"{self.serve.url}/fleet/robots/r1/commands",
            headers={"Authorization": f"Bearer {self.robot_token}"},
            timeout=60,
        )
        assert stored.status_code == 200, stored.text
        seqs = [c["payload"]["seq"] for c in stored.json()]
        ids = [c["id"] for c in stored.json()]
        assert len(seqs) == len(set(seqs)), "no command stored twice"
        assert len(ids) == len(set(ids))
        assert set(self.confirmed) <= set(seqs), "every confirmed command is stored"
        for seq, command_id in self.confirmed.items():
            assert ids[seqs.index(seq)] == command_id
        # a write refused during the fault may or may not have been stored, never twice
        assert set(seqs) - set(self.confirmed) <= set(self.refused)


def test_corral_rides_out_a_postgres_restart_under_load(tmp_path: Path) -> None:
    with PrivatePostgres() as pg:
        serve = ServeProcess(tmp_path, {**ENV, "CORRAL_DATABASE_URL": pg.url}).start()
        try:
            with Writes(serve) as writes:
                pg.restart()
                writes.recovered()
            writes.check()
        finally:
            serve.stop()


def test_corral_waits_out_a_locked_sqlite_file_under_load(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path, ENV).start()
    try:
        with Writes(serve) as writes:
            # another process holds the file's write lock for 3 s (corral waits up to 30)
            other = sqlite3.connect(tmp_path / ".corral" / "corral.db", isolation_level=None)
            other.execute("BEGIN EXCLUSIVE")
            before = len(writes.confirmed)
            time.sleep(3)
            during = len(writes.confirmed)
            other.execute("COMMIT")
            other.close()
            writes.recovered()
        assert during - before <= 1, "no write was confirmed while the file was locked"
        assert writes.refused == [], "the writes waited for the lock instead of failing"
        writes.check()
    finally:
        serve.stop()
