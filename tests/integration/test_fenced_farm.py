"""The print farm on two `corral serve` replicas sharing one PostgreSQL, while the leader's
lock backend is terminated from PostgreSQL ten times during a steady stream of ready
messages, and once more while the leader is paused by SIGSTOP.

The arm behaves as DHR's (tests/support/dhr_arm.py: ignores and counts jobs that come while
it is busy). What a user checks: no job while the arm was busy, every printer one take then
one replace, and no task done in the store that the arm did not carry out. A job in flight at
a cut whose busy and available the arm said while no replica listened cannot be decided by
the farm's in-flight rule: it is failed as unconfirmed (never guessed done), and counted.
Durations (how long until a leader is back, the overlap of an old and a new term) are
printed, not asserted.
"""

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.brokers import AMQP_URL
from tests.support.dhr_arm import DhrArm
from tests.support.farm import Names, finish, seed_layout
from tests.support.leader_cuts import cut_the_leader
from tests.support.leadership import leaders, overlaps
from tests.support.private_brokers import PrivateMosquitto
from tests.support.server import ADMIN, ServeProcess, wait_until

PRINTERS = 80
CUTS = 11  # the sixth finds the leader paused


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    broker = PrivateMosquitto(tmp_path).start()
    try:
        yield broker
    finally:
        broker.stop()


def _stream(names: Names, stop: threading.Event) -> None:
    """A printer finishes every 0.2 s (5 ready messages a second)."""
    for printer in range(1, PRINTERS + 1):
        if stop.is_set():
            return
        finish([str(printer)], url=AMQP_URL, queue=names.ready)
        time.sleep(0.2)


def _settled(api: httpx.Client) -> bool:
    tasks = api.get("/tasks", params={"limit": 5000}).json()
    ended = [t for t in tasks if t["state"] in ("done", "failed", "cancelled")]
    return len(tasks) == 2 * PRINTERS and len(ended) == len(tasks)


def test_the_farm_does_each_job_once_across_eleven_cuts_of_its_leader(
    tmp_path: Path, pg_url: str, mosquitto: PrivateMosquitto
) -> None:
    names = Names.fresh()
    env = {
        **names.env(),
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_DATABASE_URL": pg_url,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_MDNS_ENABLED": "false",
        "CORRAL_REPLICA_POLL_SECONDS": "0.5",
        "CORRAL_FARM_JOB_TIMEOUT_SECONDS": "5",
        "CORRAL_BROKERS": f'{{"amqp": "{AMQP_URL}", "mqtt": "{mosquitto.url}"}}',
    }
    replicas = [ServeProcess(tmp_path / name, env).start() for name in ("a", "b")]
    headers = {"Authorization": f"Bearer {ADMIN}"}
    clients = [httpx.Client(base_url=r.url, headers=headers, timeout=30) for r in replicas]
    api = clients[0]
    arm = DhrArm(mosquitto.port, 0.1, names.job, names.status).start()
    stop = threading.Event()
    try:
        wait_until(lambda: len(leaders(api)) == 1, "a replica leads", 30)
        wait_until(lambda: all(b["connected"] for b in api.get("/brokers").json()), "brokers")
        wait_until(arm.subscribed, "the arm connected")
        inside = seed_layout(api, range(1, PRINTERS + 1), PRINTERS)
        stream = threading.Thread(target=_stream, args=(names, stop), daemon=True)
        stream.start()
        back: list[float] = []
        for cut in range(CUTS):
            time.sleep(1.5)  # work under way
            back.append(cut_the_leader(pg_url, clients, replicas, paused=cut == 5))
        print(f"leader back after each cut (s): {back}")
        stream.join(60)
        wait_until(lambda: _settled(api), "every task ended", 240)
        time.sleep(1)  # a late job would show in the arm's record
        print(f"overlaps (s): {overlaps(api)}")
        tasks = api.get("/tasks", params={"limit": 5000}).json()
        _check(arm, inside, tasks)
    finally:
        stop.set()
        arm.stop()
        for client in clients:
            client.close()
        for replica in replicas:
            replica.stop()


def _check(arm: DhrArm, inside: dict[int, int], tasks: list[dict[str, Any]]) -> None:
    """Never a job while busy; per printer, the arm did one take then one replace (or, for
    a job the in-flight rule could not decide, what came before it); the store says done
    only for jobs the arm did. A job claimed but not sent (the lead ended between the two)
    or whose busy and available were both said while no replica listened is failed as
    unconfirmed for the operator, with its printer's replace cancelled (docs/farm.md)."""
    assert arm.record.while_busy == [], "the arm got a job while busy"
    assert arm.record.malformed == []
    per: dict[int, list[str]] = {}
    for job in arm.record.done:
        per.setdefault(job["printer_id"], []).append(
            "take" if job["take_from_printer"] else "replace"
        )
    wrong = {p: kinds for p, kinds in per.items() if kinds not in (["take"], ["take", "replace"])}
    assert wrong == {}, "every printer: one take, then one replace"
    done_in_store = {
        (int(t["params"]["printer_id"]), t["kind"]) for t in tasks if t["state"] == "done"
    }
    done_by_arm = {(p, kind) for p, kinds in per.items() for kind in kinds}
    assert done_in_store <= done_by_arm, "a task is done only when the arm did its job"
    undecided = [t for t in tasks if t["state"] == "failed"]
    assert all("unconfirmed" in t["reason"] for t in undecided), undecided
    undecided_jobs = {(int(t["params"]["printer_id"]), t["kind"]) for t in undecided}
    assert done_by_arm - done_in_store <= undecided_jobs, "every job the arm did is accounted"
    for task in tasks:
        if task["state"] == "cancelled":
            assert (int(task["params"]["printer_id"]), "take") in undecided_jobs, task
    incomplete = sorted(p for p in inside if per.get(p, []) != ["take", "replace"])
    assert {(p, "take") for p in incomplete if p not in per} <= undecided_jobs
    assert {(p, "replace") for p in incomplete if p in per} <= {
        (int(t["params"]["printer_id"]), t["kind"])
        for t in tasks
        if t["state"] in ("failed", "cancelled")
    }
    print(f"{len(undecided)} job(s) unconfirmed (failed for the operator), printers {incomplete}")
