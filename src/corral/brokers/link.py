"""What every broker connection shares: its visible state, events, and the reconnect loop.

A link connects, serves until the connection drops, then waits (0.5 s doubling to 10 s)
and connects again; each loss and recovery is an event and a metric.
"""

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import structlog

from corral.events import EventBus
from corral.metrics import Metrics
from corral.model.views import BrokerView

log = structlog.get_logger("corral.brokers")
BACKOFF_START, BACKOFF_MAX = 0.5, 10.0


def shown_url(url: str) -> str:
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Link(ABC):
    kind = ""

    def __init__(self, name: str, url: str, bus: EventBus, metrics: Metrics) -> None:
        self.name = name
        self.url = url
        self.bus = bus
        self.metrics = metrics
        self.connected = False
        self.since: datetime | None = None
        self.last_error = ""
        self.reconnects = 0
        self.on_up: list[Callable[[], None]] = []  # called at each (re)connection

    def view(self) -> BrokerView:
        return BrokerView(
            name=self.name,
            kind=self.kind,
            url=shown_url(self.url),
            connected=self.connected,
            since=self.since,
            last_error=self.last_error,
            reconnects=self.reconnects,
        )

    @abstractmethod
    async def serve(self) -> None:
        """Connect, set up, and return (or raise) when the connection is lost."""

    async def run(self, stop: asyncio.Event) -> None:
        delay = BACKOFF_START
        first = True
        while not stop.is_set():
            started = time.monotonic()
            try:
                await _until(stop, self.serve())
                reason = "connection closed"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = _reason(exc)
            try:
                await self._lost(reason, first)
            except Exception:  # the store may be down too: keep reconnecting regardless
                log.exception("could not record a broker loss", broker=self.name)
            first = False
            if stop.is_set():
                return
            if time.monotonic() - started > 30:  # it had been up a while: retry quickly
                delay = BACKOFF_START
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _up(self) -> None:
        if self.connected:
            return
        again = self.since is not None and self.last_error != ""
        if again:
            self.reconnects += 1
        self.connected, self.since, self.last_error = True, datetime.now(UTC), ""
        self.metrics.broker_connected.labels(self.name).set(1)
        for hook in self.on_up:
            hook()
        await self.bus.emit(
            "broker.connected",
            f"broker/{self.name}",
            f"{self.kind} broker {self.name} {'reconnected' if again else 'connected'} "
            f"({shown_url(self.url)})",
        )

    async def _lost(self, reason: str, first: bool) -> None:
        was = self.connected
        self.connected, self.last_error = False, reason
        self.metrics.broker_connected.labels(self.name).set(0)
        if was or first:
            self.since = datetime.now(UTC)
            verb = "lost" if was else "unreachable"
            await self.bus.emit(
                f"broker.{verb}",
                f"broker/{self.name}",
                f"{self.kind} broker {self.name} {verb}: {reason}",
            )


async def _until(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
    """Run `work` until it ends or `stop` is set."""
    task: asyncio.Task[Any] = asyncio.create_task(work)
    waiter: asyncio.Task[Any] = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
    finally:
        for pending in (task, waiter):
            pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
