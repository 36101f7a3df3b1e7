"""The store on both backends: hosts, tokens and events survive a reopen; migrations rerun.

Runs against a SQLite file and against the machine's real PostgreSQL.
"""

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from corral.errors import Conflict, NotFound
from corral.model.events import EventFilter
from corral.model.hosts import HostSpec, Probe
from corral.store.database import Database
from corral.store.events import EventStore
from corral.store.fleet import FleetStore
from corral.store.hosts import HostStore
from corral.store.tokens import TokenStore


async def _open(url: str) -> Database:
    db = Database(url)
    await db.migrate()
    return db


async def test_hosts_round_trip_and_survive_reopen(db_url: str) -> None:
    db = await _open(db_url)
    hosts = HostStore(db)
    robot = HostSpec(name="robot", url="tcp://10.231.0.2:2375", labels={"role": "robot"})
    await hosts.add(robot)
    with pytest.raises(Conflict):
        await hosts.add(robot)
    assert (await hosts.put(robot))[1] == "unchanged"
    moved = HostSpec(name="robot", url="tcp://10.231.0.2:2376", labels={"role": "robot"})
    assert (await hosts.put(moved))[1] == "updated"
    probe = Probe(reachable=False, checked_at=datetime.now(UTC), error="connection refused")
    view, changed = await hosts.record_probe("robot", moved.url, probe)
    assert changed
    assert view.reachable is False
    assert view.last_error == "connection refused"
    with pytest.raises(NotFound):
        await hosts.record_probe("robot", robot.url, probe)
    await db.close()

    db = await _open(db_url)  # a restart: migrations again, data kept
    again = await HostStore(db).get("robot")
    assert again.url == moved.url
    assert again.reachable is False
    assert again.state_since is not None
    assert again.state_since.tzinfo is not None
    await HostStore(db).remove("robot")
    with pytest.raises(NotFound):
        await HostStore(db).remove("robot")
    await db.close()


async def test_tokens_hash_expire_and_revoke(db_url: str) -> None:
    db = await _open(db_url)
    tokens = TokenStore(db)
    view, secret = await tokens.create("ops", "operator")
    assert secret.startswith("crl_")
    assert view.prefix == secret[:10]
    assert (await tokens.authenticate(secret)) is not None
    assert (await tokens.authenticate(secret + "x")) is None
    short, short_secret = await tokens.create(
        "short", "viewer", expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    assert not short.active
    assert await tokens.authenticate(short_secret) is None
    await tokens.revoke(view.id)
    assert await tokens.authenticate(secret) is None
    await db.close()

    db = await _open(db_url)
    listed = {t.name: t for t in await TokenStore(db).list()}
    assert not listed["ops"].active
    assert listed["ops"].revoked_at is not None
    async with db.session() as s:
        stored = (await s.execute(text("select token_hash from tokens"))).scalars().all()
    assert secret not in stored
    assert all(len(h) == 64 for h in stored)
    await db.close()


async def test_events_filter_and_survive_reopen(db_url: str) -> None:
    db = await _open(db_url)
    events = EventStore(db)
    first = await events.append("host.added", "host/robot", "added", {"url": "tcp://x:1"})
    await events.append("host.unreachable", "host/robot", "down", {"error": "refused"})
    await events.append("token.created", "token/1", "tok", {})
    await db.close()

    db = await _open(db_url)
    events = EventStore(db)
    assert [e.kind for e in await events.query(EventFilter(kind="host.*"))] == [
        "host.added",
        "host.unreachable",
    ]
    assert len(await events.query(EventFilter(resource="token/1"))) == 1
    assert len(await events.query(EventFilter(after_id=first.id))) == 2
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert await events.query(EventFilter(since=later)) == []
    newest = await events.query(EventFilter(), limit=1, newest_first=True)
    assert newest[0].kind == "token.created"
    assert newest[0].data == {}
    assert await events.prune(later) == 3
    await db.close()


async def test_a_sqlite_connection_closed_mid_statement_leaves_no_write_lock(
    tmp_path: Path,
) -> None:
    """A task cancelled between an INSERT ... RETURNING and its fetch has its connection
    closed by the pool: the file's write lock goes with it, so the next writer is not
    refused with "database is locked" (the test_farm_race flake)."""
    file = tmp_path / "corral.db"
    db = await _open(f"sqlite+aiosqlite:///{file}")
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        # Never fetched, never committed, its cursor still referenced (by the cancelled
        # task's frames, in the flake): as a cancelled emit leaves it.
        cut_short = await driver.execute(
            "INSERT INTO events (time, kind, resource, message, data) "
            "VALUES ('2026-01-01', 'x', 'y', 'cut short', '{}') RETURNING id"
        )
        raw.invalidate()  # what the pool does with a connection whose task was cancelled
    other = sqlite3.connect(file, timeout=1)
    try:
        other.execute(
            "INSERT INTO events (time, kind, resource, message, data) "
            "VALUES ('2026-01-01', 'x', 'y', 'next writer', '{}')"
        )
        other.commit()
        messages = [row[0] for row in other.execute("SELECT message FROM events")]
    finally:
        other.close()
    assert "next writer" in messages
    assert "cut short" not in messages  # rolled back, not half-kept
    del cut_short
    await db.engine.dispose()


async def test_traffic_tables_move_from_one_json_value_to_a_row_per_robot(db_url: str) -> None:
    """Migration 0016 on a store written by 0015: a map's traffic JSON becomes rows (and
    back on a downgrade), and the fleet store reads them as `Traffic.restore` does."""

    def to(revision: str, down: bool = False) -> Any:
        def run(connection: Any) -> None:
            config = Config()
            location = str(resources.files("corral.store") / "migrations")
            config.set_main_option("script_location", location)
            config.attributes["connection"] = connection
            (command.downgrade if down else command.upgrade)(config, revision)

        return run

    traffic = {
        "robots": {"a": {"at": "m0", "next": "m1"}, "b": {"at": "m2", "next": None}},
        "waits": {"b": {"marker": "m1", "resource": "marker:m1", "holder": "a"}},
    }
    db = Database(db_url)
    async with db.engine.begin() as conn:
        await conn.run_sync(to("0015"))
        await conn.execute(
            text(
                "INSERT INTO fleet_maps (name, doc, traffic, created_at, updated_at) "
                "VALUES ('line', '{}', :traffic, :now, :now)"
            ),
            {"traffic": json.dumps(traffic), "now": datetime.now(UTC)},
        )
    await db.migrate()
    [(row, table)] = await FleetStore(db).maps()
    assert row.name == "line"
    assert table == traffic
    async with db.engine.begin() as conn:
        await conn.run_sync(to("0015", down=True))
        stored = (await conn.execute(text("SELECT traffic FROM fleet_maps"))).scalar_one()
    assert (json.loads(stored) if isinstance(stored, str) else stored) == traffic
    await db.migrate()
    [(_, again)] = await FleetStore(db).maps()
    assert again == traffic
    await db.close()
