"""mDNS discovery of Wasm-IoT supervisors: browse `_webthing._tcp.local.` and report each
device found (name, addresses, port, TXT properties) and each goodbye.

The device service runs one Browser while corral serves, when `mdns_enabled` is set.
"""

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

SERVICE_TYPE = "_webthing._tcp.local."
log = structlog.get_logger("corral.devices.discovery")


@dataclass(frozen=True)
class Found:
    name: str
    addresses: list[str]
    port: int
    path: str
    tls: bool


def device_name(service_name: str) -> str:
    """`robot-1._webthing._tcp.local.` -> `robot-1`."""
    suffix = "." + SERVICE_TYPE
    return service_name[: -len(suffix)] if service_name.endswith(suffix) else service_name


def found_from(info: AsyncServiceInfo) -> Found:
    props = {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else ("" if v is None else str(v))
        )
        for k, v in info.properties.items()
    }
    addresses = [socket.inet_ntoa(a) for a in info.addresses if len(a) == 4]
    extra = props.get("address", "")
    if extra:  # first: several devices may share one host name (and its A records)
        addresses = [extra, *(a for a in addresses if a != extra)]
    return Found(
        device_name(info.name),
        addresses,
        int(info.port or 0),
        props.get("path", "/") or "/",
        props.get("tls", "0") in ("1", "true", "True"),
    )


class Browser:
    """Browse until stopped; call `on_found` / `on_gone` for each change."""

    def __init__(
        self,
        interface: str,
        on_found: Callable[[Found], Awaitable[None]],
        on_gone: Callable[[str], Awaitable[None]],
    ) -> None:
        self.interface = interface
        self.on_found = on_found
        self.on_gone = on_gone
        self._pending: set[asyncio.Task[None]] = set()
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        self._zc = AsyncZeroconf(interfaces=[self.interface], ip_version=IPVersion.V4Only)
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, [SERVICE_TYPE], handlers=[self._changed]
        )
        log.info("browsing mDNS", type=SERVICE_TYPE, interface=self.interface)
        try:
            await stopping.wait()
        finally:
            await self._browser.async_cancel()
            await self._zc.async_close()
            for task in self._pending:
                task.cancel()

    def rescan(self) -> None:
        """Forget what was seen and browse again (the seed's discovery/reset)."""
        if self._zc is None or self._browser is None:
            return
        old = self._browser
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, [SERVICE_TYPE], handlers=[self._changed]
        )
        self._spawn(old.async_cancel())

    def _changed(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            self._spawn(self.on_gone(device_name(name)))
        else:
            self._spawn(self._resolve(service_type, name))

    async def _resolve(self, service_type: str, name: str) -> None:
        if self._zc is None:
            return
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc.zeroconf, 3000):
            log.warning("mDNS service did not resolve", name=name)
            return
        await self.on_found(found_from(info))

    def _spawn(self, work: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("mDNS handler failed")

        task = asyncio.get_running_loop().create_task(guarded())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
