"""Engine events as bus signals: watched by prefix, never stored, counted or streamed."""

from typing import Any, cast

from corral.events import EventBus
from corral.model.views import EventView


class NoStore:
    async def append(self, *_: Any) -> None:
        raise AssertionError("a signal is not stored")


async def test_a_signal_reaches_the_watchers_of_its_kind_only() -> None:
    bus = EventBus(cast(Any, NoStore()), cast(Any, None))  # no metrics: counting would fail
    seen: list[EventView] = []
    other: list[EventView] = []
    bus.watch("engine.container.", seen.append)
    bus.watch("host.", other.append)
    async with bus.subscribe() as sub:
        data = {"host": "edge", "action": "die", "attributes": {"name": "x"}}
        bus.signal("engine.container.die", "host/edge", "x on edge: die", data)
        assert sub.queue.empty()
    assert [(e.kind, e.resource, e.data) for e in seen] == [
        ("engine.container.die", "host/edge", data)
    ]
    assert other == []
