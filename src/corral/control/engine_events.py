"""Engine events on the event bus: each reachable engine's container events (start, die,
oom, ...) of what corral owns, published as `engine.container.<action>` signals.

Run by the leader (core.py `_lead`); the stack service restarts what dies and the session
service checks its sessions soon, each watching the bus (`EventBus.watch`), not this module.
"""

import asyncio
import contextlib
import threading
from typing import Any

from corral.control.hosts import HostService
from corral.events import EventBus
from corral.hosts.driver import HostDriver
from corral.model.containers import OWNED

CONTAINER = "engine.container."  # the kinds' prefix: engine.container.die, ...start, ...


class EngineEvents:
    def __init__(self, hosts: HostService, bus: EventBus) -> None:
        self.hosts = hosts
        self.bus = bus

    async def run(self, stop: asyncio.Event) -> None:
        """Follow each reachable engine's container events (a thread per engine, again when
        its stream ends and the host answers) and signal each on the bus, in order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        watching: dict[str, threading.Thread] = {}

        async def on_stop() -> None:  # the wait below ends at once (a leader steps down)
            await stop.wait()
            queue.put_nowait(("", {}))

        stopper = asyncio.create_task(on_stop())
        try:
            while not stop.is_set():
                for host in await self.hosts.views():
                    running = watching.get(host.name)
                    if host.reachable and (running is None or not running.is_alive()):
                        driver = self.hosts.driver_for(host)
                        # A daemon thread per engine: its stream ends when the driver closes.
                        watching[host.name] = threading.Thread(
                            target=_pump,
                            args=(host.name, driver, queue, loop, stop),
                            name=f"corral-events-{host.name}",
                            daemon=True,
                        )
                        watching[host.name].start()
                with contextlib.suppress(TimeoutError):
                    host_name, event = await asyncio.wait_for(queue.get(), timeout=1.0)
                    if host_name:
                        self._signal(host_name, event)
        finally:
            stopper.cancel()

    def _signal(self, host: str, event: dict[str, Any]) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        self.bus.signal(
            f"{CONTAINER}{action}",
            f"host/{host}",
            f"{attrs.get('name', '?')} on {host}: {action}",
            {"host": host, "action": action, "attributes": dict(attrs)},
        )


def _pump(
    host: str,
    driver: HostDriver,
    queue: asyncio.Queue[tuple[str, dict[str, Any]]],
    loop: asyncio.AbstractEventLoop,
    stop: asyncio.Event,
) -> None:
    """Thread body: copy one engine's container events into the loop's queue."""
    with (
        contextlib.suppress(Exception),  # also an engine that does not answer: tried again
        contextlib.closing(driver.events({OWNED: "true"})) as events,
    ):
        for event in events:
            if stop.is_set():
                return
            loop.call_soon_threadsafe(queue.put_nowait, (host, event))
