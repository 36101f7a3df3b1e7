"""PostgreSQL restarted while `corral serve` works on it, under a steady stream of writes:
corral recovers by itself (no restart of corral), every write it confirmed is stored once,
none twice, and nothing is left broken. A private cluster (tests/support/postgres.py), so
the machine's shared PostgreSQL is never touched."""

import threading
import time
from pathlib import Path

import httpx
from tests.support.postgres import PrivatePostgres
from tests.support.server import ADMIN, ServeProcess, wait_until


def test_corral_rides_out_a_postgres_restart_under_load(tmp_path: Path) -> None:
    with PrivatePostgres() as pg:
        env = {
            "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
            "CORRAL_LOCAL_DOCKER_URL": "",
            "CORRAL_MDNS_ENABLED": "false",
            "CORRAL_DATABASE_URL": pg.url,
        }
        serve = ServeProcess(tmp_path, env).start()
        admin = httpx.Client(
            base_url=serve.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60
        )
        confirmed: dict[int, int] = {}  # sequence number -> command id, answered 201
        refused: list[int] = []  # answered 503 or not at all
        unexpected: list[str] = []  # any other answer
        stop = threading.Event()

        def load() -> None:
            seq = 0
            while not stop.is_set():
                seq += 1
                body = {"kind": "custom", "payload": {"seq": seq}}
                try:
                    answer = admin.post("/fleet/robots/r1/commands", json=body)
                except httpx.TransportError:
                    refused.append(seq)
                    continue
                if answer.status_code == 201:
                    confirmed[seq] = answer.json()["id"]
                else:
                    # "retry": the database is away, or corral's leadership with it while
                    # it takes the lead again (never a 500, never a 4xx for this)
                    code = answer.json()["error"]["code"] if answer.status_code == 503 else ""
                    if code not in ("unavailable", "not_leader"):
                        unexpected.append(f"{answer.status_code} {answer.text}")
                    refused.append(seq)
                    time.sleep(0.05)

        try:
            robot = admin.post("/fleet/robots", json={"name": "r1"})
            assert robot.status_code == 201, robot.text
            writer = threading.Thread(target=load)
            writer.start()
            try:
                wait_until(lambda: len(confirmed) >= 20, "writes before the restart")
                pg.restart()
                after = len(confirmed) + len(refused)
                wait_until(
                    lambda: sum(1 for s in confirmed if s > after) >= 20,
                    "writes confirmed again after the restart, corral untouched",
                    limit=120,
                )
            finally:
                stop.set()
                writer.join(60)
            assert unexpected == []
            assert serve.proc is not None
            assert serve.proc.poll() is None, "corral kept running"
            assert admin.get("/healthz").status_code == 200

            # What the robot will get: every confirmed command, once.
            mine = {"Authorization": f"Bearer {robot.json()['token']}"}
            stored = httpx.get(f"{serve.url}/fleet/robots/r1/commands", headers=mine, timeout=60)
            assert stored.status_code == 200, stored.text
            seqs = [c["payload"]["seq"] for c in stored.json()]
            ids = [c["id"] for c in stored.json()]
            assert len(seqs) == len(set(seqs)), "no command stored twice"
            assert len(ids) == len(set(ids))
            assert set(confirmed) <= set(seqs), "every confirmed command is stored"
            for seq, command_id in confirmed.items():
                assert ids[seqs.index(seq)] == command_id
            # a write refused during the outage may or may not have been stored, never twice
            assert set(seqs) - set(confirmed) <= set(refused)
        finally:
            admin.close()
            serve.stop()
