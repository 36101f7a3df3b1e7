"""The stack reconciler: make each host run exactly the containers a stack file declares.

Called by the stack routes (apply, start/stop, down), by the resync loop, by host events and
by each engine's container events. Work per pass: place replicas, observe labelled
containers, remove strays, create networks and volumes, then create or fix containers wave
by wave (depends_on order), in parallel within a wave and across hosts.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from corral.config import Settings
from corral.control.engine_events import CONTAINER
from corral.control.hosts import HostService
from corral.control.images import ImageSupply, build_bases, missing_base
from corral.control.readiness import until_decided
from corral.control.swarm_stacks import SwarmStacks
from corral.errors import Conflict, CorralError, Invalid, NotFound, Unreachable
from corral.events import EventBus
from corral.hosts.driver import HostDriver, NotSwarmManager
from corral.model.compose import parse_compose, stack_mode
from corral.model.containers import (
    CREATED,
    OWNED,
    SERVICE,
    STACK,
    ContainerInfo,
    ContainerPlan,
    container_name,
    engine_names,
    owned_labels,
    plan_container,
)
from corral.model.names import check_name
from corral.model.placement import HostCandidate, Placement, matching_hosts, place
from corral.model.readiness import HEALTHY, READY, STARTED, Verdict, dependencies, judge
from corral.model.stack_spec import NetworkSpec, ServiceSpec, StackSpec
from corral.model.views import EventView, HostView, StackView
from corral.model.yamlfile import FileInvalid
from corral.store.stacks import SlotState, StackStore, StoredStack, summarize

log = structlog.get_logger("corral.stacks")
DEPENDENCY_WAIT_SECONDS = 120.0
DEPENDENCY_PAUSE_SECONDS = 0.25
WAITING = Verdict("waiting")
NOT_THERE = Verdict("failed", "its container is not there")
BACKOFF_START, BACKOFF_MAX = 0.1, 10.0
STABLE_SECONDS = 10.0  # a container that ran this long restarts with the shortest back-off
SWARM_POLL_SECONDS = 1.0  # look again this soon while a swarm-mode stack is still moving


@dataclass
class _Pass:
    """One reconcile pass's view of the world."""

    name: str
    spec: StackSpec
    stored: StoredStack
    hosts: dict[str, HostView]
    drivers: dict[str, HostDriver]
    observed: dict[str, list[ContainerInfo]]
    placement: Placement
    networks: dict[str, str]
    volumes: dict[str, str]
    unmet: dict[str, str] = field(default_factory=dict)  # dependency -> why not satisfied
    # Containers created (not started) ahead of their wave, or why that failed.
    prepared: dict[tuple[str, int], str | CorralError] = field(default_factory=dict)


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
        self.images = images
        # The engines' container events (control/engine_events.py), for run_engine_events.
        self._engine_events: asyncio.Queue[EventView] = asyncio.Queue()
        bus.watch(CONTAINER, self._engine_events.put_nowait)
        self._stopping: dict[str, float] = {}  # containers corral itself stops, until when
        self._backoff: dict[str, float] = {}  # next restart delay per container
        self._started_at: dict[str, float] = {}
        self._start_requested: set[tuple[str, str]] = set()  # (stack, service) to start now
        self._poked: set[str] = set()
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
        """Problems that depend on the hosts: constraints no host meets, images no host has
        and nothing can build, networks that would span hosts with no shared network."""
        hosts = await self.hosts.views()
        candidates = _candidates(hosts, {})
        problems: list[str] = []
        if spec.mode == "swarm":
            problems += await self.swarm.check(spec, hosts)
        else:
            problems += _constraint_problems(spec, candidates)
        reachable = [h for h in hosts if h.reachable]
        bases = {
            name: build_bases(svc.build)
            for name, svc in spec.services.items()
            if svc.build is not None
        }
        need = {svc.image for svc in spec.services.values()}
        need |= {base.image for found in bases.values() for base in found}
        have: dict[str, bool] = {image: False for image in need}
        for host in reachable:
            driver = self.hosts.driver_for(host)
            for image in need:
                if not have[image]:
                    with contextlib.suppress(CorralError):
                        have[image] = await self.hosts.call(driver.has_image, image)
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
        if spec.mode == "swarm":
            return problems
        placement = place(spec, candidates, await self.store.placements(name))
        problems += _network_problems(spec, placement, {h.name: h for h in hosts})
        return problems

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
        if before == "swarm" and spec.mode != "swarm":
            await self.swarm.check_can_remove(name)
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
            self._start_requested.update((name, service) for service in chosen)
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
            if before == "swarm":
                await self.swarm.down(name)
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
                await asyncio.gather(*(self._remove(driver, c) for c in batch))
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
            if self._mode_of(stored) == "swarm":
                removed += await self.swarm.down(name)
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
        """Swarm frees an overlay's attachments a moment after their containers go: retry."""
        for _ in range(20):
            try:
                await self.hosts.call(driver.remove_network, net)
                return
            except NotSwarmManager:
                return  # a worker's view of an overlay: the manager removes it
            except Invalid as exc:
                reason = exc.message
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
            if spec.mode == "swarm":
                swarm_slots, busy = await self.swarm.converge(name, stored, spec)
                await self.store.save_slots(name, swarm_slots)
                if busy:
                    asyncio.get_running_loop().call_later(SWARM_POLL_SECONDS, self.poke, name)
                return await self.view(name)
            work = await self._observe(name, stored, spec)
            await self._remove_strays(work)
            await self._prepare_networks(work)
            # Create every missing container at once (images, volumes, create); only the
            # starts wait for their wave, so later waves do not pay for their creation.
            slots = [
                (svc, replica)
                for svc, spec in work.spec.services.items()
                for replica in range(1, spec.replicas + 1)
            ]
            made = await asyncio.gather(*(self._prepare(work, slot) for slot in slots))
            work.prepared = {
                slot: result for slot, result in zip(slots, made, strict=True) if result is not None
            }
            states: dict[tuple[str, int], SlotState] = {}
            for wave in work.spec.waves():
                await self._wait_for_dependencies(work, wave, states)
                self.store.db.term.confirm()
                jobs = [
                    self._ensure_slot(work, svc, replica, states)
                    for svc in wave
                    for replica in range(1, work.spec.services[svc].replicas + 1)
                ]
                for state in await asyncio.gather(*jobs):
                    states[(state.service, state.replica)] = state
            await self.store.save_slots(name, list(states.values()))
            self._start_requested = {r for r in self._start_requested if r[0] != name}
        return await self.view(name)

    async def _observe(self, name: str, stored: StoredStack, spec: StackSpec) -> _Pass:
        hosts = {h.name: h for h in await self.hosts.views()}
        loads = await self.store.host_loads()
        previous = await self.store.placements(name)
        for host in previous.values():
            loads[host] = loads.get(host, 1) - 1
        placement = place(spec, _candidates(list(hosts.values()), loads), previous)
        drivers: dict[str, HostDriver] = {}
        observed: dict[str, list[ContainerInfo]] = {}

        async def look(host: HostView) -> None:
            driver = self.hosts.driver_for(host)
            try:
                observed[host.name] = await self.hosts.while_reachable(
                    host.name, self.hosts.call(driver.containers, owned_labels(name))
                )
                drivers[host.name] = driver
            except Unreachable:
                pass

        await asyncio.gather(*(look(h) for h in hosts.values() if h.reachable))
        networks, volumes = engine_names(name, spec)
        return _Pass(name, spec, stored, hosts, drivers, observed, placement, networks, volumes)

    async def _remove_strays(self, work: _Pass) -> None:
        """Containers of this stack that no slot wants where they are, or doubles."""
        seen: set[tuple[str, int]] = set()
        doomed: list[tuple[HostDriver, ContainerInfo]] = []
        for host, found in sorted(work.observed.items()):
            for c in sorted(found, key=lambda c: (c.state != "running", c.name)):
                slot = (c.service, c.replica)
                wanted = work.placement.hosts.get(slot) == host and c.name == container_name(
                    work.name, *slot
                )
                if not wanted or slot in seen:
                    doomed.append((work.drivers[host], c))
                else:
                    seen.add(slot)
        for driver, c in doomed:
            await self._remove(driver, c)
            await self.bus.emit(
                "container.removed",
                f"stack/{work.name}/{c.service or '?'}",
                f"{c.name} removed: no longer declared here",
                {"container": c.name},
            )

    async def _prepare_networks(self, work: _Pass) -> None:
        """Networks first: a bridge per host, or one attachable overlay across a swarm."""
        for net, engine_name in work.networks.items():
            spec = work.spec.networks.get(net, NetworkSpec(net))
            users = [
                (svc, host)
                for (svc, _), host in work.placement.hosts.items()
                if net in work.spec.services[svc].networks
                and work.spec.services[svc].network_mode is None
            ]
            hosts = sorted({h for _, h in users if h in work.drivers})
            if not hosts or spec.external:
                continue
            labels = {**owned_labels(work.name), CREATED: str(int(time.time()))}
            overlay = spec.driver == "overlay" or (
                spec.driver is None
                and len({h for _, h in users}) > 1
                and all(_in_swarm(work.hosts[h]) for _, h in users)
            )
            try:
                if overlay:
                    manager = _manager(work.hosts, hosts)
                    if manager is None:
                        raise Invalid(f"network {net} needs a reachable swarm manager")
                    await self.hosts.call(
                        work.drivers[manager].ensure_network,
                        engine_name,
                        "overlay",
                        True,
                        spec.subnet,
                        labels,
                    )
                else:
                    for host in hosts:
                        await self.hosts.call(
                            work.drivers[host].ensure_network,
                            engine_name,
                            spec.driver or "bridge",
                            spec.attachable,
                            spec.subnet,
                            labels,
                        )
            except CorralError as exc:
                await self.bus.emit(
                    "network.failed", f"stack/{work.name}", f"network {net}: {exc.message}"
                )

    async def _wait_for_dependencies(
        self, work: _Pass, wave: list[str], states: dict[tuple[str, int], SlotState]
    ) -> None:
        """Before a wave starts, wait for the conditions its services declare (started is
        met by the start itself, as in compose); record in `work.unmet` the ones that failed
        or timed out."""
        deadline = time.monotonic() + DEPENDENCY_WAIT_SECONDS
        for dep, condition in dependencies(work.spec, wave):
            if condition == STARTED:
                continue
            slots = [s for s in states.values() if s.service == dep]
            verdict = WAITING
            if slots:
                verdict = await until_decided(
                    partial(self._condition_met, work, dep, condition, slots),
                    deadline,
                    DEPENDENCY_PAUSE_SECONDS,
                    DEPENDENCY_PAUSE_SECONDS,
                )
            if verdict.outcome != "ready":
                wanted = "healthy" if condition == HEALTHY else "completed"
                work.unmet[dep] = f"{dep} is not {wanted}"

    async def _condition_met(
        self, work: _Pass, service: str, condition: str, slots: list[SlotState]
    ) -> Verdict:
        """Every replica's verdict (model/readiness.py `judge`): the first that is not
        ready, in slot order."""
        if any(s.host not in work.drivers or not s.container_id for s in slots):
            return NOT_THERE
        seen: dict[str, ContainerInfo] = {}
        for host in {s.host for s in slots}:
            found = await self.hosts.call(
                work.drivers[host].containers, {STACK: work.name, SERVICE: service}
            )
            seen.update((c.id, c) for c in found)
        for slot in slots:
            c = seen.get(slot.container_id)
            if c is None:
                return NOT_THERE
            verdict = judge(work.spec.services[service], condition, c)
            if verdict.outcome != "ready":
                return verdict
        return READY

    async def _ensure_slot(
        self,
        work: _Pass,
        service: str,
        replica: int,
        states: dict[tuple[str, int], SlotState],
    ) -> SlotState:
        slot = (service, replica)
        spec = work.spec.services[service]
        resource = f"stack/{work.name}/{service}"
        host = work.placement.hosts.get(slot, "")
        if not host:
            reason = work.placement.pending.get(slot, "not placed")
            return SlotState(service, replica, "", "", "pending", reason=reason)
        if host not in work.drivers:
            why = work.hosts[host].last_error if host in work.hosts else "unknown host"
            reason = f"host {host} is unreachable: {why or 'no answer'}"
            return SlotState(service, replica, host, "", "pending", reason=reason)
        blocked = [
            d.service
            for d in spec.depends_on
            if any(
                s.service == d.service and s.state in ("pending", "failed") for s in states.values()
            )
        ]
        blocked += [work.unmet[d.service] for d in spec.depends_on if d.service in work.unmet]
        if blocked:
            reason = f"waiting for {', '.join(sorted(blocked))}"
            made = work.prepared.get(slot)
            ready = made if isinstance(made, str) else ""
            return SlotState(service, replica, host, ready, "pending", reason=reason)
        driver = work.drivers[host]
        plan = plan_container(work.name, spec, replica, work.networks, work.volumes)
        prepared = work.prepared.get(slot)
        try:
            if isinstance(prepared, CorralError):
                raise prepared
            if isinstance(prepared, str):
                await self.hosts.while_reachable(host, self.hosts.call(driver.start, prepared))
                await self.bus.emit(
                    "container.created",
                    resource,
                    f"{plan.name} started on {host}",
                    {"container": plan.name, "host": host, "id": prepared[:12]},
                )
                return SlotState(service, replica, host, prepared, "running")
            existing = next(
                (c for c in work.observed.get(host, []) if (c.service, c.replica) == slot), None
            )
            if existing is not None:
                stopped = service in work.stored.stopped
                # A host cut off meanwhile (a stop waits out the grace period) is given up on.
                return await self.hosts.while_reachable(
                    host, self._keep(work, driver, host, plan, existing, stopped)
                )
            if service in work.stored.stopped:
                return SlotState(service, replica, host, "", "stopped")
            return SlotState(service, replica, host, "", "pending", reason="not created yet")
        except CorralError as exc:
            await self.bus.emit(
                "container.failed",
                resource,
                f"{plan.name} on {host}: {exc.message}",
                {"container": plan.name, "host": host},
            )
            state = "pending" if isinstance(exc, Unreachable) else "failed"
            return SlotState(service, replica, host, "", state, reason=exc.message)

    async def _prepare(self, work: _Pass, slot: tuple[str, int]) -> str | CorralError | None:
        """Make the slot's container exist, not started: None when nothing was to be made
        (it exists unchanged, is stopped on purpose, or has no reachable host)."""
        service, replica = slot
        host = work.placement.hosts.get(slot, "")
        if host not in work.drivers or service in work.stored.stopped:
            return None
        spec = work.spec.services[service]
        driver = work.drivers[host]
        plan = plan_container(work.name, spec, replica, work.networks, work.volumes)
        existing = next(
            (c for c in work.observed.get(host, []) if (c.service, c.replica) == slot), None
        )
        if existing is not None and existing.spec_hash == plan.spec_hash:
            return None
        try:
            if existing is not None:
                await self._remove(driver, existing)
                work.observed[host] = [c for c in work.observed[host] if c is not existing]
                await self.bus.emit(
                    "container.replaced",
                    f"stack/{work.name}/{service}",
                    f"{plan.name} on {host}: spec changed, replacing",
                    {"container": plan.name, "host": host},
                )
            await self.images.ensure(work.drivers, host, spec, f"stack/{work.name}/{service}")
            await self._ensure_volumes(work, host, spec)
            return await self._create(driver, plan)
        except CorralError as exc:
            return exc

    async def _keep(
        self,
        work: _Pass,
        driver: HostDriver,
        host: str,
        plan: ContainerPlan,
        c: ContainerInfo,
        stopped: bool,
    ) -> SlotState:
        if stopped and c.state in ("running", "restarting"):
            self._act(c.name)
            await self.hosts.call(driver.stop, c.id, plan.spec.stop_grace_s)
            return SlotState(plan.service, plan.replica, host, c.id, "stopped")
        if stopped:
            return SlotState(plan.service, plan.replica, host, c.id, "stopped", c.health)
        if c.state == "created":  # made ahead of its wave (or by a pass that was cut short)
            await self.hosts.call(driver.start, c.id)
            return SlotState(plan.service, plan.replica, host, c.id, "running")
        if c.state in ("exited", "dead") and (work.name, plan.service) in self._start_requested:
            await self.hosts.call(driver.start, c.id)
            await self.bus.emit(
                "container.started",
                f"stack/{work.name}/{plan.service}",
                f"{c.name} on {host} started by request",
                {"container": c.name, "host": host},
            )
            return SlotState(plan.service, plan.replica, host, c.id, "running")
        if c.state in ("exited", "dead") and _restarts(plan.spec, c):
            await self.hosts.call(driver.start, c.id)
            await self.bus.emit(
                "container.restarted",
                f"stack/{work.name}/{plan.service}",
                f"{c.name} on {host} restarted (restart: {plan.spec.restart}) after it "
                f"exited with code {c.exit_code}",
                {"container": c.name, "host": host, "exit_code": c.exit_code},
            )
            return SlotState(plan.service, plan.replica, host, c.id, "running")
        return SlotState(
            plan.service, plan.replica, host, c.id, c.state, c.health, exit_code=c.exit_code
        )

    async def _create(self, driver: HostDriver, plan: ContainerPlan) -> str:
        """Create (not start) the container."""
        try:
            return await self.hosts.call(driver.create, plan, False)
        except Conflict:
            # A container with this name exists but was not in this pass's view: one left
            # half-made by a crash. Remove it if it is ours, then create once more.
            found = await self.hosts.call(driver.containers, owned_labels(plan.stack))
            ours = [c for c in found if c.name == plan.name]
            if not ours:
                raise Conflict(
                    f"the name {plan.name} is taken by a container corral does not own"
                ) from None
            for c in ours:
                await self.hosts.call(driver.remove, c.id)
            return await self.hosts.call(driver.create, plan, False)

    async def _remove(self, driver: HostDriver, c: ContainerInfo) -> None:
        self._act(c.name)
        await self.hosts.call(driver.remove, c.id)

    def _act(self, container: str) -> None:
        """Mark a container that corral is about to stop or remove: its death is expected."""
        self._stopping[container] = time.monotonic() + 30

    async def _ensure_volumes(self, work: _Pass, host: str, spec: ServiceSpec) -> None:
        for mount in spec.volumes:
            if mount.kind != "volume" or not mount.source:
                continue
            declared = work.spec.volumes.get(mount.source)
            if declared is not None and declared.external:
                continue
            await self.hosts.call(
                work.drivers[host].ensure_volume,
                work.volumes.get(mount.source, mount.source),
                owned_labels(work.name),
            )

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
        action, attrs = event["action"], event["attributes"]
        stack, service, container = attrs.get(STACK), attrs.get(SERVICE), attrs.get("name", "")
        if not stack or action not in ("die", "start", "oom"):
            return
        expected = self._stopping.pop(container, 0) > time.monotonic()
        if action == "die" and not expected:
            code = attrs.get("exitCode", "?")
            # Restart after a back-off (0.1 s, doubling to 10 s), without holding up the
            # other engines' events.
            ran = time.monotonic() - self._started_at.get(container, 0.0)
            delay = (
                BACKOFF_START
                if ran > STABLE_SECONDS
                else self._backoff.get(container, BACKOFF_START)
            )
            self._backoff[container] = min(delay * 2, BACKOFF_MAX)
            await self.bus.emit(
                "container.died",
                f"stack/{stack}/{service}",
                f"{container} on {host} exited with code {code}; next start in {delay:g} s",
                {"container": container, "host": host, "exit_code": code, "restart_in": delay},
            )
            asyncio.get_running_loop().call_later(delay, self.poke, stack)
            return
        if action == "start":
            self._started_at[container] = time.monotonic()
        self.poke(stack)


