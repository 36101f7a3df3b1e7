"""An MQTT (Mosquitto) link with aiomqtt: subscriptions renewed on every connection,
publishing at QoS 1 only while connected; handlers learn whether a message was retained
(stored at the broker earlier) or live. A high-rate feed (VDA 5050 vehicles) subscribes
through a lean connection of its own (mqtt_feed) on the same reconnect loop."""

import asyncio
import contextlib
import secrets
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiomqtt

from corral.brokers.link import Link, log
from corral.brokers.mqtt_feed import Deliver, MqttFeed
from corral.errors import Unreachable
from corral.events import EventBus
from corral.metrics import Metrics

Handler = Callable[[str, bytes, bool], Awaitable[None]]  # (topic, payload, retained)


class NotSent(Unreachable):
    """The link was down: nothing went out."""


class MqttLink(Link):
    kind = "mqtt"

    def __init__(self, name: str, url: str, bus: EventBus, metrics: Metrics) -> None:
        super().__init__(name, url, bus, metrics)
        self._subscriptions: dict[str, Handler] = {}
        self._feed: tuple[list[tuple[str, int]], Deliver] | None = None
        self._client: aiomqtt.Client | None = None
        self._tag = secrets.token_hex(3)  # the feed's client id: unique across replicas

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._subscriptions[topic] = handler

    def feed(self, filters: list[tuple[str, int]], deliver: Deliver) -> None:
        """Every message on `filters` (each with its QoS) to `deliver`, called on the loop as
        the message is read (mqtt_feed): for high rates, where aiomqtt costs too much."""
        if self._feed is not None:
            raise RuntimeError(f"MQTT broker {self.name} has a feed already")
        self._feed = (filters, deliver)

    async def serve(self) -> None:
        parts = urlsplit(self.url)
        client = aiomqtt.Client(
            hostname=parts.hostname or "127.0.0.1",
            port=parts.port or 1883,
            username=parts.username,
            password=parts.password,
            identifier=f"corral-{self.name}-{id(self):x}",
            keepalive=10,
            timeout=5,
            # Small messages go out at once: with Nagle's algorithm a publish right after
            # an acknowledgement waits for the broker's delayed ACK (~40 ms on Linux).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        async with client:
            for topic in self._subscriptions:
                await client.subscribe(topic, qos=1)
            if self._feed is None:  # the farm's and the triggers' links: aiomqtt alone
                self._client = client
                try:
                    await self._up()
                    await self._read(client)
                finally:
                    self._client = None
                return
            filters, deliver = self._feed
            feed = MqttFeed(
                parts.hostname or "127.0.0.1",
                parts.port or 1883,
                f"corral-{self.name}-{self._tag}-feed",
                parts.username,
                parts.password,
                filters,
                deliver,
            )
            await feed.open()
            self._client = client
            work = [asyncio.create_task(self._read(client)), asyncio.create_task(feed.run())]
            try:
                await self._up()
                done, _ = await asyncio.wait(work, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # raises what ended it
            finally:
                self._client = None
                for task in work:
                    task.cancel()
                await asyncio.gather(*work, return_exceptions=True)
                feed.close()

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            handler = self._handler(str(message.topic))
            if handler is None:
                continue
            payload = message.payload
            body = payload if isinstance(payload, bytes) else str(payload).encode()
            try:
                await handler(str(message.topic), body, bool(message.retain))
            except Exception as exc:
                log.error("mqtt handler failed", topic=str(message.topic), error=repr(exc))

    def _handler(self, topic: str) -> Handler | None:
        for pattern, handler in self._subscriptions.items():
            if aiomqtt.Topic(topic).matches(pattern):
                return handler
        return None

    async def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 1) -> None:
        """Publish (at QoS 1 unless told); NotSent when the broker is not connected now,
        Unreachable when the publish failed on the way (it may have reached the broker)."""
        client = self._client
        if client is None:
            raise NotSent(f"MQTT broker {self.name} is not connected")
        try:
            await asyncio.wait_for(client.publish(topic, payload, qos=qos, retain=retain), 10)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise Unreachable(f"MQTT broker {self.name}: publish failed: {exc}") from None
        if qos:
            _ack_now(client)


def _ack_now(client: aiomqtt.Client) -> None:
    """Acknowledge the broker's PUBACK at once (Linux TCP_QUICKACK). Otherwise the kernel
    delays that ACK up to 40 ms, and a broker without TCP_NODELAY (Mosquitto's default)
    holds the next message it sends us, e.g. a robot's answer to what we published, until
    it comes."""
    quickack = getattr(socket, "TCP_QUICKACK", None)
    sock = client._client.socket()  # aiomqtt gives no other way to the connection's socket
    if quickack is not None and isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
