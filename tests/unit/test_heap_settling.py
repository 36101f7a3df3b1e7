"""`corral serve` keeps what stays alive out of the garbage collector's full passes
(serving.settle): each turn a pass over what is new, then what survived is frozen; every
RESETTLE_TURNS-th turn everything is unfrozen first, so a frozen object that died in a
cycle is collected then. Run on the test process's own heap."""

import asyncio
import gc
import weakref

import pytest

from corral import serving


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_survivors_are_frozen_and_a_frozen_cycle_is_collected_at_the_full_turn() -> None:
    gc.unfreeze()
    try:
        freed: list[bool] = []
        probe = Cycle()
        gone = weakref.ref(probe, lambda _ref: freed.append(True))
        serving.settle(1)  # an ordinary turn: `probe` survives and is frozen
        assert gc.get_freeze_count() > 0
        del probe
        gc.collect()
        serving.settle(2)
        assert not freed, "a frozen cycle is not collected by an ordinary pass"
        serving.settle(serving.RESETTLE_TURNS)  # the turn that unfreezes everything first
        assert freed, "collected once everything was unfrozen"
        assert gone() is None
    finally:
        gc.unfreeze()


async def test_the_turns_run_until_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    turns: list[int] = []
    monkeypatch.setattr(serving, "SETTLE_SECONDS", 0.01)
    monkeypatch.setattr(serving, "settle", turns.append)
    stopping = asyncio.Event()
    settling = asyncio.create_task(serving.keep_heap_settled(stopping))
    await asyncio.sleep(0.1)
    stopping.set()
    await asyncio.wait_for(settling, 2)
    assert turns[:3] == [1, 2, 3]
    done = len(turns)
    await asyncio.sleep(0.05)
    assert len(turns) == done, "no turn after the stop"