def _restarts(spec: ServiceSpec, c: ContainerInfo) -> bool:
    if spec.restart in ("always", "unless-stopped"):
        return True
    return spec.restart == "on-failure" and c.exit_code != 0


def _in_swarm(host: HostView) -> bool:
    return bool(host.facts and host.facts.swarm_role in ("manager", "worker"))


def _manager(hosts: dict[str, HostView], among: list[str]) -> str | None:
    managers = [
        name
        for name, host in sorted(hosts.items())
        if host.facts is not None and host.facts.swarm_role == "manager"
    ]
    preferred = [h for h in managers if h in among]
    chosen = preferred or managers
    return chosen[0] if chosen else None


def _candidates(hosts: list[HostView], loads: dict[str, int]) -> list[HostCandidate]:
    return [
        HostCandidate(
            name=h.name,
            reachable=bool(h.reachable),
            role=h.facts.swarm_role if h.facts else "none",
            labels=h.labels,
            engine_labels=h.facts.engine_labels if h.facts else {},
            load=loads.get(h.name, 0),
        )
        for h in hosts
    ]


def _constraint_problems(spec: StackSpec, candidates: list[HostCandidate]) -> list[str]:
    problems = []
    for svc_name, svc in sorted(spec.services.items()):
        if svc.constraints and not matching_hosts(spec, svc_name, candidates):
            problems.append(
                f"line {svc.line}: services.{svc_name}.deploy.placement.constraints: "
                f"no host meets {svc.constraint_text}"
            )
    return problems


def _network_problems(
    spec: StackSpec, placement: Placement, hosts: dict[str, HostView]
) -> list[str]:
    problems = []
    for net, declared in sorted(spec.networks.items()):
        if declared.external or net == "default":
            continue
        spread = {
            h
            for (svc, _), h in placement.hosts.items()
            if net in spec.services[svc].networks and spec.services[svc].network_mode is None
        }
        if len(spread) > 1 and not all(h in hosts and _in_swarm(hosts[h]) for h in spread):
            problems.append(
                f"networks.{net}: its services run on {', '.join(sorted(spread))}, which share "
                "no network: join them in one Docker swarm (corral then makes an overlay)"
            )
    return problems


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
