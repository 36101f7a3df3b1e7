"""One cut of a `corral serve` leader for the fence tests: its lock backend terminated from
PostgreSQL (the leader first frozen by SIGSTOP when asked), until another replica leads.

Shared by the fence tests that cut the leader again and again while work goes on.
"""

import os
import signal
import time

import httpx
from tests.support.leadership import cut_lock, wait_for_new_leader
from tests.support.server import ServeProcess


def cut_the_leader(
    pg_url: str, clients: list[httpx.Client], replicas: list[ServeProcess], paused: bool
) -> float:
    """Cut the current leader's lock backend and wait until another replica leads; with
    `paused`, the leader is SIGSTOPped before the cut and resumed 1 s after the new leader
    came (which acts meanwhile). Seconds from the cut to the new leader."""
    leader = wait_for_new_leader(clients[0], 0)
    process = next(r for r in replicas if r.url == leader["url"]).proc
    assert process is not None
    if paused:
        os.kill(process.pid, signal.SIGSTOP)
    try:
        assert cut_lock(pg_url, leader["id"]) == 1, "the leader's lock backend"
        began = time.monotonic()
        other = next(c for c in clients if c.base_url != leader["url"])
        wait_for_new_leader(other, leader["term"])
        return round(time.monotonic() - began, 2)
    finally:
        if paused:
            time.sleep(1)  # the new leader acts while the old one is frozen
            os.kill(process.pid, signal.SIGCONT)
