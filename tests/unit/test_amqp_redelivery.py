"""The AMQP link's acks: a message handled whose ack could not go out is acked, not handled
again, when the broker delivers it again; a new message clears what is remembered."""

import asyncio
from typing import Any

import pytest

from corral.brokers.amqp import AmqpLink, _SentAcks
from corral.events import EventBus
from corral.metrics import Metrics


class Message:
    """What the link reads of an incoming message, with an ack that can fail once."""

    def __init__(self, body: bytes, redelivered: bool, ack_fails: bool = False) -> None:
        self.body, self.redelivered, self.ack_fails = body, redelivered, ack_fails
        self.acked = False

    async def ack(self) -> None:
        if self.ack_fails:
            raise ConnectionError("channel closed")
        self.acked = True

    async def nack(self, requeue: bool) -> None:
        raise AssertionError("not expected")


def _link() -> AmqpLink:
    store: Any = None  # nothing here is stored: the link only logs
    metrics = Metrics()
    return AmqpLink("amqp", "amqp://127.0.0.1/", EventBus(store, metrics), metrics)


def test_a_redelivery_after_a_failed_ack_is_acked_not_handled_again() -> None:
    handled: list[tuple[bytes, bool]] = []

    async def handler(body: bytes, redelivered: bool) -> None:
        handled.append((body, redelivered))

    async def run() -> None:
        link = _link()
        first = link._wrap("ready", handler)
        with pytest.raises(ConnectionError):  # handled, then the connection went
            await first(Message(b"17", False, ack_fails=True))  # type: ignore[arg-type]
        again = link._wrap("ready", handler)  # the next connection's consumer
        redelivered = Message(b"17", True)
        await again(redelivered)  # type: ignore[arg-type]
        assert redelivered.acked
        other = Message(b"18", True)  # delivered before, never handled: handled now
        await again(other)  # type: ignore[arg-type]
        await again(Message(b"19", False))  # type: ignore[arg-type]
        later = Message(b"17", True)  # nothing remembered once a new message came
        await again(later)  # type: ignore[arg-type]
        assert later.acked

    asyncio.run(run())
    assert handled == [(b"17", False), (b"18", True), (b"19", False), (b"17", True)]


def test_a_handling_cut_by_the_connection_runs_to_its_end_and_its_redelivery_is_acked() -> None:
    handled: list[bytes] = []
    going = asyncio.Event()

    async def handler(body: bytes, redelivered: bool) -> None:
        await going.wait()
        handled.append(body)

    async def run() -> None:
        link = _link()
        consumer = asyncio.ensure_future(link._wrap("ready", handler)(Message(b"17", False)))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        consumer.cancel()  # the connection went while it was handled
        with pytest.raises(asyncio.CancelledError):
            await consumer
        going.set()
        await asyncio.sleep(0.01)
        assert handled == [b"17"]  # not cut in two
        redelivered = Message(b"17", True)
        await link._wrap("ready", handler)(redelivered)  # type: ignore[arg-type]
        assert redelivered.acked

    asyncio.run(run())
    assert handled == [b"17"]


class Channel:
    """A channel whose basic.qos is answered only when the test says so."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.asked = 0

    async def set_qos(self, prefetch_count: int) -> None:
        self.asked += 1
        await self.answer.wait()
        self.answer.clear()


def test_an_ack_the_broker_was_not_seen_to_read_counts_as_lost_with_the_connection() -> None:
    """An ack has no answer: one written just before a broker restart is lost with it, and
    the message comes back. Only a later answered call on the channel proves it arrived."""
    handled: list[bytes] = []

    async def handler(body: bytes, redelivered: bool) -> None:
        handled.append(body)

    async def run() -> None:
        link = _link()
        acks = _SentAcks()
        channel = Channel()
        confirming = asyncio.ensure_future(acks.confirm(channel))  # type: ignore[arg-type]
        consume = link._wrap("ready", handler, acks)
        proved = Message(b"17", False)
        await consume(proved)  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert channel.asked == 1
        assert acks.waiting == [("ready", b"17")]
        channel.answer.set()  # the broker answered: the ack before it arrived
        await asyncio.sleep(0.01)
        assert acks.waiting == []
        await consume(Message(b"18", False))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        confirming.cancel()  # ... and the connection goes before the proof
        link._doubt(acks)
        again = link._wrap("ready", handler)
        back = Message(b"18", True)
        await again(back)  # type: ignore[arg-type]
        assert back.acked
        never = Message(b"17", True)  # its ack was proved: a redelivery is a new message
        await again(never)  # type: ignore[arg-type]

    asyncio.run(run())
    assert handled == [b"17", b"18", b"17"]
