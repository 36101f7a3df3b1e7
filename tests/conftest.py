"""Shared pytest setup: unit/integration/e2e markers by folder, real engines and PostgreSQL.

All fixtures are synchronous; the engines and the database are real (see support/engines.py).
"""

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
# Tests import `tests.support...`; make the repository root importable for that.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
# corral browses mDNS by default; only the device tests want it (they set it themselves),
# so that parallel tests never pick up each other's agents.
os.environ.setdefault("CORRAL_MDNS_ENABLED", "false")

from tests.support.engines import (  # noqa: E402
    LOCAL_URL,
    NETNS_PATH,
    RobotEngine,
    build_busybox_image,
    ensure_local_engine,
    ensure_swarm,
    hold_robot,
    leave_swarm,
    release_robot,
)
from tests.support.processes import run_checked  # noqa: E402

FOLDER_MARKERS = ("unit", "integration", "e2e")
PG_ADMIN = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-w"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS_DIR).parts[0]
        except (ValueError, IndexError):
            continue
        if folder in FOLDER_MARKERS:
            item.add_marker(getattr(pytest.mark, folder))
        # Tests that use (and may stop) the shared robot engine: scripts/test.sh runs them
        # on their own, one at a time, after the others.
        if {"robot_engine", "swarm"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.robot)


@pytest.fixture(scope="session")
def local_engine() -> str:
    """The machine's own dockerd, with local/busybox:1 in it."""
    ensure_local_engine()
    build_busybox_image(LOCAL_URL)
    return LOCAL_URL


@pytest.fixture(scope="session")
def robot_engine() -> Iterator[RobotEngine]:
    """The robot dockerd in netns corral-robot at 10.231.0.2:2375, with local/busybox:1.

    Torn down (dockerd stopped, namespace deleted, images kept) when the session ends,
    unless another pytest session on the machine still uses it. Under pytest-xdist the
    workers share it and the controller (their parent) tears it down at the end.
    """
    worker = "PYTEST_XDIST_WORKER" in os.environ
    owner = os.getppid() if worker else os.getpid()
    hold_robot(owner)
    engine = RobotEngine().setup()
    try:
        build_busybox_image(engine.url)
        yield engine
    finally:
        if not worker and release_robot(owner):
            engine.teardown()


@pytest.fixture(scope="session")
def swarm(local_engine: str, robot_engine: RobotEngine) -> Iterator[RobotEngine]:
    """The two engines joined in one swarm: local is the manager, robot a worker."""
    ensure_swarm(robot_engine)
    try:
        yield robot_engine
    finally:
        leave_swarm(robot_engine)


def pytest_sessionfinish(session: pytest.Session) -> None:
    xdist_controller = not hasattr(session.config, "workerinput") and (
        session.config.getoption("dist", "no") != "no"
    )
    if xdist_controller and NETNS_PATH.exists() and release_robot(os.getpid()):
        RobotEngine().teardown()


def _psql(sql: str) -> None:
    argv = ["psql", *PG_ADMIN, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql]
    run_checked(argv, 60, f"psql failed ({sql})")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for each test, as an SQLAlchemy asyncpg URL.

    Per test, not per session: tests add the same hosts and expect an empty store, like the
    SQLite file in tmp_path they are parametrized against. Creating one takes about 0.1 s.
    """
    name = f"corral_test_{uuid.uuid4().hex[:12]}"
    _psql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL for each engine corral runs on: an SQLite file in tmp_path, then a
    fresh PostgreSQL database (pg_url)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'corral.db'}"
    else:
        yield request.getfixturevalue("pg_url")
