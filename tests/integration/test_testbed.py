"""The test bed itself: the robot engine answers over tcp, stops, starts and runs containers.

If these fail, every test that uses the `robot_engine` fixture is meaningless.
"""

import socket
import subprocess

import pytest
from tests.support.engines import (
    ROBOT_ADDR,
    ROBOT_URL,
    RobotEngine,
    engine_container_ids,
)

LABEL = "corral.test=testbed"


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "-H", ROBOT_URL, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_robot_engine_answers_over_tcp_with_busybox(robot_engine: RobotEngine) -> None:
    assert robot_engine.url == ROBOT_URL == f"tcp://{ROBOT_ADDR}:2375"
    assert robot_engine.is_up()
    info = _docker("info", "--format", "{{.Name}} {{.ServerVersion}}")
    assert info.returncode == 0, info.stderr
    image = _docker("image", "inspect", "--format", "{{.Id}}", "local/busybox:1")
    assert image.returncode == 0, image.stderr


def test_stop_refuses_and_start_brings_it_back(robot_engine: RobotEngine) -> None:
    robot_engine.stop()
    try:
        assert not robot_engine.is_up()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((ROBOT_ADDR, 2375), timeout=5).close()
        assert _docker("version").returncode != 0
    finally:
        robot_engine.start()
    assert robot_engine.is_up()
    assert _docker("version").returncode == 0


def test_busybox_container_runs_on_the_robot(robot_engine: RobotEngine) -> None:
    ran = _docker("run", "--rm", "--label", LABEL, "local/busybox:1", "echo", "hi")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "hi\n"
    assert engine_container_ids(robot_engine.url, LABEL) == []
    created = _docker("create", "--label", LABEL, "local/busybox:1", "sleep", "1")
    assert created.returncode == 0, created.stderr
    try:
        assert engine_container_ids(robot_engine.url, LABEL) == [created.stdout.strip()]
    finally:
        _docker("rm", "-f", created.stdout.strip())
    assert engine_container_ids(robot_engine.url, LABEL) == []
