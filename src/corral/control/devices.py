"""Wasm devices: registration (mDNS, the register endpoint, by hand), periodic health
checks (inactive after N failures in a row, with a status log), goodbyes, blacklist.

Core runs `run_health` and, with `mdns_enabled`, the mDNS browser; deployments ask
`candidates` (kept until a device changes) for placement and are told through `on_active`
when a device comes back.
"""

import asyncio
import contextlib
import fnmatch
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import structlog

from corral.config import Settings
from corral.devices.client import DeviceError, SupervisorClient
from corral.devices.discovery import Browser, Found
from corral.errors import CorralError, Forbidden, Invalid
from corral.events import EventBus
from corral.model.hosts import host_allowed
from corral.model.manifests import Candidate
from corral.model.views import DeviceView, EventView
from corral.model.wasm_modules import check_wasm_name
from corral.store.devices import DeviceStore
from corral.store.tables import DeviceRow
from corral.waits import pause

log = structlog.get_logger("corral.devices")
MAX_ADDRESSES = 8


def device_url(row: DeviceRow | DeviceView) -> str:
    scheme = "https" if row.tls else "http"
    address = row.addresses[0] if row.addresses else "127.0.0.1"
    if ":" in address:
        address = f"[{address}]"
    path = row.path if row.path.startswith("/") else "/" + row.path
    return f"{scheme}://{address}:{row.port}{path.rstrip('/')}"


