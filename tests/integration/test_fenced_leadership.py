"""Fenced leadership with two `corral serve` on one PostgreSQL: the leader's lock backend
terminated from PostgreSQL again and again (once while the leader is paused by SIGSTOP).
A leader is back after each cut, never two at once, and both replicas go on campaigning;
robots on missions (tests/support/robot_peer.py) never get a marker or lane granted to
two of them, nor a step of a mission commanded twice.

Times (how long until a leader is back, the overlap of an old and a new term) are printed,
not asserted; bench/ keeps durations.
"""

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from tests.support.leadership import (
    campaigning,
    cut_leader,
    leaders,
    overlaps,
)
from tests.support.robot_peer import Ledger, PeerRobot
from tests.support.server import ADMIN, ServeProcess, wait_until
from tests.support.shuttles import SHUTTLES, keep_shuttling

from corral.model.fleet_map import grid_map

CUTS = 20


def _env(pg_url: str) -> dict[str, str]:
    return {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_DATABASE_URL": pg_url,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_MDNS_ENABLED": "false",
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
    api = clients[0]
    try:
        wait_until(lambda: len(leaders(api)) == 1, "a replica leads", 30)
        ids = {r["id"] for r in api.get("/replicas").json()}
        assert len(ids) == 2
        wait_until(lambda: campaigning(pg_url) == ids, "both replicas campaign", 30)
        back: list[float] = []
        with LeaderWatch(clients) as watch:
            for cut in range(CUTS + 1):
                paused = cut == CUTS  # the last cut finds the leader paused
                leader, again, took = cut_leader(
                    pg_url, clients, replicas, frozen=0.0 if paused else None
                )
                back.append(round(took, 2))
                assert again["term"] > leader["term"]
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


def test_robots_on_missions_get_no_doubled_grant_across_eleven_cuts(
    tmp_path: Path, pg_url: str
) -> None:
    env = {**_env(pg_url), "CORRAL_ROBOT_HEARTBEAT_SECONDS": "3"}
    replicas = [ServeProcess(tmp_path / name, env).start() for name in ("a", "b")]
    headers = {"Authorization": f"Bearer {ADMIN}"}
    clients = [httpx.Client(base_url=r.url, headers=headers, timeout=30) for r in replicas]
    api = clients[0]
    ledger = Ledger()
    back: list[float] = []

    def cuts() -> None:
        for cut in range(11):
            time.sleep(2)  # robots under way
            _, _, took = cut_leader(pg_url, clients, replicas, frozen=1.0 if cut == 5 else None)
            back.append(round(took, 2))

    async def scenario() -> int:
        stop = asyncio.Event()
        trips = [0]
        async with httpx.AsyncClient(base_url=replicas[1].url, headers=headers, timeout=30) as b:
            assert (await b.post("/fleet/maps", json=grid_map("yard", 5, 5).as_dict())).is_success
            robots = []
            for i, (name, ends) in enumerate(SHUTTLES.items()):
                made = await b.post(
                    "/fleet/robots", json={"name": name, "map": "yard", "marker": ends[0]}
                )
                assert made.status_code == 201, made.text
                url = replicas[i % 2].url  # half on the leader, half held by the follower
                robots.append(PeerRobot(url, name, made.json()["token"], ends[0], ledger))
            running = [asyncio.create_task(r.run(stop)) for r in robots]
            driver = asyncio.create_task(keep_shuttling(b, stop, trips))
            try:
                await asyncio.to_thread(cuts)
                await asyncio.sleep(3)  # trips after the last cut
            finally:
                stop.set()
                await asyncio.gather(driver, *running, return_exceptions=True)
            return trips[0]

    try:
        wait_until(lambda: len(leaders(api)) == 1, "a replica leads", 30)
        trips = asyncio.run(scenario())
        print(f"leader back after each cut (s): {back}")
        print(f"overlaps (s): {overlaps(api)}")
        moves = sum(c.get("kind") == "move" for cs in ledger.commands.values() for c in cs)
        print(f"{trips} missions, {moves} moves, {ledger.redelivered} redeliveries of handled ids")
        assert moves > 20, "the robots moved across the cuts"
        assert ledger.shared == [], "no marker or lane granted to two robots at once"
        assert ledger.stale_moves == [], "every move starts where its robot stands"
        assert ledger.doubled_moves() == [], "no step of a mission commanded twice"
    finally:
        for client in clients:
            client.close()
        for replica in replicas:
            replica.stop()
