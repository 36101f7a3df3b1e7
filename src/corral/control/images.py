"""Make a service's image present on a host: already there, built there, or copied from a
host that has it. Shared by the stack reconciler and the session service.
"""

import asyncio
import time

from corral.control.hosts import HostService
from corral.errors import Invalid
from corral.events import EventBus
from corral.hosts.driver import HostDriver
from corral.model.compose import ServiceSpec


class ImageSupply:
    def __init__(self, hosts: HostService, bus: EventBus) -> None:
        self.hosts = hosts
        self.bus = bus
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def ensure(
        self, drivers: dict[str, HostDriver], host: str, spec: ServiceSpec, resource: str
    ) -> None:
        """One build or copy per (host, image) at a time; later callers find it there."""
        lock = self._locks.setdefault((host, spec.image), asyncio.Lock())
        async with lock:
            driver = drivers[host]
            if await self.hosts.call(driver.has_image, spec.image):
                return
            if spec.build is not None:
                await self.bus.emit("image.building", resource, f"building {spec.image} on {host}")
                started = time.monotonic()
                await self.hosts.call(driver.build_image, spec.build, spec.image)
                took = time.monotonic() - started
                await self.bus.emit(
                    "image.built", resource, f"built {spec.image} on {host} in {took:.1f} s"
                )
                return
            for other, source in sorted(drivers.items()):
                if other == host or not await self.hosts.call(source.has_image, spec.image):
                    continue
                await self.bus.emit(
                    "image.copying", resource, f"copying {spec.image} from {other} to {host}"
                )
                started = time.monotonic()
                await self.hosts.call(_copy_image, source, driver, spec.image)
                took = time.monotonic() - started
                await self.bus.emit(
                    "image.copied",
                    resource,
                    f"copied {spec.image} from {other} to {host} in {took:.1f} s",
                )
                return
            raise Invalid(
                f"image {spec.image} is on no reachable host and service {spec.name} has no build"
            )


def _copy_image(source: HostDriver, target: HostDriver, image: str) -> None:
    target.import_image(source.export_image(image))