def _check_address(address: str) -> None:
    """An IP address, or a host name both an HTTP client and the resolver can encode (IDNA,
    labels of 1 to 63 characters): what a device's URL will need."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(address)
        return
    try:
        address.encode("idna")  # what the resolver does: empty or long labels fail
        _ = httpx.URL(f"http://{address}/").host  # IDNA 2008 both ways, as httpx needs
    except (UnicodeError, ValueError, httpx.InvalidURL):
        raise Invalid(
            f"device address {address[:80]!r} is not a valid host name (IDNA) or IP address",
            {"field": "addresses"},
        ) from None


class DeviceService:
    def __init__(
        self, store: DeviceStore, bus: EventBus, settings: Settings, client: SupervisorClient
    ) -> None:
        self.store = store
        self.bus = bus
        self.settings = settings
        self.client = client
        self.on_active: list[Callable[[str], Awaitable[None]]] = []
        self.browser: Browser | None = None
        self._wake = asyncio.Event()
        # What `candidates` read, until a device changes here or on another replica
        # (its events); `/execute` asks for it on every call.
        self._candidates: list[Candidate] | None = None
        self._generation = 0
        bus.watch("device.", self._device_event)

    async def views(self) -> list[DeviceView]:
        return [DeviceView.model_validate(row) for row in await self.store.every()]

    async def view(self, name: str) -> DeviceView:
        return DeviceView.model_validate(await self.store.get(name))

    def _changed(self) -> None:
        self._generation += 1
        self._candidates = None

    def _device_event(self, event: EventView) -> None:
        if event.kind != "device.log":  # a device's log line changes nothing stored here
            self._changed()

    async def register(
        self,
        name: str,
        addresses: list[str],
        port: int,
        source: str,
        path: str = "/",
        tls: bool = False,
    ) -> DeviceRow:
        """Add or refresh a device, then read its description (best effort)."""
        check_wasm_name(name, "device")
        if not addresses or len(addresses) > MAX_ADDRESSES:
            raise Invalid(f"a device needs 1 to {MAX_ADDRESSES} addresses", {"field": "addresses"})
        if any(not a or len(a) > 253 or any(c in a for c in "/?#@ ") for a in addresses):
            raise Invalid(
                "each address must be a host name or an IP address", {"field": "addresses"}
            )
        for address in addresses:
            _check_address(address)
        if len(path) > 255:
            raise Invalid("the path is longer than 255 characters", {"field": "path"})
        if not 1 <= port <= 65535:
            raise Invalid(f"port {port} is not between 1 and 65535", {"field": "port"})
        refused = [a for a in addresses if not host_allowed(a, self.settings.device_networks)]
        if refused:  # this server's policy, not the request's shape (as engine_networks)
            raise Forbidden(
                f"device address {refused[0]!r} is outside device_networks",
                {"field": "addresses", "allowed": self.settings.device_networks},
            )
        try:
            row, before = await self.store.upsert(name, addresses, port, source, path, tls)
        finally:
            self._changed()
        url = device_url(row)
        if before is None:
            await self.bus.emit(
                "device.added", f"device/{name}", f"device {name} at {url} ({source})", {"url": url}
            )
        elif before != "active":
            await self.bus.emit(
                "device.active", f"device/{name}", f"device {name} is back at {url} ({source})"
            )
            await self._came_back(name)
        await self._describe(row)
        self._wake.set()
        return row

    async def _describe(self, row: DeviceRow) -> None:
        url = device_url(row)
        try:
            description = await self.client.description(url)
        except DeviceError as exc:
            log.warning("device description unavailable", device=row.name, error=str(exc))
            return
        await self.set_description(row.name, description)
        row.description = description

    async def set_description(self, name: str, description: dict[str, Any]) -> None:
        """Store what a device says it is (it answered, or an exported document said so)."""
        try:
            await self.store.set_description(name, description)
        finally:
            self._changed()

    @property
    def public_host(self) -> str:
        """corral's host in `public_url`: what a device reaches it by."""
        return httpx.URL(self.settings.base_url).host or "127.0.0.1"

    def accepts(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.settings.mdns_accept)

    async def on_found(self, found: Found) -> None:
        if not self.accepts(found.name):
            return
        if found.port <= 0 or not found.addresses:
            log.warning("mDNS advert without address or port", device=found.name)
            return
        try:
            await self.register(
                found.name, found.addresses, found.port, "mdns", found.path, found.tls
            )
        except CorralError as exc:
            log.warning("mDNS device refused", device=found.name, error=exc.message)

    async def on_gone(self, name: str) -> None:
        if not self.accepts(name):
            return
        with contextlib.suppress(Exception):
            gone = await self.store.set_status(name, "gone")
            self._changed()
            if gone:
                await self.bus.emit(
                    "device.gone", f"device/{name}", f"device {name} said goodbye over mDNS"
                )

    async def run_health(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            rows = [r for r in await self.store.every() if r.status != "gone"]
            await asyncio.gather(*(self.check(row) for row in rows))
            self._wake.clear()
            await pause(self.settings.device_health_seconds, stopping, self._wake)

    async def check(self, row: DeviceRow) -> None:
        url = device_url(row)
        report: dict[str, Any] | None = None
        error = ""
        fresh = False
        try:
            report, known = await self.client.health(url, self.public_host)
            if not known:  # new, or restarted: a restarted supervisor has lost its parts
                await self.client.register(url, self.settings.base_url)
                fresh = True
        except DeviceError as exc:
            error = str(exc)
        change = await self.store.checked(
            row.name, report, error, self.settings.device_failures_inactive
        )
        if change is not None:
            self._changed()
        if change is None:
            if fresh and row.status == "active":
                await self._came_back(row.name)
            return
        old, new = change
        if new == "inactive":
            await self.bus.emit(
                "device.inactive",
                f"device/{row.name}",
                f"device {row.name} failed {self.settings.device_failures_inactive} health "
                f"checks in a row: {error}",
                {"error": error},
            )
        elif new == "active":
            await self.bus.emit(
                "device.active", f"device/{row.name}", f"device {row.name} answers again ({old})"
            )
            if row.description is None:
                await self._describe(row)
            await self._came_back(row.name)

    async def _came_back(self, name: str) -> None:
        for hook in self.on_active:
            try:
                await hook(name)
            except Exception:
                log.exception("device comeback hook failed", device=name)

    async def failed(self, name: str, error: str) -> None:
        """A call to the device failed: count it as a failed health check."""
        change = await self.store.checked(name, None, error, self.settings.device_failures_inactive)
        if change is not None:
            self._changed()
        if change and change[1] == "inactive":
            await self.bus.emit(
                "device.inactive", f"device/{name}", f"device {name} is not answering: {error}"
            )

    async def blacklist(self, name: str, value: bool) -> DeviceRow:
        try:
            row = await self.store.set_blacklisted(name, value)
        finally:
            self._changed()
        verb = "blacklisted" if value else "unblacklisted"
        await self.bus.emit(f"device.{verb}", f"device/{name}", f"device {name} {verb}")
        return row

    async def remove(self, name: str | None = None) -> int:
        try:
            count = await self.store.remove(name)
        finally:
            self._changed()
        if count:
            what = f"device {name}" if name else f"{count} device(s)"
            await self.bus.emit("device.removed", f"device/{name or '*'}", f"{what} removed")
        return count

    def rescan(self) -> None:
        if self.browser is not None:
            self.browser.rescan()

    async def run_discovery(self, stopping: asyncio.Event) -> None:
        self.browser = Browser(self.settings.mdns_interface, self.on_found, self.on_gone)
        await self.browser.run(stopping)

    async def candidates(self) -> list[Candidate]:
        """Every device as placement sees it (usable or why not)."""
        if self._candidates is not None:
            return list(self._candidates)
        generation = self._generation
        out = []
        for row in await self.store.every():
            interfaces = tuple((row.description or {}).get("supervisorInterfaces") or ())
            why = ""
            if row.blacklisted:
                why = "is blacklisted"
            elif row.status != "active":
                why = f"is {row.status}"
            elif row.description is None:
                why = "has not described itself yet"
            out.append(Candidate(row.name, device_url(row), interfaces, not why, why))
        if generation == self._generation:  # no change ended while they were read
            self._candidates = out
        return list(out)
