"""An AMQP (RabbitMQ) link with aio-pika: durable queues consumed with manual acks.

A message is acknowledged only after its handler returns; a handler that raises sends it
back to the queue (after a pause), so a failure in corral never loses one. A handler runs
to its end even when the connection is lost meanwhile; a message handled but not acked
comes back redelivered: it is acked then, not handled a second time. An ack written but not
yet seen to reach the broker when the connection goes counts as not acked.
"""

import asyncio
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from corral.brokers.link import Link, log
from corral.events import EventBus
from corral.metrics import Metrics

Handler = Callable[[bytes, bool], Awaitable[None]]  # (body, redelivered)
RETRY_PAUSE = 1.0
PREFETCH = 20


class _SentAcks:
    """The acks written on one channel that the broker is not yet known to have read.

    An ack has no answer in AMQP 0-9-1, and one written just before a broker restart is
    lost with it. A channel's frames are read in order, so the answer to a later
    synchronous call (basic.qos) proves every ack written before it arrived.
    """

    def __init__(self) -> None:
        self.waiting: list[tuple[str, bytes]] = []  # (queue, body), in the order acked
        self._wake = asyncio.Event()

    def sent(self, queue: str, body: bytes) -> None:
        self.waiting.append((queue, body))
        self._wake.set()

    async def confirm(self, channel: aio_pika.abc.AbstractChannel) -> None:
        """Until cancelled or the channel fails: prove the acks written so far arrived."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            written = len(self.waiting)
            await channel.set_qos(prefetch_count=PREFETCH)
            del self.waiting[:written]


class AmqpLink(Link):
    kind = "amqp"

    def __init__(self, name: str, url: str, bus: EventBus, metrics: Metrics) -> None:
        super().__init__(name, url, bus, metrics)
        self._consumers: dict[str, Handler] = {}
        self._connection: aio_pika.abc.AbstractConnection | None = None
        # Per queue, the bodies of messages handled whose ack failed: their redelivery
        # (which comes before any new message) is acked without handling them again.
        self._unacked: dict[str, list[bytes]] = {}
        self._handling: set[asyncio.Future[None]] = set()  # running, kept referenced

    def consume(self, queue: str, handler: Handler) -> None:
        """Consume `queue` (declared durable) with `handler`, from the next connection on."""
        self._consumers[queue] = handler

    async def serve(self) -> None:
        connection = await aio_pika.connect(self.url, timeout=5)
        self._connection = connection
        lost = asyncio.Event()  # `connection.closed()` does not return on a broker's close
        connection.close_callbacks.add(lambda *_: lost.set())
        acks = _SentAcks()
        confirming: asyncio.Task[None] | None = None
        try:
            channel = await connection.channel()
            channel.close_callbacks.add(lambda *_: lost.set())  # a closed channel consumes nothing
            await channel.set_qos(prefetch_count=PREFETCH)
            confirming = asyncio.create_task(acks.confirm(channel))
            confirming.add_done_callback(lambda _: lost.set())
            for name, handler in self._consumers.items():
                queue = await channel.declare_queue(name, durable=True)
                await queue.consume(self._wrap(name, handler, acks))
            await self._up()
            await lost.wait()
        finally:
            self._connection = None
            if confirming is not None:
                confirming.cancel()
                await asyncio.gather(confirming, return_exceptions=True)
            self._doubt(acks)
            if not connection.is_closed:
                await connection.close()

    def _doubt(self, acks: _SentAcks) -> None:
        """The connection went: acks not known to have arrived may be lost with it, so
        their messages' redeliveries are acked, not handled again."""
        for queue, body in acks.waiting:
            self._unacked.setdefault(queue, []).append(body)
        acks.waiting.clear()

    def _wrap(
        self, queue: str, handler: Handler, acks: _SentAcks | None = None
    ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        lock = asyncio.Lock()  # one message at a time per queue, in order
        unacked = self._unacked.setdefault(queue, [])

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with lock:
                redelivered = bool(message.redelivered)
                if not redelivered:
                    unacked.clear()  # the redeliveries came first: none is left to come
                elif message.body in unacked:
                    unacked.remove(message.body)
                    log.info("redelivered message was handled before; acked", queue=queue)
                    await message.ack()
                    return
                # Shielded: a consumer cancelled meanwhile (its connection lost) must not
                # cut a handling in two (a farm take claimed but never published); one
                # that then ends well is remembered as handled, not acked.
                work = asyncio.ensure_future(handler(message.body, redelivered))
                self._handling.add(work)
                work.add_done_callback(self._handling.discard)
                try:
                    await asyncio.shield(work)
                except asyncio.CancelledError:
                    work.add_done_callback(lambda done: _handled(done, message.body, unacked))
                    raise
                except Exception as exc:
                    log.warning("message handling failed; requeued", queue=queue, error=repr(exc))
                    await asyncio.sleep(RETRY_PAUSE)
                    await message.nack(requeue=True)
                    return
                try:
                    await message.ack()
                except BaseException:  # not acked: the broker delivers it again
                    unacked.append(message.body)
                    raise
                if acks is not None:
                    acks.sent(queue, message.body)

        return on_message


def _handled(done: "asyncio.Future[None]", body: bytes, unacked: list[bytes]) -> None:
    """A handling whose consumer was cancelled ended: if it ended well, its redelivery is
    acked without handling it again."""
    if not done.cancelled() and done.exception() is None:
        unacked.append(body)
