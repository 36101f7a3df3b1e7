"""Make a service's image present on a host: already there, built there, or copied from a
host that has it; a build's base images (its `FROM`s) are copied to the host first.
Shared by the stack reconciler and the session service.
"""

import asyncio
import contextlib
import os
import time

from corral.control.hosts import HostService
from corral.errors import CorralError, Invalid
from corral.events import EventBus
from corral.hosts.driver import HostDriver
from corral.model.dockerfile import BaseImage, base_images
from corral.model.stack_spec import BuildSpec, ServiceSpec, StackSpec
from corral.model.views import HostView

PRESENT_SECONDS = 30.0  # an image found on a host is not looked for again for this long


def dockerfile_path(build: BuildSpec) -> str:
    return os.path.join(build.context, build.dockerfile)


def build_bases(build: BuildSpec) -> list[BaseImage]:
    """The images the build starts from; none when the Dockerfile cannot be read (the build
    then says why)."""
    try:
        with open(dockerfile_path(build), encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError):
        return []
    return base_images(text, build.args)


def missing_base(service: str, build: BuildSpec, base: BaseImage) -> str:
    return (
        f"base image {base.image} (FROM on line {base.line} of {dockerfile_path(build)}) that "
        f"service {service} builds on is on no reachable host: load it on one of them "
        f"(`docker load`, or `docker build`/`docker import`) and corral copies it where needed"
    )


class ImageSupply:
    def __init__(self, hosts: HostService, bus: EventBus) -> None:
        self.hosts = hosts
        self.bus = bus
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._base_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._present: dict[tuple[str, str], float] = {}  # (host, image) -> when found

    def forget(self, host: str, image: str) -> None:
        """The image turned out missing on the host (a create said so): look again."""
        self._present.pop((host, image), None)

    async def problems(self, spec: StackSpec, hosts: list[HostView]) -> list[str]:
        """Images no reachable host has and nothing can build: an image-only service's
        image, or a build's base image (checked before a stack is applied)."""
        bases = {
            name: build_bases(svc.build)
            for name, svc in spec.services.items()
            if svc.build is not None
        }
        need = {svc.image for svc in spec.services.values()}
        need |= {base.image for found in bases.values() for base in found}
        have: dict[str, bool] = {image: False for image in need}
        for host in hosts:
            if not host.reachable:
                continue
            driver = self.hosts.driver_for(host)
            for image in need:
                if not have[image]:
                    with contextlib.suppress(CorralError):
                        have[image] = await self.hosts.call(driver.has_image, image)
        problems: list[str] = []
        for svc_name, svc in sorted(spec.services.items()):
            if svc.build is None and not have.get(svc.image, True):
                problems.append(
                    f"line {svc.line}: services.{svc_name}.image: image {svc.image!r} is on no "
                    "reachable host and the service has no build: to make it"
                )
            if svc.build is not None and not have[svc.image]:
                problems += [
                    f"line {svc.line}: services.{svc_name}.build: "
                    + missing_base(svc_name, svc.build, base)
                    for base in bases[svc_name]
                    if not have[base.image]
                ]
        return problems

    async def ensure(
        self,
        drivers: dict[str, HostDriver],
        host: str,
        spec: ServiceSpec,
        resource: str,
        recent: bool = False,
    ) -> None:
        """One build or copy per (host, image) at a time; later callers find it there. With
        `recent`, an image found there in the last PRESENT_SECONDS is not inspected again
        (a burst of sessions queued its inspections behind this lock); such a caller calls
        `forget` when a create says the image is missing after all."""
        key = (host, spec.image)
        now = time.monotonic()
        if recent and now - self._present.get(key, -PRESENT_SECONDS) < PRESENT_SECONDS:
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            found = self._present.get(key)
            if recent and found is not None and found >= now:
                return  # found while this caller waited for the lock
            driver = drivers[host]
            if await self.hosts.call(driver.has_image, spec.image):
                self._present[key] = time.monotonic()
                return
            if spec.build is not None:
                for base in build_bases(spec.build):
                    base_lock = self._base_locks.setdefault((host, base.image), asyncio.Lock())
                    async with base_lock:
                        if await self.hosts.call(driver.has_image, base.image):
                            continue
                        if not await self._copy(drivers, host, base.image, resource):
                            raise Invalid(missing_base(spec.name, spec.build, base))
                await self.bus.emit("image.building", resource, f"building {spec.image} on {host}")
                started = time.monotonic()
                await self.hosts.call(driver.build_image, spec.build, spec.image)
                took = time.monotonic() - started
                await self.bus.emit(
                    "image.built", resource, f"built {spec.image} on {host} in {took:.1f} s"
                )
                self._present[key] = time.monotonic()
                return
            if not await self._copy(drivers, host, spec.image, resource):
                raise Invalid(
                    f"image {spec.image} is on no reachable host and service {spec.name} "
                    "has no build"
                )
            self._present[key] = time.monotonic()

    async def _copy(
        self, drivers: dict[str, HostDriver], host: str, image: str, resource: str
    ) -> bool:
        """Copy the image to `host` from the first other host that has it; False if none."""
        for other, source in sorted(drivers.items()):
            if other == host or not await self.hosts.call(source.has_image, image):
                continue
            await self.bus.emit(
                "image.copying", resource, f"copying {image} from {other} to {host}"
            )
            started = time.monotonic()
            await self.hosts.call(_copy_image, source, drivers[host], image)
            took = time.monotonic() - started
            await self.bus.emit(
                "image.copied", resource, f"copied {image} from {other} to {host} in {took:.1f} s"
            )
            return True
        return False


def _copy_image(source: HostDriver, target: HostDriver, image: str) -> None:
    target.import_image(source.export_image(image))
