"""Fail-over of fenced leadership: two `corral serve` on one PostgreSQL, the leader's lock
backend terminated from PostgreSQL (`pg_terminate_backend`, as a network fault or a DBA
would), `--cuts` times, every `--every` seconds; with `--paused`, each cut finds the leader
SIGSTOPped (it is resumed a second after the new leader shows).

Printed per cut and as min/median/max: how long until `/replicas` shows a leader of a later
term, and the overlap (the old leader's stop minus the new term's start, from the events
`replica.stepped_down` and `replica.leading`; negative: it stopped before).

Run (about a minute; needs the machine's PostgreSQL at 127.0.0.1:5432, trust auth):
    .venv/bin/python bench/failover.py
    .venv/bin/python bench/failover.py --cuts 20 --poll 1.0 --paused
It makes its own database and drops it at the end. To measure another copy of corral,
point PYTHONPATH at its src/ (the servers inherit it).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.leadership import (  # noqa: E402
    cut_leader,
    leaders,
    overlaps,
    psql,
    wait_for_new_leader,
)
from tests.support.server import ADMIN, ServeProcess  # noqa: E402


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"min {min(values):.2f}  median {statistics.median(values):.2f}  max {max(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuts", type=int, default=10)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between cuts")
    parser.add_argument(
        "--poll", type=float, default=0.5, help="replica_poll_seconds (0.5: the default)"
    )
    parser.add_argument("--paused", action="store_true", help="SIGSTOP the leader first")
    args = parser.parse_args()
    name = f"corral_bench_{secrets.token_hex(6)}"
    psql(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    env = {
        "CORRAL_BOOTSTRAP_TOKEN": ADMIN,
        "CORRAL_DATABASE_URL": url,
        "CORRAL_LOCAL_DOCKER_URL": "",
        "CORRAL_MDNS_ENABLED": "false",
        "CORRAL_REPLICA_POLL_SECONDS": str(args.poll),
        "CORRAL_LOG_LEVEL": "warning",
    }
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with tempfile.TemporaryDirectory() as tmp:
        replicas = [ServeProcess(Path(tmp) / n, env).start() for n in ("a", "b")]
        clients = [httpx.Client(base_url=r.url, headers=headers, timeout=10) for r in replicas]
        back: list[float] = []
        try:
            wait_for_new_leader(clients[0], 0)
            for cut in range(args.cuts):
                time.sleep(args.every)
                _, _, took = cut_leader(url, clients, replicas, 1.0 if args.paused else None)
                back.append(took)
                print(f"cut {cut + 1}: a leader again after {back[-1]:.2f} s", flush=True)
            time.sleep(2)
            found = overlaps(clients[0])
            assert len(leaders(clients[0])) == 1
        finally:
            for client in clients:
                client.close()
            for replica in replicas:
                replica.stop()
            psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"\npoll {args.poll:g} s, {args.cuts} cuts{' of a paused leader' if args.paused else ''}")
    print(f"leader back (s): {spread(back)}")
    print(f"overlap (s):     {spread(found)}")
    print(f"overlaps: {found}")


if __name__ == "__main__":
    main()
