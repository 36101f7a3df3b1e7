"""A stack's network counts as removed once its host no longer lists it: a swarm manager
still lists an overlay for a moment after removing it, while its node lets go of it."""

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from corral.control import stacks as stacks_module
from corral.control.stacks import StackService


class _Hosts:
    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


class _Bus:
    def __init__(self) -> None:
        self.said: list[tuple[str, str]] = []

    async def emit(self, kind: str, resource: str, message: str, *_: Any) -> None:
        self.said.append((kind, message))


class _Manager:
    """Removes the network at once but lists it `lingers` more times."""

    def __init__(self, lingers: int) -> None:
        self.lingers = lingers
        self.removals = 0

    def remove_network(self, name: str) -> None:
        self.removals += 1

    def networks(self, labels: Mapping[str, str]) -> dict[str, dict[str, str]]:
        if self.lingers > 0:
            self.lingers -= 1
            return {"s_net": dict(labels)}
        return {}


def _service(bus: _Bus) -> StackService:
    service = StackService.__new__(StackService)
    service.hosts = _Hosts()  # type: ignore[assignment]
    service.bus = bus  # type: ignore[assignment]
    return service


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    real = asyncio.sleep
    monkeypatch.setattr(stacks_module.asyncio, "sleep", lambda _: real(0))


def test_down_waits_until_the_manager_no_longer_lists_the_overlay() -> None:
    bus, manager = _Bus(), _Manager(lingers=3)
    asyncio.run(_service(bus)._remove_network("s", "local", manager, "s_net"))  # type: ignore[arg-type]
    assert manager.lingers == 0
    assert bus.said == []


def test_a_network_listed_for_good_is_reported_lingering() -> None:
    bus, manager = _Bus(), _Manager(lingers=10**6)
    asyncio.run(_service(bus)._remove_network("s", "local", manager, "s_net"))  # type: ignore[arg-type]
    assert bus.said == [
        ("network.lingering", "network s_net on local not removed: the engine still lists it")
    ]
