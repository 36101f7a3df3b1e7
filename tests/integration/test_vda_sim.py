"""`corral sim vda` as a process, on a private Mosquitto enforcing a login per vehicle: its
vehicles spread over processes each log in with their own credentials (from a credentials
file) and last will, say ONLINE and report; stopped, each says OFFLINE; the parent
SIGKILLed, its vehicle processes end with it and the broker sends every last will; a
vehicle with a wrong password is refused by the broker and the others serve on.

The observer on the broker is plain aiomqtt: it shares nothing with the simulator."""

import asyncio
import json
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from tests.support.private_brokers import LockedMosquitto
from tests.support.server import corral_command

SERIALS = ("cp1", "cp2", "cp3")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LockedMosquitto]:
    mosquitto = LockedMosquitto(tmp_path, [("acme", s) for s in SERIALS]).start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()


class Observer:
    """Every connection and state message of the acme vehicles, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def connections(self, serial: str) -> list[str]:
        return [b["connectionState"] for s, n, b in self.seen if s == serial and n == "connection"]

    def states(self, serial: str) -> int:
        return sum(1 for s, n, _ in self.seen if s == serial and n == "state")

    async def run(self, broker: LockedMosquitto, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            username="observer",
            password=broker.passwords["observer"],
            identifier=f"test-observer-{secrets.token_hex(3)}",
        ) as client:
            await client.subscribe("uagv/v2/acme/+/connection", qos=1)
            await client.subscribe("uagv/v2/acme/+/state")
            ready.set()
            async for message in client.messages:
                serial, name = str(message.topic).split("/")[3:5]
                if isinstance(message.payload, bytes):
                    self.seen.append((serial, name, json.loads(message.payload)))


async def until(check: Any, what: str, limit: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def simulator(broker: LockedMosquitto, credentials: Path, procs: int) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        [
            *corral_command(),
            "sim",
            "vda",
            "3",
            "--broker",
            broker.url,
            "--start",
            "n0,n1,n2",
            "--manufacturer",
            "acme",
            "--serial-prefix",
            "cp",
            "--state-every",
            "0.5",
            "--procs",
            str(procs),
            "--credentials",
            str(credentials),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def logins(broker: LockedMosquitto, path: Path, wrong: tuple[str, ...] = ()) -> Path:
    entries = {
        s: {
            "username": f"acme.{s}",
            "password": "wrong" if s in wrong else broker.passwords[f"acme.{s}"],
        }
        for s in SERIALS
    }
    path.write_text(json.dumps(entries))
    return path


async def test_vehicles_in_two_processes_log_in_each_as_itself_and_say_offline_when_stopped(
    broker: LockedMosquitto, tmp_path: Path
) -> None:
    observer, ready = Observer(), asyncio.Event()
    watching = asyncio.create_task(observer.run(broker, ready))
    await asyncio.wait_for(ready.wait(), 30)
    sim = simulator(broker, logins(broker, tmp_path / "logins.json"), procs=2)
    try:
        await until(
            lambda: (
                all(observer.connections(s) == ["ONLINE"] for s in SERIALS)
                and all(observer.states(s) >= 2 for s in SERIALS)
            ),
            "every vehicle online and reporting",
        )
        sim.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(sim.communicate, timeout=30)
        assert sim.returncode == 0, err
        await until(
            lambda: all(observer.connections(s) == ["ONLINE", "OFFLINE"] for s in SERIALS),
            "every vehicle offline, and no last will",
        )
    finally:
        if sim.poll() is None:
            sim.kill()
        await asyncio.to_thread(sim.communicate, timeout=30)
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    assert "in 2 processes" in out
    assert "cp3: at n2, passed 0 node(s)" in out
    for serial in SERIALS:
        assert broker.passwords[f"acme.{serial}"] not in out + err


async def test_the_parent_killed_its_vehicles_end_with_it_and_a_wrong_login_is_refused(
    broker: LockedMosquitto, tmp_path: Path
) -> None:
    observer, ready = Observer(), asyncio.Event()
    watching = asyncio.create_task(observer.run(broker, ready))
    await asyncio.wait_for(ready.wait(), 30)
    sim = simulator(broker, logins(broker, tmp_path / "logins.json", wrong=("cp3",)), procs=2)
    try:
        await until(
            lambda: all(observer.connections(s) == ["ONLINE"] for s in ("cp1", "cp2")),
            "cp1 and cp2 online",
        )
        await until(
            lambda: broker.log.read_text().count("disconnected, not authorised") >= 2,
            "the broker refusing cp3, twice (Mosquitto does not name it)",
        )
        sim.kill()  # SIGKILL: no OFFLINE from anyone
        await asyncio.to_thread(sim.communicate, timeout=30)
        await until(
            lambda: all(
                observer.connections(s) == ["ONLINE", "CONNECTIONBROKEN"] for s in ("cp1", "cp2")
            ),
            "the last wills of cp1 and cp2",
        )
    finally:
        if sim.poll() is None:
            sim.kill()
        await asyncio.to_thread(sim.communicate, timeout=30)
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    assert observer.connections("cp3") == []
    assert observer.states("cp3") == 0
