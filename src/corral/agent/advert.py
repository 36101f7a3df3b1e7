"""The agent's mDNS advertisement: `<name>._webthing._tcp.local.` with TXT path, tls, address.

The server starts it after the app is up and stops it (with a goodbye) on shutdown.
"""

import asyncio
import contextlib
import socket

import structlog
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

SERVICE_TYPE = "_webthing._tcp.local."

log = structlog.get_logger("corral.agent.advert")


def service_info(name: str, port: int, address: str) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"{name}.{SERVICE_TYPE}",
        port=port,
        addresses=[socket.inet_aton(address)],
        server=f"{name}.local.",
        properties={"path": "/", "tls": "0", "address": address},
    )


class Advert:
    """Registers the service on one IPv4 interface; `stop()` sends the goodbye."""

    def __init__(self, name: str, port: int, address: str, interface: str) -> None:
        self.info = service_info(name, port, address)
        self.interface = interface
        self._zeroconf: AsyncZeroconf | None = None
        self._registered = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Register in the background (probing takes a moment; the API answers meanwhile)."""
        self._task = asyncio.create_task(self._register())

    async def _register(self) -> None:
        try:
            self._zeroconf = AsyncZeroconf(interfaces=[self.interface], ip_version=IPVersion.V4Only)
            announcing = await self._zeroconf.async_register_service(self.info)
            self._registered = True  # probed and in the registry: stop() must say goodbye
            await announcing
        except Exception as exc:  # the agent works without mDNS; say so once
            log.warning("mDNS advertisement failed", error=f"{type(exc).__name__}: {exc}")
            return
        log.info("mDNS advertised", service=self.info.name, interface=self.interface)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._zeroconf is None:
            return
        try:
            if self._registered:
                await (await self._zeroconf.async_unregister_service(self.info))
                log.info("mDNS goodbye sent", service=self.info.name)
        finally:
            self._registered = False
            await self._zeroconf.async_close()
            self._zeroconf = None
