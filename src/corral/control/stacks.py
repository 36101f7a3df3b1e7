"""The stack service: intent (apply, start/stop, down) and the reconciler's passes that make
the hosts run what a stack file declares.

Called by the stack routes, by the resync loop, by host events and by the engines' container
events (signalled on the bus). A pass is the work of the stack's runner (control/runner.py):
containers corral places and starts itself (control/container_stacks.py) or swarm services
(control/swarm_stacks.py); removal of labelled containers and networks, leftovers on hosts
that did not answer, views and logs are the same for both.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from corral.config import Settings
from corral.control.container_stacks import BACKOFF_MAX, ContainerStacks
from corral.control.engine_events import CONTAINER
from corral.control.hosts import HostService
from corral.control.images import ImageSupply
from corral.control.runner import StackRunner
from corral.control.swarm_stacks import SwarmStacks
from corral.errors import Conflict, CorralError, Invalid, NotFound, Unreachable
from corral.events import EventBus
from corral.hosts.driver import HostDriver, NotSwarmManager
from corral.model.compose import parse_compose, stack_mode
from corral.model.containers import (
    CREATED,
    OWNED,
    STACK,
    owned_labels,
)
from corral.model.names import check_name
from corral.model.stack_spec import StackSpec
from corral.model.views import EventView, HostView, StackView
from corral.model.yamlfile import FileInvalid
from corral.store.stacks import StackStore, StoredStack, summarize

log = structlog.get_logger("corral.stacks")
POLL_SECONDS = 1.0  # look again this soon while a stack is still moving (swarm mode)


class StackService:
    def __init__(
        self,
        store: StackStore,
        hosts: HostService,
        bus: EventBus,
        settings: Settings,
        images: ImageSupply,
    ) -> None:
        self.store = store
        self.hosts = hosts
        self.bus = bus
        self.settings = settings
        self._locks: dict[str, asyncio.Lock] = {}
        # The engines' container events (control/engine_events.py), for run_engine_events.
        self._engine_events: asyncio.Queue[EventView] = asyncio.Queue()
        bus.watch(CONTAINER, self._engine_events.put_nowait)
        self._poked: set[str] = set()
        # The two runners (control/runner.py): containers corral places, or swarm services.
        self.containers = ContainerStacks(store, hosts, bus, images)
        self.swarm = SwarmStacks(hosts, bus, images)

    # ------------------------------------------------------------------ parsing
    def parse(
        self, name: str, file: str, env: dict[str, str], base_dir: str, mode: str = ""
    ) -> StackSpec:
        """Parse a stack file; Invalid listing every problem with its line. `mode`
        (containers or swarm), when given, wins over the file's `x-corral: {mode}`."""
        try:
            check_name(name, "stack name")
        except ValueError as exc:
            raise Invalid(str(exc), {"field": "name"}) from None
        folder = base_folder(base_dir)
        forced = stack_mode(mode)
        if mode and forced is None:
            raise Invalid(f"mode {mode!r}: use containers or swarm", {"field": "mode"})
        try:
            return parse_compose(
                file,
                f"stack {name}",
                env=env,
                base_dir=folder,
                stack=name,
                mode=forced,
                read=read_utf8,
            )
        except FileInvalid as exc:
            problems = [str(p) for p in exc.problems]
            raise Invalid(f"stack file is invalid: {problems[0]}", {"problems": problems}) from None

    def parse_stored(self, stored: StoredStack) -> StackSpec:
        return self.parse(stored.name, stored.file, stored.env, stored.base_dir, stored.mode)

    async def check(self, name: str, spec: StackSpec) -> list[str]:
        """Problems that depend on the hosts, as the stack's runner sees them: constraints no
        host meets, images no host has and nothing can build, networks that would span hosts
        with no shared network, a swarm with no manager."""
        return await self._runner(spec.mode).check(name, spec, await self.hosts.views())

    def _runner(self, mode: str) -> StackRunner:
        """The runner of a mode: containers corral places itself, or swarm services."""
        return self.swarm if mode == "swarm" else self.containers

    # ------------------------------------------------------------------ intent
    async def apply(
        self, name: str, file: str, env: dict[str, str], base_dir: str, mode: str = ""
    ) -> str:
        spec = self.parse(name, file, env, base_dir, mode)
        problems = await self.check(name, spec)
        if problems:
            # the hosts as they are now cannot take it: a conflict with the world's state
            raise Conflict(f"stack cannot be placed: {problems[0]}", {"problems": problems})
        before = await self._stored_mode(name)
        await self.store.drop_leftovers(name)  # this stack's passes own those containers now
        if before is not None and before != spec.mode:
            await self._runner(before).check_can_leave(name)
        outcome = await self.store.put(name, file, env, base_dir, mode)
        if before is not None and before != spec.mode:
            await self._switch_mode(name, before)
        if outcome != "unchanged":
            await self.bus.emit(
                f"stack.{outcome}",
                f"stack/{name}",
                f"stack {name} {outcome} ({len(spec.services)} services)",
            )
        return outcome

    async def set_stopped(self, name: str, services: list[str], stopped: bool) -> list[str]:
        stored = await self.store.get(name)
        spec = self.parse_stored(stored)
        unknown = sorted(set(services) - set(spec.services))
        if unknown:
            raise NotFound(f"stack {name} has no service {unknown[0]!r}", {"services": unknown})
        chosen = services or sorted(spec.services)
        await self.store.set_stopped(name, chosen, stopped)
        verb = "stopped" if stopped else "started"
        await self.bus.emit(
            f"stack.{verb}", f"stack/{name}", f"{', '.join(chosen)} {verb} by request"
        )
        if not stopped:
            self.containers.start_requested.update((name, service) for service in chosen)
        return chosen

    async def restart(self, name: str, services: list[str]) -> list[str]:
        chosen = await self.set_stopped(name, services, True)
        await self.converge(name)
        await self.set_stopped(name, chosen, False)
        return chosen

    async def _stored_mode(self, name: str) -> str | None:
        """The mode of the stack's stored file; None when there is none or it no longer
        parses."""
        try:
            return self._mode_of(await self.store.get(name))
        except NotFound:
            return None

    def _waves_of(self, stored: StoredStack) -> list[list[str]]:
        """The stack's start order; none when its file no longer parses."""
        try:
            return self.parse_stored(stored).waves()
        except Invalid:
            return []

    def _mode_of(self, stored: StoredStack) -> str | None:
        try:
            return self.parse_stored(stored).mode
        except Invalid:
            return None

    async def _switch_mode(self, name: str, before: str) -> None:
        """The file changed mode: remove what the old mode made (services or containers, and
        the networks, which the new mode makes again in its own kind)."""
        async with self._lock(name):
            await self._runner(before).release(name)
            await self._remove_containers(name, await self.hosts.views())
        await self.bus.emit(
            "stack.updated",
            f"stack/{name}",
            f"stack {name} changed mode: what {before} mode made was removed",
        )

    async def _remove_containers(
        self,
        name: str,
        hosts: list[HostView],
        placed: Collection[str] = (),
        waves: list[list[str]] | None = None,
    ) -> tuple[int, dict[str, str]]:
        """Remove the stack's containers from the reachable ones of `hosts`, then its
        networks: an overlay is only released once no host has a container on it. On each
        host, with `waves` (the start order), dependents go before what they depend on, as
        `docker compose down` does. A host found unreachable meanwhile is given up on at once.
        Returns how many containers went and the hosts that could not be reached, with why
        (of the ones already unreachable, those in `placed`: where the stack had replicas)."""
        missed = {
            h.name: h.last_error or "unreachable"
            for h in hosts
            if not h.reachable and h.name in placed
        }
        hosts = [h for h in hosts if h.reachable]
        order = {svc: i for i, wave in enumerate(reversed(waves or [])) for svc in wave}
        removed: dict[str, int] = {}

        async def containers(host: HostView) -> None:
            driver = self.hosts.driver_for(host)
            found = await self.hosts.call(driver.containers, owned_labels(name))
            # Services no longer declared (strays) first, then the waves from the last.
            steps = sorted({order.get(c.service, -1) for c in found})
            for step in steps:
                batch = [c for c in found if order.get(c.service, -1) == step]
                await asyncio.gather(*(self.containers.remove(driver, c) for c in batch))
                removed[host.name] = removed.get(host.name, 0) + len(batch)

        async def networks(host: HostView) -> None:
            driver = self.hosts.driver_for(host)
            for net in await self.hosts.call(driver.networks, owned_labels(name)):
                await self._remove_network(name, host.name, driver, net)

        for work in (containers, networks):
            results = await asyncio.gather(
                *(self.hosts.while_reachable(h.name, work(h)) for h in hosts),
                return_exceptions=True,
            )
            for host, result in zip(hosts, results, strict=True):
                if isinstance(result, Unreachable):
                    log.warning("down: host unreachable", host=host.name, error=result.message)
                    missed[host.name] = result.message
                elif isinstance(result, BaseException):
                    raise result
            hosts = [h for h in hosts if h.name not in missed]
        return sum(removed.values()), missed

    async def down(self, name: str) -> tuple[int, dict[str, str]]:
        """Remove every container, network and volume corral made for the stack (and, in swarm
        mode, its services first). Returns how many containers went and the hosts that did
        not answer (host -> why): what the stack has there is removed when they answer."""
        async with self._lock(name):
            stored = await self.store.get(name)
            removed = 0
            mode = self._mode_of(stored)
            if mode is not None:
                removed += await self._runner(mode).release(name)
            placed = set((await self.store.placements(name)).values())
            hosts = await self.hosts.views()
            more, missed = await self._remove_containers(
                name, hosts, placed, self._waves_of(stored)
            )
            removed += more
            await self.store.remove(name, missed)
        message = f"stack {name} removed ({removed} containers)"
        if missed:
            message += "; not reached, removed when they answer: " + ", ".join(sorted(missed))
        await self.bus.emit(
            "stack.removed", f"stack/{name}", message, {"pending_hosts": sorted(missed)}
        )
        return removed, missed

    async def _remove_leftovers(self) -> None:
        """Remove what `down` left on hosts that did not answer, once they do."""
        leftovers = await self.store.leftovers()
        if not leftovers:
            return
        hosts = {view.name: view for view in await self.hosts.views()}
        for stack, host, _, since in leftovers:
            view = hosts.get(host)
            if view is None:  # the host itself was removed: nothing corral can reach
                await self.store.drop_leftovers(stack, host)
                continue
            if not view.reachable:
                continue
            async with self._lock(stack):
                removed, missed = await self._remove_containers(stack, [view])
            if missed:
                continue
            await self.store.drop_leftovers(stack, host)
            await self.bus.emit(
                "stack.leftovers_removed",
                f"stack/{stack}",
                f"stack {stack}: {removed} containers left on {host} when it was removed "
                f"(since {since:%Y-%m-%d %H:%M:%S} UTC) removed now that {host} answers",
                {"host": host, "removed": removed},
            )

    async def _remove_network(self, stack: str, host: str, driver: HostDriver, net: str) -> None:
        """Swarm frees an overlay's attachments a moment after their containers go, and a
        manager lists a removed overlay until its own node has let go of it: retry until the
        host no longer lists the network."""
        for _ in range(20):
            try:
                await self.hosts.call(driver.remove_network, net)
            except NotSwarmManager:
                return  # a worker's view of an overlay: the manager removes it
            except Invalid as exc:
                reason = exc.message
            else:
                if net not in await self.hosts.call(driver.networks, owned_labels(stack)):
                    return
                reason = "the engine still lists it"
            await asyncio.sleep(0.5)
        await self.bus.emit(
            "network.lingering", f"stack/{stack}", f"network {net} on {host} not removed: {reason}"
        )

    async def _collect_networks(self, stacks: set[str]) -> None:
        """Remove networks corral made for stacks that no longer exist (an overlay a swarm
        still held when its stack went down)."""
        for host in await self.hosts.views():
            if not host.reachable:
                continue
            try:
                driver = self.hosts.driver_for(host)
                found = await self.hosts.call(driver.networks, {OWNED: "true"})
                for net, labels in found.items():
                    # Young networks are left alone: another pass may be about to use one.
                    try:
                        born = float(labels.get(CREATED, "0"))
                    except ValueError:
                        born = 0.0
                    stack = labels.get(STACK, "")
                    if stack and stack not in stacks and time.time() - born > 120:
                        with contextlib.suppress(Invalid):
                            await self.hosts.call(driver.remove_network, net)
            except CorralError as exc:
                log.info("network clean-up skipped", host=host.name, error=exc.message)

    async def view(self, name: str) -> StackView:
        stored = await self.store.get(name)
        spec = self.parse_stored(stored)
        view = summarize(stored, sorted(spec.services), await self.store.slots(name))
        return view.model_copy(update={"mode": spec.mode})

    async def shown(self, name: str) -> StackView:
        """The stack as the API shows it: its view, or, after a `down` that left containers
        on hosts that did not answer, `removing` with those hosts (NotFound otherwise)."""
        try:
            return await self.view(name)
        except NotFound:
            removing = [v for v in await self._removing() if v.name == name]
            if not removing:
                raise
            return removing[0]

    async def shown_all(self) -> list[StackView]:
        """Every stack, and the ones still being removed, by name."""
        views = [await self.view(name) for name in await self.store.names()]
        known = {v.name for v in views}
        views += [v for v in await self._removing() if v.name not in known]
        return sorted(views, key=lambda v: v.name)

    async def _removing(self) -> list[StackView]:
        pending: dict[str, dict[str, str]] = {}
        since: dict[str, datetime] = {}
        for stack, host, reason, at in await self.store.leftovers():
            pending.setdefault(stack, {})[host] = reason
            since[stack] = min(at, since.get(stack, at))
        return [
            StackView(
                name=stack,
                services=[],
                stopped_services=[],
                slots=[],
                state="removing",
                created_at=since[stack],
                updated_at=since[stack],
                pending_removal=hosts,
            )
            for stack, hosts in sorted(pending.items())
        ]

    # ------------------------------------------------------------------ convergence
    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def converge(self, name: str) -> StackView:
        async with self._lock(name):
            self._poked.discard(name)
            stored = await self.store.get(name)
            spec = self.parse_stored(stored)
            self.store.db.term.confirm()  # engine calls only while this replica leads
            slots, busy = await self._runner(spec.mode).converge(name, stored, spec)
            await self.store.save_slots(name, slots)
            if busy:
                asyncio.get_running_loop().call_later(POLL_SECONDS, self.poke, name)
        return await self.view(name)

    # ------------------------------------------------------------------ logs
    async def logs(self, name: str, service: str, tail: int, follow: bool) -> AsyncIterator[bytes]:
        slots = [s for s in await self.store.slots(name) if s.service == service]
        if not slots:
            stored = await self.store.get(name)
            spec = self.parse_stored(stored)
            if service not in spec.services:
                raise NotFound(f"stack {name} has no service {service!r}")
        live = [s for s in slots if s.container_id and s.host]
        if not live:
            raise Conflict(f"service {service} of stack {name} has no container yet")
        where: tuple[str, str] | None = (live[0].host, live[0].container_id)
        since: float | None = None
        while where is not None:
            host, container = where
            said = False
            async for chunk in self.hosts.container_logs(host, container, tail, follow, since):
                said = True
                yield chunk
            if not follow:
                return
            # The container stopped: follow its next run (corral restarts it within its
            # back-off and a pass), from where the last output ended; none: the stream ends.
            if said or since is None:
                since, tail = time.time(), -1
            where = await self._running_again(name, service)

    async def _running_again(self, name: str, service: str) -> tuple[str, str] | None:
        """(host, container) of the service's first replica once it runs again; None when
        it does not within the longest back-off and a pass (stopped, or gone)."""
        deadline = time.monotonic() + BACKOFF_MAX + self.settings.stack_resync_seconds + 5
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            try:
                slots = await self.store.slots(name)
            except NotFound:
                return None
            for slot in slots:
                if slot.service == service and slot.state == "running" and slot.container_id:
                    return slot.host, slot.container_id
        return None

    # ------------------------------------------------------------------ loops
    def poke(self, name: str) -> None:
        """Ask for a pass soon (coalesced)."""
        self._poked.add(name)

    async def run_resync(self, stop: asyncio.Event) -> None:
        """Converge every stack on a period, and at once when poked or a host returns."""
        last_full = 0.0
        async with self.bus.subscribe() as sub:
            while not stop.is_set():
                full = time.monotonic() - last_full >= self.settings.stack_resync_seconds
                while not sub.queue.empty():
                    event = sub.queue.get_nowait()
                    if event.kind == "host.reachable":
                        full = True
                names = await self.store.names() if full else sorted(self._poked)
                if full:
                    last_full = time.monotonic()
                    await self._collect_networks(set(names))
                    try:
                        await self._remove_leftovers()
                    except Exception as exc:
                        log.error("leftover removal failed", error=repr(exc))
                for name in names:
                    try:
                        await self.converge(name)
                    except NotFound:
                        self._poked.discard(name)
                    except Exception as exc:
                        log.error("stack pass failed", stack=name, error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)

    async def run_engine_events(self, stop: asyncio.Event) -> None:
        """Restart what dies and follow what starts: the engines' container events, as the
        bus signals them (control/engine_events.py), one at a time in their order."""
        while not self._engine_events.empty():  # from an earlier term as leader: stale
            self._engine_events.get_nowait()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                event = await asyncio.wait_for(self._engine_events.get(), timeout=1.0)
                await self._on_engine_event(event.data["host"], event.data)

    async def _on_engine_event(self, host: str, event: dict[str, Any]) -> None:
        stack = event["attributes"].get(STACK)
        if not stack:
            return
        delay = await self.containers.engine_event(host, event["action"], event["attributes"])
        if delay:
            asyncio.get_running_loop().call_later(delay, self.poke, stack)
        elif delay is not None:
            self.poke(stack)


def read_utf8(path: Path) -> str:
    """The files a stack or template names (`.env`, `env_file`), read for the model's
    parser, which reads nothing itself. Shared by stacks and session templates."""
    return path.read_text(encoding="utf-8")


def base_folder(base_dir: str) -> Path | None:
    """The folder files resolve against (None when not given); Invalid unless it is an
    absolute folder on this server. Shared by stacks and session templates."""
    if not base_dir:
        return None
    folder = Path(base_dir)
    try:
        usable = folder.is_absolute() and folder.is_dir()
    except OSError:
        usable = False
    if not usable:
        raise Invalid(
            f"base_dir {base_dir[:200]!r} is not an absolute folder on the corral server",
            {"field": "base_dir"},
        )
    return folder
