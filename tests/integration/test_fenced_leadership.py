"""Fenced leadership with two `corral serve` on one PostgreSQL: the leader's lock backend
terminated from PostgreSQL again and again (once while the leader is paused by SIGSTOP).
A leader is back after each cut, never two at once, and both replicas go on campaigning.

Times (how long until a leader is back, the overlap of an old and a new term) are printed,
not asserted; bench/ keeps durations.
"""

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from tests.support.leadership import (
    campaigning,
    cut_lock,
    leaders,
    overlaps,
    wait_for_new_leader,
)
from tests.support.server import ADMIN, ServeProcess, wait_until

CUTS = 20


def _env(pg_url: str) -> dict[str, str]:
    return {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_DATABASE_URL": pg_url,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_MDNS_ENABLED": "false",
        "CORRAL_REPLICA_POLL_SECONDS": "0.5",
    }


class LeaderWatch:
    """Samples /replicas on both replicas until stopped: any sample with two leaders."""

    def __init__(self, clients: list[httpx.Client]) -> None:
        self.clients = clients
        self.doubled: list[list[dict[str, Any]]] = []
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for api in self.clients:
                try:
                    found = leaders(api)
                except httpx.HTTPError:
                    continue  # a paused replica does not answer
                self.samples += 1
                if len(found) > 1:
                    self.doubled.append(found)
            time.sleep(0.05)

    def __enter__(self) -> "LeaderWatch":
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        self.thread.join(10)


def test_twenty_cuts_of_the_leaders_lock_leave_both_replicas_campaigning(
    tmp_path: Path, pg_url: str
) -> None:
    env = _env(pg_url)
    replicas = [ServeProcess(tmp_path / name, env).start() for name in ("a", "b")]
    headers = {"Authorization": f"Bearer {ADMIN}"}
    clients = [httpx.Client(base_url=r.url, headers=headers, timeout=5) for r in replicas]
    by_url = {r.url: r for r in replicas}
    api = clients[0]
    try:
        wait_until(lambda: len(leaders(api)) == 1, "a replica leads", 30)
        ids = {r["id"] for r in api.get("/replicas").json()}
        assert len(ids) == 2
        wait_until(lambda: campaigning(pg_url) == ids, "both replicas campaign", 30)
        back: list[float] = []
        with LeaderWatch(clients) as watch:
            for cut in range(CUTS + 1):
                leader = wait_for_new_leader(api, 0)
                paused = cut == CUTS  # the last cut finds the leader paused
                process = by_url[leader["url"]].proc
                assert process is not None
                if paused:
                    os.kill(process.pid, signal.SIGSTOP)
                try:
                    assert cut_lock(pg_url, leader["id"]) == 1, "the leader's lock backend"
                    began = time.monotonic()
                    other = next(c for c in clients if c.base_url != leader["url"])
                    again = wait_for_new_leader(other, leader["term"])
                    back.append(round(time.monotonic() - began, 2))
                    assert again["term"] > leader["term"]
                finally:
                    if paused:
                        os.kill(process.pid, signal.SIGCONT)
                wait_until(lambda: campaigning(pg_url) == ids, "both replicas campaign again", 30)
            print(f"leader back after each cut (s): {back}")
        assert watch.samples > 0
        assert watch.doubled == [], "/replicas never shows two leaders"
        events = api.get("/events", params={"kind": "replica.*", "limit": 1000}).json()
        terms = [e["data"]["term"] for e in events if e["kind"] == "replica.leading"]
        assert len(terms) == len(set(terms)), "each term is taken once"
        assert len(terms) >= CUTS + 2
        print(f"overlap of the old leader after the new term began (s): {overlaps(api)}")
        for replica in replicas:
            assert "background loop crashed" not in replica.output()
        assert len(leaders(api)) == 1
    finally:
        for client in clients:
            client.close()
        for replica in replicas:
            replica.stop()
