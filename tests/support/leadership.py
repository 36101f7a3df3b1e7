"""Cutting a corral leader from PostgreSQL as a network fault or a DBA would: its lock
connection's backend terminated with pg_terminate_backend, found by the application name
corral gives that connection and by the test's own database (no other test's backends).

Also reads who leads from GET /replicas and the replica events' times, for the fence tests
and bench/failover.py.
"""

import os
import re
import signal
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy.engine import make_url
from tests.support.processes import run_checked
from tests.support.server import ServeProcess

PSQL = ["psql", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-w", "-d", "postgres"]


def database_of(pg_url: str) -> str:
    name = make_url(pg_url).database or ""
    assert re.fullmatch(r"\w+", name), pg_url  # it goes into SQL text below
    return name


def psql(sql: str) -> str:
    return run_checked(
        [*PSQL, "-v", "ON_ERROR_STOP=1", "-Atqc", sql], 30, f"psql failed ({sql})"
    ).strip()


def cut_lock(pg_url: str, replica: str) -> int:
    """Terminate the backend of `replica`'s lock connection; how many were terminated."""
    assert re.fullmatch(r"[0-9a-f]+", replica), replica
    found = psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "  # noqa: S608
        f"WHERE datname = '{database_of(pg_url)}' AND application_name = 'corral-lock-{replica}'"
    )
    return int(found or 0)


def campaigning(pg_url: str) -> set[str]:
    """The replicas that have a lock connection open (the leader's holds the lock, the
    others' try for it)."""
    found = psql(
        "SELECT application_name FROM pg_stat_activity "  # noqa: S608
        f"WHERE datname = '{database_of(pg_url)}' AND application_name LIKE 'corral-lock-%'"
    )
    return {line.removeprefix("corral-lock-") for line in found.splitlines() if line}


def leaders(api: httpx.Client) -> list[dict[str, Any]]:
    answer = api.get("/replicas")
    answer.raise_for_status()
    return [r for r in answer.json() if r["leader"]]


def wait_for_new_leader(api: httpx.Client, after_term: int, limit: float = 60) -> dict[str, Any]:
    """The leader of a term later than `after_term`, once /replicas shows one."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            found = leaders(api)
        except httpx.HTTPError:
            found = []
        if len(found) == 1 and found[0]["term"] > after_term:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no leader with a term after {after_term} within {limit} s")


def cut_leader(
    pg_url: str,
    clients: Sequence[httpx.Client],
    replicas: Sequence[ServeProcess],
    frozen: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Cut the leader's lock connection, `clients` being one per replica of `replicas`;
    with `frozen`, the leader is SIGSTOPped first and resumed `frozen` seconds after another
    replica leads. (the leader cut, the next leader, seconds until /replicas showed it)"""
    leader = wait_for_new_leader(clients[0], 0)
    process = {r.url: r for r in replicas}[leader["url"]].proc
    assert process is not None
    if frozen is not None:
        os.kill(process.pid, signal.SIGSTOP)
    try:
        assert cut_lock(pg_url, leader["id"]) == 1, "the leader's lock backend"
        began = time.monotonic()
        other = next(c for c in clients if c.base_url != leader["url"])
        again = wait_for_new_leader(other, leader["term"])
        return leader, again, time.monotonic() - began
    finally:
        if frozen is not None:
            time.sleep(frozen)  # the new leader acts while the old one is frozen
            os.kill(process.pid, signal.SIGCONT)


def overlaps(api: httpx.Client) -> list[float]:
    """For each handover, seconds from the new term's start to when the last term's holder
    stopped acting (negative: it had stopped before)."""
    events = api.get("/events", params={"kind": "replica.*", "limit": 1000}).json()
    taken = {
        e["data"]["term"]: datetime.fromisoformat(e["data"]["taken_at"])
        for e in events
        if e["kind"] == "replica.leading"
    }
    stopped = {
        e["data"]["term"]: datetime.fromisoformat(e["data"]["stopped_at"])
        for e in events
        if e["kind"] == "replica.stepped_down"
    }
    return [
        round((stopped[term] - taken[term + 1]).total_seconds(), 3)
        for term in sorted(stopped)
        if term + 1 in taken
    ]
