"""The print farm on two `corral serve` replicas sharing one PostgreSQL, while the leader's
lock backend is terminated from PostgreSQL ten times during a steady stream of ready
messages, and once more while the leader is paused by SIGSTOP.

The arm behaves as DHR's (tests/support/dhr_arm.py: ignores and counts jobs that come while
it is busy). What a user checks: no job while the arm was busy, every printer one take then
one replace, every task done, and no task done in the store that the arm did not carry out.
A job out with the arm at a cut is decided by what the replica that sent it heard after its
lead ended (docs/farm.md, "Across a handover"), never guessed. Durations (how long until a
leader is back, the overlap of an old and a new term) are printed, not asserted.
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
from tests.support.leadership import cut_leader, leaders, overlaps
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
            _, _, took = cut_leader(pg_url, clients, replicas, frozen=1.0 if cut == 5 else None)
            back.append(round(took, 2))
        print(f"leader back after each cut (s): {back}")
        stream.join(60)
        wait_until(lambda: _settled(api), "every task ended", 240)
        time.sleep(1)  # a late job would show in the arm's record
        print(f"overlaps (s): {overlaps(api)}")
        tasks = api.get("/tasks", params={"limit": 5000}).json()
        witnessed = api.get("/events", params={"kind": "farm.job.witnessed"}).json()
        print(f"outcomes heard by a job's sender after its lead ended: {_outcomes(witnessed)}")
        for event in witnessed:
            print(f"  {event['message']}")
        print(f"done on a presumption or a witness: {[t['reason'] for t in tasks if t['reason']]}")
        _check(arm, inside, tasks)
    finally:
        stop.set()
        arm.stop()
        for client in clients:
            client.close()
        for replica in replicas:
            replica.stop()


def _outcomes(events: list[dict[str, Any]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for event in events:
        found[event["data"]["outcome"]] = found.get(event["data"]["outcome"], 0) + 1
    return found


def _check(arm: DhrArm, inside: dict[int, int], tasks: list[dict[str, Any]]) -> None:
    """Never a job while busy; every printer: the arm did one take, then one replace; every
    task done in the store, and each one the arm did (none failed as unconfirmed, none
    cancelled, none recorded done on a word that was not its job's)."""
    assert arm.record.while_busy == [], "the arm got a job while busy"
    assert arm.record.malformed == []
    per: dict[int, list[str]] = {}
    for job in arm.record.done:
        per.setdefault(job["printer_id"], []).append(
            "take" if job["take_from_printer"] else "replace"
        )
    wrong = {p: per.get(p) for p in inside if per.get(p) != ["take", "replace"]}
    assert wrong == {}, "every printer: one take, then one replace"
    assert set(per) == set(inside), "no job for a printer that did not finish"
    not_done = [(t["id"], t["kind"], t["state"], t["reason"]) for t in tasks]
    not_done = [t for t in not_done if t[2] != "done"]
    assert not_done == [], "every task done (none unconfirmed, none cancelled)"
    done_in_store = sorted((int(t["params"]["printer_id"]), t["kind"]) for t in tasks)
    done_by_arm = sorted((p, kind) for p, kinds in per.items() for kind in kinds)
    assert done_in_store == done_by_arm, "a task is done exactly when the arm did its job"
    print(
        f"{len(tasks)} tasks done; the arm did {len(arm.record.done)} jobs "
        f"({sum(k == ['take', 'replace'] for k in per.values())} printers take then replace), "
        f"{len(arm.record.while_busy)} while busy"
    )
